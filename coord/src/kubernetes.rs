//! Coordination on Kubernetes. Every change is a compare-and-swap on an
//! object's `resourceVersion` (a stale one answers 409 Conflict); reads come
//! from watch caches (kube-rs reflectors), writes go to the API server.
//!
//! - topics are `Topic` objects (`sluice.dev/v1alpha1`) in the cluster's
//!   namespace: the one source of truth for a topic, whether a Kafka client
//!   or `kubectl` made it. The Kafka topic id is the `sluice.dev/topic-id`
//!   annotation; a `Topic` without it was applied by hand and waits for the
//!   controller to set it up ([`Coordination::pending_topics`]). A topic's
//!   data goes from the nodes only when its object is deleted on purpose
//!   (the `sluice.dev/topic-data` finalizer, see [`Kubernetes::housekeeping`]);
//! - node leases: `<cluster>-node-<id>` Leases, renewed by their node:
//!   `holderIdentity` is the node id, `renewTime` and `leaseDurationSeconds`
//!   what kubectl shows, and the exact values with the node's addresses in
//!   the `sluice.io/value` annotation;
//! - partitions: `<cluster>-p-<name>-<hash>-<n>` Leases, the record as JSON
//!   in the annotation (with the topic's id), the leader as `holderIdentity`
//!   and the leader epoch as `leaseTransitions`;
//! - dynamic broker configs: `<cluster>-config-default` (cluster-wide) and
//!   `<cluster>-config-node-<id>` Leases, the configs as JSON.
//!
//! Topic names may hold characters object names may not (`_`, capitals), so
//! names carry a sanitized prefix and a hash; labels and annotations carry
//! the real name. Resource versions are read as integers, as etcd issues them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use sluice_api::v1alpha1::{self, DeletionPolicy, Topic};
use tokio::sync::watch;
use uuid::Uuid;

use super::*;

const VALUE: &str = "sluice.io/value";
const KIND: &str = "sluice.io/kind";
const CLUSTER: &str = "sluice.io/cluster";
const TOPIC: &str = "sluice.io/topic";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The Kafka topic id of a `Topic` object.
pub const TOPIC_ID: &str = "sluice.dev/topic-id";
/// Nodes that dropped a deleted topic's data, comma-separated.
pub const DROPPED_ON: &str = "sluice.dev/dropped-on";
/// Set on a `Topic` being deleted on purpose: its data goes.
pub const DROP_DATA: &str = "sluice.dev/drop-data";
/// Held on every set-up `Topic` until its deletion is settled.
pub const FINALIZER: &str = "sluice.dev/topic-data";

pub struct Kubernetes {
    leases: Api<Lease>,
    topics: Api<Topic>,
    client: Client,
    namespace: String,
    cluster: String,
    changes: watch::Sender<u64>,
    /// When this process saw each node lease's current resource version.
    sightings: LeaseSightings,
    lease_cache: Store<Lease>,
    /// Read-your-writes: the highest resourceVersion each cache has seen,
    /// and the highest this process wrote to it. A cached read first waits
    /// (briefly) for the cache to reach this process's own last write.
    lease_rv: Progress,
    topic_rv: Progress,
    topic_cache: Store<Topic>,
    /// The resource version of each node lease this process last wrote,
    /// so a renewal is one write and no read.
    renewed: Mutex<BTreeMap<i32, String>>,
    /// The owner of the Leases that belong to the running cluster (node
    /// leases, broker configs, locks): the operator's ConfigMap, so they go
    /// with it (`helm uninstall`). Partition Leases are the topics'
    /// metadata and stay with the data.
    owner: Option<OwnerReference>,
}

/// The owner reference of a ConfigMap (`name`, `uid`), as Leases carry it.
pub fn configmap_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// A ConfigMap owner written as `<name>/<uid>` (`SLUICE_LEASE_OWNER`).
pub fn parse_configmap_owner(s: &str) -> Result<OwnerReference, String> {
    match s.split_once('/') {
        Some((name, uid)) if !name.is_empty() && !uid.is_empty() && !uid.contains('/') => {
            Ok(configmap_owner(name, uid))
        }
        _ => Err(format!("{s:?}: expected <configmap name>/<uid>")),
    }
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
    /// The topic's id: a `Topic` object lost and applied again finds it.
    #[serde(default)]
    topic_id: Option<Uuid>,
    record: PartitionRecord,
}

