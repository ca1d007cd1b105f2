//! Coordination on Kubernetes: every object is a `coordination.k8s.io/v1`
//! Lease in one namespace, changed by compare-and-swap on its
//! `resourceVersion` (a stale one answers 409 Conflict).
//!
//! - node leases: `<cluster>-node-<id>`, renewed by the node: `holderIdentity`
//!   is the node id, `renewTime` and `leaseDurationSeconds` what kubectl shows,
//!   and the exact values with the node's addresses in the `sluice.io/value`
//!   annotation;
//! - topics: `<cluster>-topic-<name>-<hash>`, the spec as JSON in the
//!   annotation;
//! - partitions: `<cluster>-p-<name>-<hash>-<n>`, the record as JSON in the
//!   annotation, the leader as `holderIdentity` and the leader epoch as
//!   `leaseTransitions`; owned by their topic's Lease, so deleting a topic
//!   lets the garbage collector finish what an interrupted delete left.
//!
//! - dynamic broker configs: `<cluster>-config-default` (cluster-wide) and
//!   `<cluster>-config-node-<id>`, the configs as JSON in the annotation.
//!
//! Topic names may hold characters object names may not (`_`, capitals), so
//! names carry a sanitized prefix and a hash; labels and the annotation carry
//! the real name. Resource versions are read as integers, as etcd issues them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::*;

const VALUE: &str = "sluice.io/value";
const KIND: &str = "sluice.io/kind";
const CLUSTER: &str = "sluice.io/cluster";
const TOPIC: &str = "sluice.io/topic";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub struct Kubernetes {
    api: Api<Lease>,
    cluster: String,
    changes: watch::Sender<u64>,
    /// When this process saw each node lease's current resource version.
    sightings: LeaseSightings,
}

/// A node lease as the annotation stores it.
#[derive(Serialize, Deserialize)]
struct NodeValue {
    info: NodeInfo,
    renewed_ms: i64,
    duration_ms: i64,
}

/// A partition record as the annotation stores it.
#[derive(Serialize, Deserialize)]
struct PartitionValue {
    topic: String,
    partition: i32,
    record: PartitionRecord,
}

fn backend(e: impl std::fmt::Display) -> CoordError {
    CoordError::Backend(e.to_string())
}

/// A name part for `topic`: lowercase alphanumerics and dashes, at most 60
/// characters, then a hash of the real name so distinct topics never meet.
fn name_part(topic: &str) -> String {
    let clean: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{:08x}", clean.trim_matches('-'), h as u32)
}

fn version_of(l: &Lease) -> CResult<Version> {
    let rv = l.metadata.resource_version.as_deref().unwrap_or_default();
    rv.parse()
        .map_err(|_| backend(format!("resourceVersion {rv:?} is not a number")))
}

fn value_of<T: for<'de> Deserialize<'de>>(l: &Lease) -> CResult<T> {
    let raw = l
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VALUE))
        .ok_or_else(|| backend(format!("{:?} has no {VALUE}", l.metadata.name)))?;
    serde_json::from_str(raw).map_err(backend)
}

