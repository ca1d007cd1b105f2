//! The operator's runtime: campaign for the controller lock, and while
//! leading run the controller, keep the node cluster applied and every
//! Topic's status current. Each loop backs off on errors and goes on; none
//! ends the process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::Controller;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use sluice_api::v1alpha1::{kafka_name, ConsumerGroup, Topic};
use sluice_coord::controller::{self, ControllerConfig};
use sluice_coord::elector::{self, ElectorConfig};
use sluice_coord::{Coordination, View};
use tokio::sync::watch;

use crate::cluster::{self, Names};
use crate::config::Settings;
use crate::groups;
use crate::metrics::Metrics;
use crate::roll;
use crate::scale;
use crate::status::{self, Observed};

pub struct Operator {
    pub client: Client,
    pub settings: Settings,
    pub namespace: String,
    pub identity: String,
    pub coord: Arc<dyn Coordination>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The operator's Kafka client (consumer groups), logged in as the
    /// security settings say.
    pub kafka: crate::kafka::Kafka,
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
                // The member nodes, decided by the node loop, steer the
                // controller's balancing and draining.
                let (members_tx, members_rx) = watch::channel(BTreeSet::new());
                let mut config = me.controller_config();
                config.members = Some(members_rx);
                tokio::join!(
                    controller::run(me.coord.clone(), config),
                    me.clone().nodes_loop(members_tx),
                    me.clone().status_loop(),
                    me.clone().groups_loop(),
                    me.clone().users_loop(),
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
            transaction_state_partitions: 50,
            lease_duration_ms: self.settings.node_lease_ms,
            preferred_leader_interval_ms: 300_000,
            max_concurrent_moves: self.settings.max_concurrent_moves,
            members: None,
        }
    }

    /// Keeps the node cluster applied at the size the Topics ask for
    /// (shrinking only once the nodes that go are drained: [`scale`]), and
    /// rolls the nodes onto a new template one at a time ([`roll`]).
    async fn nodes_loop(self: Arc<Self>, members: watch::Sender<BTreeSet<i32>>) {
        let owner = match ensure_owner(&self.client, &self.namespace, &self.settings).await {
            Ok(cm) => cluster::owner_of(&cm),
            Err(e) => {
                tracing::error!(error = %e, "the operator's ConfigMap cannot be read or made; the node cluster is not applied");
                return;
            }
        };
        let names = Names(&self.settings.cluster_name);
        let sts_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut changes = self.coord.changes();
        let mut applied: Option<(i32, Option<String>, Instant)> = None;
        let mut waiting: Option<String> = None;
        let mut draining: Option<String> = None;
        let mut refused: Option<String> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            changes.borrow_and_update();
            let (target, holding) = match self.coord.topics().await {
                Ok(ts) => self.target_size(&ts),
                Err(e) => {
                    tracing::warn!(error = %e, "reading topics failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            if let Some(why) = holding {
                if refused.as_deref() != Some(why.as_str()) {
                    tracing::warn!(%why, "scale-down refused");
                    self.event_on_owner(
                        &owner,
                        EventType::Warning,
                        "ScaleDownRefused",
                        why.clone(),
                    )
                    .await;
                    refused = Some(why);
                }
            } else {
                refused = None;
            }
            members.send_if_modified(|m| {
                let want: BTreeSet<i32> = (0..target).collect();
                let changed = *m != want;
                if changed {
                    tracing::info!(nodes = target, "member nodes");
                    *m = want;
                }
                changed
            });
            let current = match sts_api.get_opt(&names.statefulset()).await {
                Ok(c) => c,
                Err(e) => {
                    // Not "no restart asked for": that would re-template
                    // (and roll) every node. Try again shortly.
                    tracing::warn!(error = %e, "reading the node StatefulSet failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            let restart = current
                .as_ref()
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get(cluster::RESTART).cloned());
            let size = match self.scale_decision(current.as_ref(), target).await {
                Some(size) => size,
                None => {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let replicas = match size {
                scale::Size::Apply(n) => {
                    let shrinking = current
                        .as_ref()
                        .and_then(|s| s.spec.as_ref())
                        .and_then(|s| s.replicas)
                        .is_some_and(|c| c > n);
                    if draining.take().is_some() && shrinking {
                        self.event_on_owner(
                            &owner,
                            EventType::Normal,
                            "Drained",
                            format!("nodes {n} and above hold no replicas; the StatefulSet shrinks to {n}"),
                        )
                        .await;
                    }
                    n
                }
                scale::Size::Hold {
                    current,
                    draining: kind,
                    why,
                } => {
                    // One event per stage (draining, then catching up), not
                    // one per changed count.
                    let stage = if kind { "draining" } else { "syncing" };
                    if draining.as_deref() != Some(stage) {
                        tracing::info!(%why, "scale-down waiting");
                        self.event_on_owner(&owner, EventType::Normal, "Draining", why)
                            .await;
                        draining = Some(stage.to_string());
                    } else {
                        tracing::debug!(%why, "scale-down waiting");
                    }
                    current
                }
            };
            // Apply on a change of size or restart stamp, and every minute
            // to undo drift.
            let due = applied.as_ref().is_none_or(|(n, r, at)| {
                *n != replicas || *r != restart || at.elapsed() > Duration::from_secs(60)
            });
            if due {
                // The certificates the nodes mount, before the nodes.
                match crate::tls::ensure(
                    &self.client,
                    &self.coord,
                    &self.settings,
                    &self.namespace,
                    &owner,
                )
                .await
                {
                    Ok(login) => self.kafka.set_login(login),
                    Err(e @ crate::tls::TlsError::Waiting(_)) => {
                        tracing::warn!(error = %e, "certificates not ready")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the certificates failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
                let started = Instant::now();
                let r = cluster::apply(
                    &self.client,
                    &self.settings,
                    &self.namespace,
                    replicas,
                    &owner,
                    restart.as_deref(),
                )
                .await;
                self.metrics
                    .reconciled("cluster", started.elapsed(), r.is_ok());
                match r {
                    Ok(()) => {
                        if applied.as_ref().is_none_or(|(n, _, _)| *n != replicas) {
                            tracing::info!(replicas, "node cluster applied");
                            self.event_on_owner(
                                &owner,
                                EventType::Normal,
                                "Applied",
                                format!("node cluster applied with {replicas} nodes"),
                            )
                            .await;
                        }
                        applied = Some((replicas, restart, Instant::now()));
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
            let rolling = match current {
                Some(sts) => self.roll_step(&sts, &owner, &mut waiting).await,
                None => false,
            };
            let pause = if rolling || draining.is_some() { 1 } else { 5 };
            let _ = tokio::time::timeout(Duration::from_secs(pause), changes.changed()).await;
        }
    }

    /// The node count the Topics need within minNodes..maxNodes, and why
    /// it is above minNodes when a Topic holds it there (a scale-down
    /// below what a topic needs is refused).
    fn target_size(
        &self,
        topics: &[sluice_coord::Versioned<sluice_coord::TopicSpec>],
    ) -> (i32, Option<String>) {
        let mut needs: Vec<(i32, &str)> = topics
            .iter()
            .filter(|t| !t.value.deleting)
            // A topic with more replicas than maxNodes is refused (a
            // Degraded condition) and grows nothing; one whose
            // min.insync.replicas is above maxNodes holds maxNodes.
            .filter(|t| i32::from(t.value.replication_factor) <= self.settings.max_nodes)
            .map(|t| {
                let n = self
                    .settings
                    .nodes_needed(i32::from(t.value.replication_factor), &t.value.configs);
                (n.min(self.settings.max_nodes), t.value.name.as_str())
            })
            .collect();
        // The topics most in need first; users' own before Sluice's internal
        // ones (`__consumer_offsets`, `__transaction_state`).
        needs.sort_by_key(|(n, name)| (std::cmp::Reverse(*n), name.starts_with("__"), *name));
        let needed = needs.first().map_or(1, |(n, _)| *n);
        let target = self.settings.node_count(needed);
        let holding = (needed > self.settings.min_nodes).then(|| {
            let names: Vec<&str> = needs
                .iter()
                .filter(|(n, _)| *n > self.settings.min_nodes)
                .map(|(_, name)| *name)
                .take(5)
                .collect();
            format!(
                "minNodes is {} but topics need {needed} nodes (replicationFactor or min.insync.replicas): {}; the cluster keeps {target} nodes",
                self.settings.min_nodes,
                names.join(", ")
            )
        });
        (target, holding)
    }

    /// How big the StatefulSet may be now ([`scale::decide`]); `None` when
    /// the metadata cannot be read.
    async fn scale_decision(&self, sts: Option<&StatefulSet>, target: i32) -> Option<scale::Size> {
        let current = sts.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas);
        if current.is_none_or(|c| c <= target) {
            return Some(scale::Size::Apply(target));
        }
        match View::read(self.coord.as_ref()).await {
            Ok(view) => {
                let records = view.records.iter().flat_map(|(t, rs)| {
                    rs.iter().enumerate().filter_map(move |(i, r)| {
                        r.as_ref().map(|r| (t.as_str(), i as i32, &r.value))
                    })
                });
                Some(scale::decide(current, target, records))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the metadata failed");
                None
            }
        }
    }

    /// One step of a roll; returns whether one is under way.
    async fn roll_step(
        &self,
        sts: &StatefulSet,
        owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        waiting: &mut Option<String>,
    ) -> bool {
        let status = sts.status.clone().unwrap_or_default();
        let Some(update) = status.update_revision.clone() else {
            return false;
        };
        // The StatefulSet controller has not seen the last template yet.
        if status.observed_generation < sts.metadata.generation {
            return true;
        }
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=node",
            self.settings.cluster_name
        );
        let pods = match pods_api
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing the node pods failed");
                return true;
            }
        };
        let prefix = format!("{}-", Names(&self.settings.cluster_name).statefulset());
        let seen: Vec<roll::Pod> = pods
            .iter()
            .filter_map(|p| {
                let name = p.name_any();
                let ordinal = name.strip_prefix(&prefix)?.parse().ok()?;
                Some(roll::Pod {
                    ordinal,
                    revision: p.labels().get("controller-revision-hash").cloned(),
                    ready: p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        }),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    crash_looping: p
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c.state
                                    .as_ref()
                                    .and_then(|s| s.waiting.as_ref())
                                    .and_then(|w| w.reason.as_deref())
                                    == Some("CrashLoopBackOff")
                            })
                        }),
                    name,
                })
            })
            .collect();
        let view = match View::read(self.coord.as_ref()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reading the metadata failed");
                return true;
            }
        };
        let records = view.records.iter().flat_map(|(t, rs)| {
            rs.iter()
                .enumerate()
                .filter_map(move |(i, r)| r.as_ref().map(|r| (t.as_str(), i as i32, &r.value)))
        });
        match roll::next(&seen, replicas, &update, records) {
            roll::Step::Done => {
                if waiting.take().is_some() {
                    self.event_on_owner(
                        owner,
                        EventType::Normal,
                        "RollCompleted",
                        format!("every node runs revision {update}"),
                    )
                    .await;
                }
                false
            }
            roll::Step::Wait(why) => {
                if waiting.as_deref() != Some(why.as_str()) {
                    tracing::info!(%why, "roll waiting");
                    self.event_on_owner(owner, EventType::Normal, "RollWaiting", why.clone())
                        .await;
                    *waiting = Some(why);
                }
                true
            }
            roll::Step::Restart(pod) => {
                tracing::info!(%pod, revision = %update, "restarting a node onto the current template");
                match pods_api.delete(&pod, &DeleteParams::default()).await {
                    Ok(_) => {
                        self.event_on_owner(
                            owner,
                            EventType::Normal, "Restarting",
                            format!("{pod} restarts onto revision {update} (its leaderships move first)"),
                        )
                        .await;
                        *waiting = Some(format!("{pod} restarting"));
                    }
                    Err(e) => tracing::warn!(%pod, error = %e, "deleting a node pod failed"),
                }
                true
            }
        }
    }

    async fn event_on_owner(
        &self,
        owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        type_: EventType,
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
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "publishing an event failed");
        }
    }

    /// Runs the ConsumerGroup controller ([`groups`]) over this namespace.
    async fn groups_loop(self: Arc<Self>) {
        let api: Api<ConsumerGroup> = Api::namespaced(self.client.clone(), &self.namespace);
        let ctx = Arc::new(groups::Context::new(
            self.client.clone(),
            self.coord.clone(),
            self.metrics.clone(),
            self.recorder.clone(),
            Duration::from_millis(self.settings.group_status_interval_ms),
            self.kafka.clone(),
        ));
        Controller::new(api, watcher::Config::default())
            .run(groups::reconcile, groups::error_policy, ctx)
            .for_each(|_| async {})
            .await;
    }

    /// Runs the User controller ([`crate::users`]) over this namespace;
    /// a change to a User's Secret brings its User back.
    async fn users_loop(self: Arc<Self>) {
        let api: Api<sluice_api::v1alpha1::User> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let ctx = Arc::new(crate::users::Context {
            client: self.client.clone(),
            coord: self.coord.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
        });
        Controller::new(api, watcher::Config::default())
            .owns(
                secrets,
                watcher::Config::default().labels("sluice.dev/user"),
            )
            .run(crate::users::reconcile, crate::users::error_policy, ctx)
            .for_each(|_| async {})
            .await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, echo, failure, Seen};
    use kube::runtime::watcher;
    use serde_json::{json, Value};
    use sluice_api::election::PartitionRecord;
    use sluice_api::v1alpha1::TopicSpec as TopicObjectSpec;
    use sluice_coord::{InMemory, TopicSpec};

    /// An operator whose API requests go to `client`; the events it
    /// publishes are answered (and collected) apart.
    fn operator(
        client: Client,
        coord: Arc<InMemory>,
    ) -> (Operator, tokio::task::JoinHandle<Vec<Seen>>) {
        let (events_client, events) = fixtures::client();
        let events = tokio::spawn(events.serve(|seen| (201, seen.body.clone())));
        let op = Operator {
            client,
            settings: Settings::default(),
            namespace: fixtures::NAMESPACE.into(),
            identity: "sluice-operator-0".into(),
            coord,
            metrics: Arc::new(Metrics::default()),
            recorder: recorder(events_client, "sluice-operator-0"),
            kafka: Default::default(),
        };
        (op, events)
    }

    fn topic(name: &str, partitions: i32, kafka_name: Option<&str>) -> Topic {
        let mut t = Topic::new(
            name,
            TopicObjectSpec {
                partitions,
                replication_factor: 1,
                config: Default::default(),
                topic_name: kafka_name.map(str::to_string),
                deletion_policy: Default::default(),
            },
        );
        t.metadata.namespace = Some(fixtures::NAMESPACE.into());
        t.metadata.generation = Some(1);
        t.metadata.uid = Some(format!("uid-{name}"));
        t.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::chrono::DateTime::UNIX_EPOCH,
        ));
        t
    }

    fn store_of(topics: &[Topic]) -> Store<Topic> {
        let (store, mut writer) = reflector::store();
        for t in topics {
            writer.apply_watcher_event(&watcher::Event::Apply(t.clone()));
        }
        store
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
            .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
    }

    #[tokio::test]
    async fn the_owner_is_made_when_missing_and_read_back_when_another_made_it() {
        let (client, mut server) = fixtures::client();
        let s = Settings::default();
        let run = tokio::spawn(async move { ensure_owner(&client, "data", &s).await });
        let path = "/api/v1/namespaces/data/configmaps/sluice-operator";
        server
            .expect("GET", path, 404, |_| {
                failure(404, "NotFound", "configmaps \"sluice-operator\" not found")
            })
            .await;
        let made = server
            .expect("POST", "/api/v1/namespaces/data/configmaps", 201, |seen| {
                let mut cm = seen.body.clone();
                cm["metadata"]["uid"] = json!("u-7");
                cm
            })
            .await;
        assert!(made.body["data"]["settings.yaml"]
            .as_str()
            .unwrap()
            .contains("clusterName: sluice"));
        let cm = run.await.unwrap().expect("made");
        assert_eq!(cm.metadata.uid.as_deref(), Some("u-7"));
        server.done().await;

        // Two replicas starting together: the one that loses the create
        // reads the winner's.
        let (client, mut server) = fixtures::client();
        let s = Settings::default();
        let run = tokio::spawn(async move { ensure_owner(&client, "data", &s).await });
        server
            .expect("GET", path, 404, |_| failure(404, "NotFound", "not found"))
            .await;
        server
            .expect("POST", "/api/v1/namespaces/data/configmaps", 409, |_| {
                failure(
                    409,
                    "AlreadyExists",
                    "configmaps \"sluice-operator\" already exists",
                )
            })
            .await;
        server
            .expect("GET", path, 200, |_| {
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "sluice-operator", "namespace": "data", "uid": "u-8"}})
            })
            .await;
        assert_eq!(
            run.await.unwrap().unwrap().metadata.uid.as_deref(),
            Some("u-8")
        );
        server.done().await;
    }

    /// One pass over the Topics: each gets the status the metadata says,
    /// a write that fails does not stop the others, a clash and a
    /// decrease are conditions, and a status already current is not
    /// written again.
    #[tokio::test]
    async fn statuses_follow_the_metadata_and_one_failure_stops_nothing() {
        let coord = Arc::new(InMemory::new());
        for (name, partitions) in [("orders", 2), ("payments", 1), ("shrunk", 3)] {
            let spec = TopicSpec::new(
                name,
                uuid::Uuid::new_v4(),
                partitions,
                1,
                Default::default(),
            );
            let records = (0..partitions)
                .map(|_| PartitionRecord::new(vec![0]))
                .collect();
            coord.create_topic(spec, records).await.unwrap();
        }
        let topics = [
            topic("orders", 2, None),
            topic("payments", 1, None),
            // A second object for the Kafka topic `orders`: the older
            // object keeps it (same timestamp here: the name decides).
            topic("orders-again", 2, Some("orders")),
            // Asks for fewer partitions than the topic has.
            topic("shrunk", 1, None),
        ];
        let (client, server) = fixtures::client();
        let stored = topics.clone();
        let answered = tokio::spawn(server.serve(move |seen| {
            if seen.path.ends_with("/topics/payments/status") {
                return (
                    500,
                    failure(500, "InternalError", "etcdserver: request timed out"),
                );
            }
            // The object as stored after the merge patch.
            let name = seen.path.rsplit('/').nth(1).unwrap_or_default();
            let t = stored
                .iter()
                .find(|t| t.metadata.name.as_deref() == Some(name));
            let mut object = serde_json::to_value(t.expect("a known Topic")).unwrap();
            object["status"] = seen.body["status"].clone();
            (200, object)
        }));
        let (op, events) = operator(client.clone(), coord.clone());
        let api: Api<Topic> = Api::namespaced(client, fixtures::NAMESPACE);
        op.refresh_statuses(&api, &store_of(&topics)).await;
        drop(api);
        drop(op);
        let seen = answered.await.unwrap();
        let status_of = |name: &str| -> Value {
            let path = format!("/apis/sluice.dev/v1alpha1/namespaces/data/topics/{name}/status");
            let s = seen
                .iter()
                .find(|s| s.path == path)
                .unwrap_or_else(|| panic!("no status written for {name}"));
            assert_eq!(s.method, "PATCH");
            assert_eq!(s.content_type, "application/merge-patch+json");
            s.body["status"].clone()
        };
        let orders = status_of("orders");
        assert_eq!(condition(&orders, "Ready")["status"], "True");
        assert_eq!(orders["partitions"].as_array().unwrap().len(), 2);
        assert_eq!(orders["partitions"][1]["leader"], 0);
        status_of("payments"); // tried, refused, and the pass went on
        let again = status_of("orders-again");
        assert_eq!(condition(&again, "Degraded")["status"], "True");
        assert!(
            condition(&again, "Degraded")["message"]
                .as_str()
                .unwrap()
                .contains("orders"),
            "{again}"
        );
        let shrunk = status_of("shrunk");
        assert_eq!(condition(&shrunk, "Degraded")["status"], "True");
        assert_eq!(
            shrunk["partitions"].as_array().unwrap().len(),
            3,
            "{shrunk}"
        );
        assert_eq!(seen.len(), 4, "one write per Topic");
        // Each new condition became an event on its object.
        let events = events.await.unwrap();
        assert!(events
            .iter()
            .any(|e| e.body["regarding"]["name"] == "orders"
                && e.body["reason"] == "AllPartitionsInSync"));

        // The next pass, with every written status stored, writes nothing.
        let current: Vec<Topic> = topics
            .iter()
            .filter(|t| t.metadata.name.as_deref() != Some("payments"))
            .map(|t| {
                let mut t = t.clone();
                let status = status_of(t.metadata.name.as_deref().unwrap());
                t.status = Some(serde_json::from_value(status).unwrap());
                t
            })
            .collect();
        let (client, server) = fixtures::client();
        let answered = tokio::spawn(server.serve(|seen| (200, echo(seen))));
        let (op, _events) = operator(client.clone(), coord);
        let api: Api<Topic> = Api::namespaced(client, fixtures::NAMESPACE);
        op.refresh_statuses(&api, &store_of(&current)).await;
        drop(api);
        drop(op);
        assert!(
            answered.await.unwrap().is_empty(),
            "a current status is written again"
        );
    }
}
