//! The operator's runtime: campaign for the controller lock, and while
//! leading run the controller, keep the node cluster applied and every
//! Topic's status current. Each loop backs off on errors and goes on; none
//! ends the process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use sluice_api::v1alpha1::{kafka_name, Topic};
use sluice_coord::controller::{self, ControllerConfig};
use sluice_coord::elector::{self, ElectorConfig};
use sluice_coord::{Coordination, View};
use tokio::sync::watch;

use crate::cluster::{self, Names};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::status::{self, Observed};

pub struct Operator {
    pub client: Client,
    pub settings: Settings,
    pub namespace: String,
    pub identity: String,
    pub coord: Arc<dyn Coordination>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

/// The operator's ConfigMap: owner of every object it applies. The chart
/// writes it (holding the settings); an operator run as a process creates
/// it when it is missing.
pub async fn ensure_owner(
    client: &Client,
    namespace: &str,
    s: &Settings,
) -> anyhow::Result<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = Names(&s.cluster_name).owner();
    if let Some(cm) = api.get_opt(&name).await? {
        return Ok(cm);
    }
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "sluice",
                                              "app.kubernetes.io/managed-by": cluster::MANAGER}},
        "data": {"settings.yaml": serde_yaml::to_string(s)?},
    }))?;
    match api.create(&PostParams::default(), &cm).await {
        Ok(cm) => Ok(cm),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

impl Operator {
    /// Runs forever: the election, and while leading the three loops.
    pub async fn run(self: Arc<Self>) {
        let (tx, rx) = watch::channel(false);
        let cfg = ElectorConfig {
            name: Names(&self.settings.cluster_name).controller_lock(),
            identity: self.identity.clone(),
            duration_ms: self.settings.controller_lease_ms,
            renew_every_ms: (self.settings.controller_lease_ms / 5).max(200),
        };
        tokio::spawn(elector::run(self.coord.clone(), cfg, tx));
        let metrics = self.metrics.clone();
        let mut watch_leading = rx.clone();
        tokio::spawn(async move {
            loop {
                metrics
                    .leading
                    .set(i64::from(*watch_leading.borrow_and_update()));
                if watch_leading.changed().await.is_err() {
                    return;
                }
            }
        });
        let me = self.clone();
        elector::while_leading(rx, move || {
            let me = me.clone();
            async move {
                tokio::join!(
                    controller::run(me.coord.clone(), me.controller_config()),
                    me.clone().nodes_loop(),
                    me.clone().status_loop(),
                );
            }
        })
        .await;
    }

    fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            expected_nodes: self.settings.min_nodes as usize,
            offsets_partitions: 50,
            offsets_replication_factor: 3,
            lease_duration_ms: self.settings.node_lease_ms,
            preferred_leader_interval_ms: 300_000,
        }
    }

    /// Keeps the node cluster applied at the size the Topics ask for.
    async fn nodes_loop(self: Arc<Self>) {
        let owner = match ensure_owner(&self.client, &self.namespace, &self.settings).await {
            Ok(cm) => cluster::owner_of(&cm),
            Err(e) => {
                tracing::error!(error = %e, "the operator's ConfigMap cannot be read or made; the node cluster is not applied");
                return;
            }
        };
        let mut changes = self.coord.changes();
        let mut applied: Option<(i32, Instant)> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            changes.borrow_and_update();
            let largest = match self.coord.topics().await {
                Ok(ts) => ts
                    .iter()
                    .map(|t| i32::from(t.value.replication_factor))
                    .max()
                    .unwrap_or(1),
                Err(e) => {
                    tracing::warn!(error = %e, "reading topics failed");
                    1
                }
            };
            let replicas = self.settings.node_count(largest);
            // Apply on a change of size, and every minute to undo drift.
            let due = applied
                .is_none_or(|(n, at)| n != replicas || at.elapsed() > Duration::from_secs(60));
            if due {
                let started = Instant::now();
                let r = cluster::apply(
                    &self.client,
                    &self.settings,
                    &self.namespace,
                    replicas,
                    &owner,
                )
                .await;
                self.metrics
                    .reconciled("cluster", started.elapsed(), r.is_ok());
                match r {
                    Ok(()) => {
                        if applied.is_none_or(|(n, _)| n != replicas) {
                            tracing::info!(replicas, "node cluster applied");
                            self.event_on_owner(
                                &owner,
                                "Applied",
                                format!("node cluster applied with {replicas} nodes"),
                            )
                            .await;
                        }
                        applied = Some((replicas, Instant::now()));
                        backoff = Duration::from_secs(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "applying the node cluster failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        }
    }

    async fn event_on_owner(
        &self,
        owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        reason: &str,
        note: String,
    ) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(owner.uid.clone()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "publishing an event failed");
        }
    }

    /// Writes every Topic's status when it changes, on every metadata
    /// change and every `statusIntervalMs`.
    async fn status_loop(self: Arc<Self>) {
        let api: Api<Topic> = Api::namespaced(self.client.clone(), &self.namespace);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api.clone(), watcher::Config::default()).default_backoff(),
        )
        .applied_objects();
        let (tick_tx, mut tick) = watch::channel(0u64);
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if ev.is_ok() {
                    tick_tx.send_modify(|n| *n += 1);
                }
            }
        });
        if store.wait_until_ready().await.is_err() {
            return;
        }
        let mut changes = self.coord.changes();
        loop {
            changes.borrow_and_update();
            tick.borrow_and_update();
            self.refresh_statuses(&api, &store).await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tick.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.settings.status_interval_ms)) => {}
            }
        }
    }

    async fn refresh_statuses(&self, api: &Api<Topic>, store: &Store<Topic>) {
        let view = match View::read(self.coord.as_ref()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reading the metadata failed");
                return;
            }
        };
        let objects = store.state();
        let winners = sluice_coord::winners(&objects);
        let (mut leaderless, mut under) = (0i64, 0i64);
        for t in &objects {
            let name = kafka_name(t);
            let winner = winners.get(&name).map(|w| w.name_any());
            let clash_with = winner.filter(|w| *w != t.name_any());
            let spec = if clash_with.is_none() {
                view.topics.get(&name)
            } else {
                None
            };
            let records = match (&clash_with, view.topic_records(&name)) {
                (None, Some(r)) => r.as_slice(),
                _ => &[],
            };
            if clash_with.is_none() {
                for r in records.iter().flatten() {
                    leaderless += i64::from(r.value.leader.is_none());
                    under += i64::from(r.value.isr.len() < r.value.replicas.len());
                }
            }
            let seen = Observed {
                spec,
                records,
                clash_with,
            };
            let status =
                status::topic_status(t, &seen, &self.settings, k8s_openapi::chrono::Utc::now());
            if t.status.as_ref() == Some(&status) {
                continue;
            }
            let started = Instant::now();
            let r = api
                .patch_status(
                    &t.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": status})),
                )
                .await;
            self.metrics
                .reconciled("topic", started.elapsed(), r.is_ok());
            match r {
                Ok(_) => self.topic_events(t, &status).await,
                Err(e) => {
                    tracing::warn!(topic = %t.name_any(), error = %e, "writing a Topic's status failed")
                }
            }
        }
        self.metrics.partitions_without_leader.set(leaderless);
        self.metrics.under_replicated_partitions.set(under);
    }

    /// An event for each condition that changed.
    async fn topic_events(&self, t: &Topic, status: &sluice_api::v1alpha1::TopicStatus) {
        let before: BTreeMap<&str, &str> = t
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        for c in &status.conditions {
            if before.get(c.type_.as_str()) == Some(&c.status.as_str()) {
                continue;
            }
            let warn = (c.type_ == "Degraded" && c.status == "True")
                || (c.type_ == "Ready" && c.status == "False" && before.contains_key("Ready"));
            let ev = Event {
                type_: if warn {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
                action: format!("{}{}", c.type_, c.status),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &t.object_ref(&())).await {
                tracing::debug!(error = %e, "publishing an event failed");
            }
        }
    }
}

/// The recorder events are published with.
pub fn recorder(client: Client, identity: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: cluster::MANAGER.into(),
            instance: Some(identity.to_string()),
        },
    )
}