fn micro_time(ms: i64) -> Option<MicroTime> {
    k8s_openapi::chrono::DateTime::from_timestamp_millis(ms).map(MicroTime)
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl Kubernetes {
    /// Coordination in `namespace` for the cluster named `cluster` (several
    /// clusters may share a namespace). Starts a watch that announces
    /// changes made by anyone.
    pub async fn new(client: Client, namespace: &str, cluster: &str) -> CResult<Kubernetes> {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        // Fail early when the API server is unreachable or forbids us.
        api.list(
            &ListParams::default()
                .labels(&format!("{CLUSTER}={cluster}"))
                .limit(1),
        )
        .await
        .map_err(backend)?;
        let (tx, _) = watch::channel(0u64);
        let k = Kubernetes {
            api: api.clone(),
            cluster: cluster.to_string(),
            changes: tx.clone(),
            sightings: LeaseSightings::default(),
        };
        let cfg = watcher::Config::default().labels(&format!("{CLUSTER}={cluster}"));
        tokio::spawn(async move {
            let mut events = watcher(api, cfg).boxed();
            while let Some(e) = events.next().await {
                match e {
                    Ok(_) => {
                        tx.send_modify(|v| *v += 1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watching leases failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(k)
    }

    /// From a kubeconfig file (tests, and nodes outside the cluster).
    pub async fn from_kubeconfig(
        path: &std::path::Path,
        namespace: &str,
        cluster: &str,
    ) -> CResult<Kubernetes> {
        let kc = kube::config::Kubeconfig::read_from(path).map_err(backend)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(backend)?;
        let client = Client::try_from(config).map_err(backend)?;
        Kubernetes::new(client, namespace, cluster).await
    }

    fn announce(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn labels(&self, kind: &str, topic: Option<&str>) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (MANAGED_BY.to_string(), "sluice".to_string()),
            (CLUSTER.to_string(), self.cluster.clone()),
            (KIND.to_string(), kind.to_string()),
        ]);
        if let Some(t) = topic {
            l.insert(TOPIC.to_string(), name_part(t));
        }
        l
    }

    fn node_name(&self, id: i32) -> String {
        format!("{}-node-{id}", self.cluster)
    }
    fn topic_name(&self, topic: &str) -> String {
        format!("{}-topic-{}", self.cluster, name_part(topic))
    }
    fn partition_name(&self, key: &PartitionKey) -> String {
        format!(
            "{}-p-{}-{}",
            self.cluster,
            name_part(&key.topic),
            key.partition
        )
    }

    async fn list(&self, kind: &str) -> CResult<Vec<Lease>> {
        let lp = ListParams::default().labels(&format!("{CLUSTER}={},{KIND}={kind}", self.cluster));
        Ok(self.api.list(&lp).await.map_err(backend)?.items)
    }

    fn partition_lease(
        &self,
        key: &PartitionKey,
        record: &PartitionRecord,
        owner: Option<&Lease>,
        resource_version: Option<String>,
    ) -> Lease {
        let value = PartitionValue {
            topic: key.topic.clone(),
            partition: key.partition,
            record: record.clone(),
        };
        let owner_references = owner.and_then(|o| {
            Some(vec![OwnerReference {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                name: o.metadata.name.clone()?,
                uid: o.metadata.uid.clone()?,
                ..Default::default()
            }])
        });
        Lease {
            metadata: ObjectMeta {
                name: Some(self.partition_name(key)),
                labels: Some(self.labels("partition", Some(&key.topic))),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(&value).expect("serializes"),
                )])),
                owner_references,
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.leader.map(|l| l.to_string()),
                lease_transitions: Some(record.leader_epoch),
                ..Default::default()
            }),
        }
    }

    fn config_name(&self, node: Option<i32>) -> String {
        match node {
            None => format!("{}-config-default", self.cluster),
            Some(id) => format!("{}-config-node-{id}", self.cluster),
        }
    }

    fn topic_lease(&self, spec: &TopicSpec, resource_version: Option<String>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.topic_name(&spec.name)),
                labels: Some(self.labels("topic", Some(&spec.name))),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(spec).expect("serializes"),
                )])),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }

    /// Replaces `lease` if it is still at `expected`.
    async fn replace(&self, name: &str, lease: &Lease, what: String) -> CResult<Version> {
        match self.api.replace(name, &PostParams::default(), lease).await {
            Ok(l) => {
                self.announce();
                version_of(&l)
            }
            Err(e) if status_code(&e) == Some(409) => Err(CoordError::Conflict(what)),
            Err(e) if status_code(&e) == Some(404) => Err(CoordError::NotFound(what)),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl Coordination for Kubernetes {
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()> {
        let name = self.node_name(info.id);
        let value = NodeValue {
            info: info.clone(),
            renewed_ms: now_ms,
            duration_ms,
        };
        let current = self.api.get_opt(&name).await.map_err(backend)?;
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels("node", None)),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(&value).expect("serializes"),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(info.id.to_string()),
                lease_duration_seconds: Some(((duration_ms + 999) / 1000) as i32),
                renew_time: micro_time(now_ms),
                ..Default::default()
            }),
        };
        // A conflict is not a renewal: nothing was written, and the node must
        // not extend how long it may lead on the strength of it.
        let conflict = || CoordError::Conflict(format!("node lease {name}"));
        match current {
            None => match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(409) => return Err(conflict()),
                Err(e) => return Err(backend(e)),
            },
            Some(c) => {
                lease.metadata.resource_version = c.metadata.resource_version.clone();
                lease.spec.as_mut().expect("set above").acquire_time =
                    c.spec.as_ref().and_then(|s| s.acquire_time.clone());
                match self
                    .api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(409) => return Err(conflict()),
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        Ok(())
    }

    async fn nodes(&self) -> CResult<Vec<NodeLease>> {
        let mut out = vec![];
        for l in self.list("node").await? {
            let v: NodeValue = value_of(&l)?;
            let rv = l.metadata.resource_version.clone().unwrap_or_default();
            out.push(NodeLease {
                seen_mono_ms: self.sightings.seen(v.info.id, &rv),
                info: v.info,
                renewed_ms: v.renewed_ms,
                duration_ms: v.duration_ms,
            });
        }
        out.sort_by_key(|n| n.info.id);
        Ok(out)
    }

    async fn topics(&self) -> CResult<Vec<Versioned<TopicSpec>>> {
        let mut out = vec![];
        for l in self.list("topic").await? {
            out.push(Versioned {
                value: value_of(&l)?,
                version: version_of(&l)?,
            });
        }
        out.sort_by(|a: &Versioned<TopicSpec>, b| a.value.name.cmp(&b.value.name));
        Ok(out)
    }

    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()> {
        let lease = self.topic_lease(&spec, None);
        let topic = match self.api.create(&PostParams::default(), &lease).await {
            Ok(l) => l,
            Err(e) if status_code(&e) == Some(409) => {
                return Err(CoordError::AlreadyExists(format!("topic {}", spec.name)))
            }
            Err(e) => return Err(backend(e)),
        };
        for (p, record) in partitions.iter().enumerate() {
            let key = PartitionKey::new(&spec.name, p as i32);
            let l = self.partition_lease(&key, record, Some(&topic), None);
            match self.api.create(&PostParams::default(), &l).await {
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(409) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        self.announce();
        Ok(())
    }

    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version> {
        let name = self.topic_name(&spec.name);
        let lease = self.topic_lease(&spec, Some(expected.to_string()));
        self.replace(&name, &lease, format!("topic {}", spec.name))
            .await
    }

    async fn delete_topic(&self, name: &str) -> CResult<()> {
        match self
            .api
            .delete(&self.topic_name(name), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {
                return Err(CoordError::NotFound(format!("topic {name}")))
            }
            Err(e) => return Err(backend(e)),
        }
        // The garbage collector would remove the partitions too; removing
        // them now keeps readers from seeing orphans meanwhile.
        let lp = ListParams::default().labels(&format!(
            "{CLUSTER}={},{KIND}=partition,{TOPIC}={}",
            self.cluster,
            name_part(name)
        ));
        self.api
            .delete_collection(&DeleteParams::background(), &lp)
            .await
            .map_err(backend)?;
        self.announce();
        Ok(())
    }

    async fn partitions(&self) -> CResult<Vec<(PartitionKey, Versioned<PartitionRecord>)>> {
        let mut out = vec![];
        for l in self.list("partition").await? {
            let v: PartitionValue = value_of(&l)?;
            out.push((
                PartitionKey::new(&v.topic, v.partition),
                Versioned {
                    value: v.record,
                    version: version_of(&l)?,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn partition(&self, key: &PartitionKey) -> CResult<Option<Versioned<PartitionRecord>>> {
        let Some(l) = self
            .api
            .get_opt(&self.partition_name(key))
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let v: PartitionValue = value_of(&l)?;
        Ok(Some(Versioned {
            value: v.record,
            version: version_of(&l)?,
        }))
    }

    async fn create_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version> {
        let owner = self
            .api
            .get_opt(&self.topic_name(&key.topic))
            .await
            .map_err(backend)?;
        let l = self.partition_lease(key, &record, owner.as_ref(), None);
        match self.api.create(&PostParams::default(), &l).await {
            Ok(l) => {
                self.announce();
                version_of(&l)
            }
            Err(e) if status_code(&e) == Some(409) => Err(CoordError::AlreadyExists(format!(
                "partition {}-{}",
                key.topic, key.partition
            ))),
            Err(e) => Err(backend(e)),
        }
    }

    async fn update_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
        expected: Version,
    ) -> CResult<Version> {
        let name = self.partition_name(key);
        let what = format!("partition {}-{}", key.topic, key.partition);
        // Keep the owner reference: read it from the stored object.
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(backend)?
            .ok_or_else(|| CoordError::NotFound(what.clone()))?;
        let mut l = self.partition_lease(key, &record, None, Some(expected.to_string()));
        l.metadata.owner_references = current.metadata.owner_references;
        self.replace(&name, &l, what).await
    }

    async fn broker_configs(&self) -> CResult<Vec<Versioned<BrokerConfigs>>> {
        let mut out = vec![];
        for l in self.list("config").await? {
            out.push(Versioned {
                value: value_of(&l)?,
                version: version_of(&l)?,
            });
        }
        out.sort_by_key(|c: &Versioned<BrokerConfigs>| c.value.node);
        Ok(out)
    }

    async fn put_broker_configs(
        &self,
        configs: BrokerConfigs,
        expected: Option<Version>,
    ) -> CResult<Version> {
        let name = self.config_name(configs.node);
        let what = match configs.node {
            None => "cluster-wide broker configs".to_string(),
            Some(id) => format!("broker {id} configs"),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels("config", None)),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(&configs).expect("serializes"),
                )])),
                resource_version: expected.map(|v| v.to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        match expected {
            Some(_) => self.replace(&name, &lease, what).await,
            None => match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.announce();
                    version_of(&l)
                }
                Err(e) if status_code(&e) == Some(409) => Err(CoordError::AlreadyExists(what)),
                Err(e) => Err(backend(e)),
            },
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::name_part;

    #[test]
    fn names_are_valid_and_distinct() {
        let a = name_part("Orders_v1");
        let b = name_part("orders-v1");
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(name_part(&"x".repeat(249)).len() <= 69);
    }
}