fn backend(e: impl std::fmt::Display) -> CoordError {
    CoordError::Backend(e.to_string())
}

/// A name part for `topic` in Lease names and labels (see
/// [`v1alpha1::name_part`]).
fn name_part(topic: &str) -> String {
    v1alpha1::name_part(topic, 60)
}

fn rv_of(meta: &ObjectMeta) -> CResult<Version> {
    let rv = meta.resource_version.as_deref().unwrap_or_default();
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

fn annotation<'a>(t: &'a Topic, key: &str) -> Option<&'a str> {
    t.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The topic id a `Topic` object was set up with, if it was.
pub fn topic_id(t: &Topic) -> Option<Uuid> {
    annotation(t, TOPIC_ID).and_then(|v| v.parse().ok())
}

/// Nodes that dropped a deleted topic's data.
fn dropped_on(t: &Topic) -> Vec<i32> {
    let mut v: Vec<i32> = annotation(t, DROPPED_ON)
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The coordination view of a `Topic` object (`id` nil while pending).
fn spec_of(t: &Topic) -> TopicSpec {
    let mut s = TopicSpec::new(
        &v1alpha1::kafka_name(t),
        topic_id(t).unwrap_or_else(Uuid::nil),
        t.spec.partitions,
        i16::try_from(t.spec.replication_factor).unwrap_or(i16::MAX),
        t.spec.config.clone(),
    );
    s.deleting =
        t.metadata.deletion_timestamp.is_some() && annotation(t, DROP_DATA) == Some("true");
    s.dropped_on = dropped_on(t);
    s
}

/// Of several objects naming one Kafka topic, the one that counts: the
/// oldest (then the first by object name); the others are clashes.
pub fn winners(all: &[std::sync::Arc<Topic>]) -> BTreeMap<String, std::sync::Arc<Topic>> {
    let mut by_name: BTreeMap<String, std::sync::Arc<Topic>> = BTreeMap::new();
    for t in all {
        let name = v1alpha1::kafka_name(t);
        let better = match by_name.get(&name) {
            None => true,
            Some(cur) => {
                // Set up beats pending; then the older object wins.
                let key = |x: &Topic| {
                    (
                        topic_id(x).is_none(),
                        x.metadata.creation_timestamp.clone().map(|c| c.0),
                        x.name_any(),
                    )
                };
                key(t) < key(cur)
            }
        };
        if better {
            by_name.insert(name, t.clone());
        }
    }
    by_name
}

/// How far a cache has followed the API server, against what this
/// process wrote.
#[derive(Clone, Default)]
struct Progress(
    std::sync::Arc<(
        std::sync::atomic::AtomicU64,
        std::sync::atomic::AtomicU64,
        tokio::sync::Notify,
    )>,
);

impl Progress {
    fn seen(&self, rv: Version) {
        self.0 .0.fetch_max(rv, std::sync::atomic::Ordering::SeqCst);
        self.0 .2.notify_waiters();
    }
    fn wrote(&self, meta: &ObjectMeta) {
        if let Ok(rv) = rv_of(meta) {
            self.0 .1.fetch_max(rv, std::sync::atomic::Ordering::SeqCst);
        }
    }
    /// Waits until the cache has seen this process's last write (at most
    /// two seconds: then the read goes on with what the cache has).
    async fn caught_up(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let notified = self.0 .2.notified();
            let seen = self.0 .0.load(std::sync::atomic::Ordering::SeqCst);
            if seen >= self.0 .1.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Starts a reflector on `api` and drives it forever, bumping `changes` on
/// every event; returns its store once it has listed everything.
async fn cached<K>(
    api: Api<K>,
    cfg: watcher::Config,
    changes: watch::Sender<u64>,
    what: &'static str,
    progress: Progress,
) -> CResult<Store<K>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    tokio::spawn(async move {
        let mut events = stream.boxed();
        while let Some(e) = events.next().await {
            match e {
                Ok(ev) => {
                    if let watcher::Event::Apply(o)
                    | watcher::Event::Delete(o)
                    | watcher::Event::InitApply(o) = &ev
                    {
                        if let Ok(rv) = rv_of(o.meta()) {
                            progress.seen(rv);
                        }
                    }
                    changes.send_modify(|v| *v += 1);
                }
                Err(e) => tracing::warn!(what, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
        .wait_until_ready()
        .await
        .map_err(|e| backend(format!("the {what} cache never filled: {e}")))?;
    Ok(reader)
}

impl Kubernetes {
    /// Coordination in `namespace` for the cluster named `cluster`. Starts
    /// the watches that keep its caches and announce changes made by anyone.
    pub async fn new(client: Client, namespace: &str, cluster: &str) -> CResult<Kubernetes> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let topics: Api<Topic> = Api::namespaced(client.clone(), namespace);
        // Fail early when the API server is unreachable, forbids us, or does
        // not know Topics.
        leases
            .list(&ListParams::default().limit(1))
            .await
            .map_err(backend)?;
        topics
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| match status_code(&e) {
                Some(404) => backend(
                    "the Topic resource is not installed: run `kubectl apply -f crds/` first",
                ),
                _ => backend(e),
            })?;
        let (tx, _) = watch::channel(0u64);
        let (lease_rv, topic_rv) = (Progress::default(), Progress::default());
        let lease_cache = cached(
            leases.clone(),
            watcher::Config::default().labels(&format!("{CLUSTER}={cluster}")),
            tx.clone(),
            "lease",
            lease_rv.clone(),
        )
        .await?;
        let topic_cache = cached(
            topics.clone(),
            watcher::Config::default(),
            tx.clone(),
            "topic",
            topic_rv.clone(),
        )
        .await?;
        Ok(Kubernetes {
            leases,
            topics,
            client,
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
            changes: tx,
            sightings: LeaseSightings::default(),
            lease_cache,
            topic_cache,
            lease_rv,
            topic_rv,
            renewed: Mutex::new(BTreeMap::new()),
            owner: None,
        })
    }

    /// Leases of the running cluster (node leases, broker configs, locks)
    /// are owned by `owner` (see [`Kubernetes::owner`]).
    pub fn with_owner(mut self, owner: Option<OwnerReference>) -> Kubernetes {
        self.owner = owner;
        self
    }

    fn owners(&self) -> Option<Vec<OwnerReference>> {
        self.owner.clone().map(|o| vec![o])
    }

    /// From a kubeconfig file (tests, and nodes outside the cluster).
    pub async fn from_kubeconfig(
        path: &std::path::Path,
        namespace: &str,
        cluster: &str,
    ) -> CResult<Kubernetes> {
        let client = client_from_kubeconfig(path).await?;
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
    fn partition_name(&self, key: &PartitionKey) -> String {
        format!(
            "{}-p-{}-{}",
            self.cluster,
            name_part(&key.topic),
            key.partition
        )
    }
    fn config_name(&self, node: Option<i32>) -> String {
        match node {
            None => format!("{}-config-default", self.cluster),
            Some(id) => format!("{}-config-node-{id}", self.cluster),
        }
    }

    /// Creates (`expected: None`) or replaces a Lease of `kind` whose
    /// value annotation holds `value`.
    async fn put_value_lease<T: serde::Serialize>(
        &self,
        name: &str,
        kind: &str,
        value: &T,
        expected: Option<Version>,
        what: String,
    ) -> CResult<Version> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(self.labels(kind, None)),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(value).expect("serializes"),
                )])),
                resource_version: expected.map(|v| v.to_string()),
                owner_references: self.owners(),
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        match expected {
            Some(_) => self.replace_lease(name, &lease, what).await,
            None => match self.leases.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.lease_rv.wrote(&l.metadata);
                    self.announce();
                    rv_of(&l.metadata)
                }
                Err(e) if status_code(&e) == Some(409) => Err(CoordError::AlreadyExists(what)),
                Err(e) => Err(backend(e)),
            },
        }
    }

    /// Cached leases of one kind.
    async fn cached_leases(&self, kind: &str) -> Vec<std::sync::Arc<Lease>> {
        self.lease_rv.caught_up().await;
        self.lease_cache
            .state()
            .into_iter()
            .filter(|l| {
                l.metadata
                    .labels
                    .as_ref()
                    .and_then(|m| m.get(KIND))
                    .is_some_and(|k| k == kind)
            })
            .collect()
    }

    /// The object standing for Kafka topic `name` (the one that wins a
    /// clash), from the cache.
    async fn cached_topic(&self, name: &str) -> Option<std::sync::Arc<Topic>> {
        self.topic_rv.caught_up().await;
        winners(&self.topic_cache.state()).remove(name)
    }

    /// The object standing for Kafka topic `name`, read now.
    async fn fresh_topic(&self, name: &str) -> CResult<Option<Topic>> {
        let object = self
            .cached_topic(name)
            .await
            .map(|t| t.name_any())
            .unwrap_or_else(|| v1alpha1::object_name(name));
        let t = self.topics.get_opt(&object).await.map_err(backend)?;
        Ok(t.filter(|t| v1alpha1::kafka_name(t) == name))
    }

    fn partition_lease(
        &self,
        key: &PartitionKey,
        record: &PartitionRecord,
        topic_id: Option<Uuid>,
        resource_version: Option<String>,
    ) -> Lease {
        let value = PartitionValue {
            topic: key.topic.clone(),
            partition: key.partition,
            topic_id,
            record: record.clone(),
        };
        Lease {
            metadata: ObjectMeta {
                name: Some(self.partition_name(key)),
                labels: Some(self.labels("partition", Some(&key.topic))),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(&value).expect("serializes"),
                )])),
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

    async fn create_partition_leases(
        &self,
        topic: &str,
        id: Uuid,
        first: i32,
        records: Vec<PartitionRecord>,
    ) -> CResult<()> {
        for (i, record) in records.iter().enumerate() {
            let key = PartitionKey::new(topic, first + i as i32);
            let l = self.partition_lease(&key, record, Some(id), None);
            match self.leases.create(&PostParams::default(), &l).await {
                Ok(l) => self.lease_rv.wrote(&l.metadata),
                Err(e) if status_code(&e) == Some(409) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }

    /// Replaces `lease` if it is still at `expected`.
    async fn replace_lease(&self, name: &str, lease: &Lease, what: String) -> CResult<Version> {
        match self
            .leases
            .replace(name, &PostParams::default(), lease)
            .await
        {
            Ok(l) => {
                self.lease_rv.wrote(&l.metadata);
                self.announce();
                rv_of(&l.metadata)
            }
            Err(e) if status_code(&e) == Some(409) => Err(CoordError::Conflict(what)),
            Err(e) if status_code(&e) == Some(404) => Err(CoordError::NotFound(what)),
            Err(e) => Err(backend(e)),
        }
    }

    /// Replaces a `Topic` object (spec and metadata) if it is unchanged
    /// since it was read.
    async fn replace_topic(&self, t: &Topic) -> CResult<Version> {
        let what = format!("topic {}", v1alpha1::kafka_name(t));
        match self
            .topics
            .replace(&t.name_any(), &PostParams::default(), t)
            .await
        {
            Ok(t) => {
                self.topic_rv.wrote(&t.metadata);
                self.announce();
                rv_of(&t.metadata)
            }
            Err(e) if status_code(&e) == Some(409) => Err(CoordError::Conflict(what)),
            Err(e) if status_code(&e) == Some(404) => Err(CoordError::NotFound(what)),
            Err(e) => Err(backend(e)),
        }
    }

    /// Reads a topic's object afresh and applies `change` to it by
    /// compare-and-swap, again on conflicts; `None` from `change` means
    /// nothing to do.
    async fn change_topic(
        &self,
        name: &str,
        id: Uuid,
        change: impl Fn(&mut Topic) -> Option<()>,
    ) -> CResult<()> {
        loop {
            let Some(mut t) = self
                .fresh_topic(name)
                .await?
                .filter(|t| topic_id(t) == Some(id))
            else {
                return Err(CoordError::NotFound(format!("topic {name} ({id})")));
            };
            if change(&mut t).is_none() {
                return Ok(());
            }
            match self.replace_topic(&t).await {
                Ok(_) => return Ok(()),
                Err(CoordError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// What the deletion of a `Topic` object means, decided once: on
    /// purpose (`kubectl delete`, DeleteTopics) its data goes; with
    /// `deletionPolicy: Retain`, or when the object goes because its
    /// namespace or the Topic resource itself is being deleted, the data
    /// stays on every node (found again when a `Topic` of that name comes
    /// back) and only the finalizer goes.
    async fn settle_deletion(&self, t: &Topic) -> CResult<()> {
        let name = v1alpha1::kafka_name(t);
        let Some(id) = topic_id(t) else {
            return Ok(());
        };
        let keep = if t.spec.deletion_policy == DeletionPolicy::Retain {
            Some("deletionPolicy is Retain")
        } else if self.namespace_terminating().await? {
            Some("its namespace is being deleted")
        } else if self.crd_terminating().await? {
            Some("the Topic resource is being deleted")
        } else {
            None
        };
        match keep {
            Some(why) => {
                tracing::info!(topic = %name, why, "topic object removed; its data stays on the nodes");
                if t.spec.deletion_policy == DeletionPolicy::Retain {
                    self.delete_partition_leases(&name).await?;
                }
                self.change_topic(&name, id, |t| {
                    let f = t.metadata.finalizers.as_mut()?;
                    let before = f.len();
                    f.retain(|x| x != FINALIZER);
                    (f.len() != before).then_some(())
                })
                .await
            }
            None => {
                tracing::info!(topic = %name, "topic deleted: its data goes from every node");
                self.change_topic(&name, id, |t| {
                    let a = t.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    (a.get(DROP_DATA).map(String::as_str) != Some("true")).then(|| {
                        a.insert(DROP_DATA.to_string(), "true".to_string());
                    })
                })
                .await
            }
        }
    }

    async fn namespace_terminating(&self) -> CResult<bool> {
        let ns: Api<Namespace> = Api::all(self.client.clone());
        let n = ns.get_opt(&self.namespace).await.map_err(backend)?;
        Ok(n.is_none_or(|n| n.metadata.deletion_timestamp.is_some()))
    }

    async fn crd_terminating(&self) -> CResult<bool> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let c = crds
            .get_opt(&format!("topics.{}", v1alpha1::GROUP))
            .await
            .map_err(backend)?;
        Ok(c.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
    }

    async fn delete_partition_leases(&self, topic: &str) -> CResult<()> {
        let lp = ListParams::default().labels(&format!(
            "{CLUSTER}={},{KIND}=partition,{TOPIC}={}",
            self.cluster,
            name_part(topic)
        ));
        self.leases
            .delete_collection(&DeleteParams::background(), &lp)
            .await
            .map_err(backend)?;
        self.announce();
        Ok(())
    }
}

/// A client for the API server a kubeconfig file names.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> CResult<Client> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(backend)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(backend)?;
    Client::try_from(config).map_err(backend)
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
        let known = self
            .renewed
            .lock()
            .expect("renewals lock")
            .get(&info.id)
            .cloned();
        let rv = match known {
            Some(rv) => Some(rv),
            None => self
                .leases
                .get_opt(&name)
                .await
                .map_err(backend)?
                .and_then(|l| l.metadata.resource_version),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels("node", None)),
                annotations: Some(BTreeMap::from([(
                    VALUE.to_string(),
                    serde_json::to_string(&value).expect("serializes"),
                )])),
                resource_version: rv.clone(),
                owner_references: self.owners(),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(info.id.to_string()),
                lease_duration_seconds: Some(((duration_ms + 999) / 1000) as i32),
                renew_time: micro_time(now_ms),
                ..Default::default()
            }),
        };
        let written = match rv {
            None => self.leases.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.leases
                    .replace(&name, &PostParams::default(), &lease)
                    .await
            }
        };
        let mut renewed = self.renewed.lock().expect("renewals lock");
        match written {
            Ok(l) => {
                self.lease_rv.wrote(&l.metadata);
                if let Some(rv) = l.metadata.resource_version {
                    renewed.insert(info.id, rv);
                }
                Ok(())
            }
            // A conflict is not a renewal: nothing was written, and the node
            // must not extend how long it may lead on the strength of it.
            // The next renewal reads the lease again.
            Err(e) if matches!(status_code(&e), Some(409) | Some(404)) => {
                renewed.remove(&info.id);
                Err(CoordError::Conflict(format!("node lease {name}")))
            }
            Err(e) => {
                renewed.remove(&info.id);
                Err(backend(e))
            }
        }
    }

    async fn lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>> {
        // Read afresh: the lock's Lease is outside the watched set (its
        // renewals are not news to the nodes).
        let Some(l) = self.leases.get_opt(name).await.map_err(backend)? else {
            return Ok(None);
        };
        let spec = l.spec.clone().unwrap_or_default();
        Ok(Some(Versioned {
            value: LockRecord {
                holder: spec.holder_identity.unwrap_or_default(),
                duration_ms: i64::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000,
                renewed_ms: spec.renew_time.map(|t| t.0.timestamp_millis()).unwrap_or(0),
                transitions: spec.lease_transitions.unwrap_or(0),
            },
            version: rv_of(&l.metadata)?,
        }))
    }

    async fn put_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                resource_version: expected.map(|v| v.to_string()),
                owner_references: self.owners(),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(record.holder),
                lease_duration_seconds: Some(((record.duration_ms + 999) / 1000) as i32),
                renew_time: micro_time(record.renewed_ms),
                lease_transitions: Some(record.transitions),
                ..Default::default()
            }),
        };
        let what = format!("lock {name}");
        let written = match expected {
            None => self.leases.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.leases
                    .replace(name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(l) => rv_of(&l.metadata),
            Err(e) if status_code(&e) == Some(409) => Err(match expected {
                None => CoordError::AlreadyExists(what),
                Some(_) => CoordError::Conflict(what),
            }),
            Err(e) if status_code(&e) == Some(404) => Err(CoordError::NotFound(what)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn nodes(&self) -> CResult<Vec<NodeLease>> {
        let mut out = vec![];
        for l in self.cached_leases("node").await {
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
        self.topic_rv.caught_up().await;
        for t in winners(&self.topic_cache.state()).into_values() {
            if topic_id(&t).is_none() {
                continue;
            }
            out.push(Versioned {
                value: spec_of(&t),
                version: rv_of(&t.metadata)?,
            });
        }
        Ok(out)
    }

    async fn topic(&self, name: &str) -> CResult<Option<Versioned<TopicSpec>>> {
        let Some(t) = self
            .fresh_topic(name)
            .await?
            .filter(|t| topic_id(t).is_some())
        else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            value: spec_of(&t),
            version: rv_of(&t.metadata)?,
        }))
    }

    async fn pending_topics(&self) -> CResult<Vec<Versioned<TopicSpec>>> {
        let mut out = vec![];
        self.topic_rv.caught_up().await;
        for t in winners(&self.topic_cache.state()).into_values() {
            if topic_id(&t).is_some() || t.metadata.deletion_timestamp.is_some() {
                continue;
            }
            out.push(Versioned {
                value: spec_of(&t),
                version: rv_of(&t.metadata)?,
            });
        }
        Ok(out)
    }

    async fn adopt_topic(
        &self,
        spec: TopicSpec,
        partitions: Vec<PartitionRecord>,
        expected: Version,
    ) -> CResult<()> {
        let what = format!("topic {}", spec.name);
        let mut t = self
            .fresh_topic(&spec.name)
            .await?
            .ok_or_else(|| CoordError::NotFound(what.clone()))?;
        if rv_of(&t.metadata)? != expected || topic_id(&t).is_some() {
            return Err(CoordError::Conflict(what));
        }
        t.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(TOPIC_ID.to_string(), spec.id.to_string());
        let f = t.metadata.finalizers.get_or_insert_with(Vec::new);
        if !f.iter().any(|x| x == FINALIZER) {
            f.push(FINALIZER.to_string());
        }
        // Records first: a topic the nodes see has its partitions.
        self.create_partition_leases(&spec.name, spec.id, 0, partitions)
            .await?;
        self.replace_topic(&t).await?;
        Ok(())
    }

    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()> {
        let object = v1alpha1::object_name(&spec.name);
        let t = Topic {
            metadata: ObjectMeta {
                name: Some(object.clone()),
                annotations: Some(BTreeMap::from([(
                    TOPIC_ID.to_string(),
                    spec.id.to_string(),
                )])),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_string(),
                    "sluice".to_string(),
                )])),
                finalizers: Some(vec![FINALIZER.to_string()]),
                ..Default::default()
            },
            spec: v1alpha1::TopicSpec {
                partitions: spec.partitions,
                replication_factor: i32::from(spec.replication_factor),
                config: spec.configs.clone(),
                topic_name: (object != spec.name).then(|| spec.name.clone()),
                deletion_policy: DeletionPolicy::Delete,
            },
            status: None,
        };
        if self.cached_topic(&spec.name).await.is_some() {
            return Err(CoordError::AlreadyExists(format!("topic {}", spec.name)));
        }
        // Records first: a topic the nodes see has its partitions.
        self.create_partition_leases(&spec.name, spec.id, 0, partitions)
            .await?;
        match self.topics.create(&PostParams::default(), &t).await {
            Ok(t) => self.topic_rv.wrote(&t.metadata),
            Err(e) if status_code(&e) == Some(409) => {
                return Err(CoordError::AlreadyExists(format!("topic {}", spec.name)))
            }
            Err(e) => return Err(backend(e)),
        }
        self.announce();
        Ok(())
    }

    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version> {
        let what = format!("topic {}", spec.name);
        let mut t = self
            .fresh_topic(&spec.name)
            .await?
            .filter(|t| topic_id(t) == Some(spec.id))
            .ok_or_else(|| CoordError::NotFound(what.clone()))?;
        if rv_of(&t.metadata)? != expected {
            return Err(CoordError::Conflict(what));
        }
        t.spec.partitions = spec.partitions;
        t.spec.replication_factor = i32::from(spec.replication_factor);
        t.spec.config = spec.configs;
        self.replace_topic(&t).await
    }

    async fn delete_topic(&self, name: &str) -> CResult<()> {
        let Some(t) = self.fresh_topic(name).await? else {
            return Err(CoordError::NotFound(format!("topic {name}")));
        };
        match self
            .topics
            .delete(&t.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {
                return Err(CoordError::NotFound(format!("topic {name}")))
            }
            Err(e) => return Err(backend(e)),
        }
        // An explicit delete: decide at once what it means for the data
        // (the controller's housekeeping would, a pass later).
        if let Some(t) = self.fresh_topic(name).await? {
            if t.metadata.deletion_timestamp.is_some() && annotation(&t, DROP_DATA).is_none() {
                self.settle_deletion(&t).await?;
            }
        }
        self.announce();
        Ok(())
    }

    async fn topic_dropped(&self, name: &str, id: Uuid, node: i32) -> CResult<()> {
        self.change_topic(name, id, |t| {
            let mut on = dropped_on(t);
            if on.contains(&node) {
                return None;
            }
            on.push(node);
            on.sort_unstable();
            let list: Vec<String> = on.iter().map(|n| n.to_string()).collect();
            t.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DROPPED_ON.to_string(), list.join(","));
            Some(())
        })
        .await
    }

    async fn remove_topic(&self, name: &str, id: Uuid) -> CResult<()> {
        self.delete_partition_leases(name).await?;
        self.change_topic(name, id, |t| {
            let f = t.metadata.finalizers.as_mut()?;
            let before = f.len();
            f.retain(|x| x != FINALIZER);
            (f.len() != before).then_some(())
        })
        .await
    }

    async fn housekeeping(&self) -> CResult<()> {
        self.topic_rv.caught_up().await;
        for t in self.topic_cache.state() {
            let ours = t
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
            if t.metadata.deletion_timestamp.is_some()
                && ours
                && annotation(&t, DROP_DATA).is_none()
            {
                self.settle_deletion(&t).await?;
            }
        }
        Ok(())
    }

    async fn partitions(&self) -> CResult<Vec<(PartitionKey, Versioned<PartitionRecord>)>> {
        let mut out = vec![];
        for l in self.cached_leases("partition").await {
            let v: PartitionValue = value_of(&l)?;
            out.push((
                PartitionKey::new(&v.topic, v.partition),
                Versioned {
                    value: v.record,
                    version: rv_of(&l.metadata)?,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn partition(&self, key: &PartitionKey) -> CResult<Option<Versioned<PartitionRecord>>> {
        let Some(l) = self
            .leases
            .get_opt(&self.partition_name(key))
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let v: PartitionValue = value_of(&l)?;
        Ok(Some(Versioned {
            value: v.record,
            version: rv_of(&l.metadata)?,
        }))
    }

    async fn partition_topic_ids(&self) -> CResult<BTreeMap<String, Uuid>> {
        let mut out = BTreeMap::new();
        for l in self.cached_leases("partition").await {
            let v: PartitionValue = value_of(&l)?;
            if let Some(id) = v.topic_id {
                out.insert(v.topic, id);
            }
        }
        Ok(out)
    }

    async fn create_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version> {
        let id = self
            .cached_topic(&key.topic)
            .await
            .and_then(|t| topic_id(&t));
        let l = self.partition_lease(key, &record, id, None);
        match self.leases.create(&PostParams::default(), &l).await {
            Ok(l) => {
                self.lease_rv.wrote(&l.metadata);
                self.announce();
                rv_of(&l.metadata)
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
        // The topic id travels with the record: keep what is stored.
        self.lease_rv.caught_up().await;
        let kept = self
            .lease_cache
            .get(&reflector::ObjectRef::new(&name).within(&self.namespace))
            .and_then(|l| value_of::<PartitionValue>(&l).ok())
            .and_then(|v| v.topic_id);
        let id = match kept {
            Some(id) => Some(id),
            None => self
                .cached_topic(&key.topic)
                .await
                .and_then(|t| topic_id(&t)),
        };
        let l = self.partition_lease(key, &record, id, Some(expected.to_string()));
        self.replace_lease(&name, &l, what).await
    }

    async fn broker_configs(&self) -> CResult<Vec<Versioned<BrokerConfigs>>> {
        let mut out = vec![];
        for l in self.cached_leases("config").await {
            out.push(Versioned {
                value: value_of(&l)?,
                version: rv_of(&l.metadata)?,
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
        self.put_value_lease(&name, "config", &configs, expected, what)
            .await
    }

    async fn security(&self) -> CResult<Option<Versioned<SecurityRecord>>> {
        let name = format!("{}-security", self.cluster);
        let found = self
            .cached_leases("security")
            .await
            .into_iter()
            .find(|l| l.metadata.name.as_deref() == Some(name.as_str()));
        match found {
            Some(l) => Ok(Some(Versioned {
                value: value_of(&l)?,
                version: rv_of(&l.metadata)?,
            })),
            None => Ok(None),
        }
    }

    async fn put_security(
        &self,
        record: SecurityRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        // One Lease like the broker configs: salted and hashed credentials
        // (never a password) and the ACLs, under the same RBAC as the rest
        // of the cluster's metadata.
        let name = format!("{}-security", self.cluster);
        let what = "the security record".to_string();
        self.put_value_lease(&name, "security", &record, expected, what)
            .await
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
