//! The ConsumerGroup controller: each object's status read from its
//! group's coordinator (state, members and their partitions, committed
//! offsets, log ends, lag), `spec.offsetReset` applied once per change
//! while the group is empty, and the Kafka group deleted with the object
//! only when `spec.deleteGroupOnRemoval` asks.
//!
//! Shaped like kube-rs's `controller-rs`: [`reconcile`] and
//! [`error_policy`] run by a `kube::runtime::Controller` (so a spec change
//! is seen at once and each object backs off on its own), with the
//! decisions ([`status_of`], [`reset_targets`], [`reset_state`]) pure
//! functions of what was read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use sluice_api::v1alpha1::{
    AppliedOffsetReset, ConsumerGroup, ConsumerGroupStatus, GroupMember, OffsetReset, PartitionLag,
    ResetOffset, ResetTo,
};
use sluice_coord::{Coordination, View};

use crate::kafka::{self, GroupReport, KafkaError};
use crate::metrics::Metrics;
use crate::status::{condition, keep_transition_times};

/// Held while the Kafka group must be deleted with the object.
pub const FINALIZER: &str = "sluice.dev/delete-group";

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("reading the cluster's metadata: {0}")]
    Metadata(#[from] sluice_coord::CoordError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

pub struct Context {
    pub client: kube::Client,
    pub coord: Arc<dyn Coordination>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub interval: Duration,
    /// The operator's Kafka client (its login kept current by the TLS loop).
    pub kafka: kafka::Kafka,
    /// Per object (uid): what its last full pass saw of it (generation,
    /// finalizers, deletion) and when. A pass triggered by nothing but a
    /// status write (its own, usually) within the interval reads nothing.
    pub last_pass: std::sync::Mutex<std::collections::HashMap<String, (u64, Instant)>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        coord: Arc<dyn Coordination>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        interval: Duration,
        kafka: kafka::Kafka,
    ) -> Context {
        Context {
            client,
            coord,
            metrics,
            recorder,
            interval,
            kafka,
            last_pass: Default::default(),
        }
    }

    /// How long until `cg` is due when it was read fully within the
    /// interval and nothing but its status changed since; `None` when a
    /// pass is due now (and it is noted as made).
    fn not_due(&self, cg: &ConsumerGroup) -> Option<Duration> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            cg.metadata.generation,
            cg.metadata.deletion_timestamp.is_some(),
            cg.finalizers(),
        )
            .hash(&mut h);
        let key = h.finish();
        let uid = cg.uid().unwrap_or_default();
        let mut last = self.last_pass.lock().expect("last pass lock");
        if let Some((k, at)) = last.get(&uid) {
            if *k == key && at.elapsed() < self.interval {
                return Some(self.interval - at.elapsed());
            }
        }
        last.insert(uid, (key, Instant::now()));
        None
    }
}

/// What became of `spec.offsetReset` on this pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ResetState {
    /// No reset asked for.
    None,
    /// Applied before (the status keeps what it wrote).
    Done(AppliedOffsetReset),
    /// Applied now.
    Applied(AppliedOffsetReset),
    /// Asked for, waiting for the group to have no members.
    Waiting(usize),
    /// Asked for and refused (an unknown topic, nothing to reset).
    Failed(String),
}

/// Whether `spec.offsetReset` still has to be applied: asked for, and not
/// the one last applied.
pub fn reset_pending<'a>(
    spec: Option<&'a OffsetReset>,
    last: Option<&AppliedOffsetReset>,
) -> Option<&'a OffsetReset> {
    spec.filter(|r| last.is_none_or(|l| l.reset != **r))
}

/// The offsets a reset writes. `partitions` are the cluster's topics and
/// their partition counts; `earliest`, `latest` and `at_time` what the
/// partitions' leaders answered (`at_time` for `to: timestamp`).
pub fn reset_targets(
    reset: &OffsetReset,
    committed: &BTreeMap<(String, i32), i64>,
    partitions: &BTreeMap<String, i32>,
    earliest: &BTreeMap<(String, i32), i64>,
    latest: &BTreeMap<(String, i32), i64>,
    at_time: &BTreeMap<(String, i32), i64>,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    // Named topics: every partition of each. None named: the partitions
    // the group has offsets for (kafka-consumer-groups' --all-topics).
    let mut keys: Vec<(String, i32)> = vec![];
    if reset.topics.is_empty() {
        keys.extend(committed.keys().cloned());
        if keys.is_empty() {
            return Err(
                "the group has no committed offsets; name the topics in spec.offsetReset.topics"
                    .into(),
            );
        }
    }
    for t in &reset.topics {
        let Some(n) = partitions.get(t) else {
            return Err(format!("no topic {t} on the cluster"));
        };
        keys.extend((0..*n).map(|p| (t.clone(), p)));
    }
    let mut out = BTreeMap::new();
    for key in keys {
        let (t, p) = (&key.0, key.1);
        let (Some(lo), Some(hi)) = (earliest.get(&key), latest.get(&key)) else {
            return Err(format!(
                "{t}-{p} has no leader answering; the reset is tried again"
            ));
        };
        let offset = match reset.to {
            ResetTo::Earliest => *lo,
            ResetTo::Latest => *hi,
            ResetTo::Offset => {
                let Some(v) = reset.value else {
                    return Err("to: offset needs spec.offsetReset.value".into());
                };
                v.clamp(*lo, *hi)
            }
            ResetTo::Timestamp => {
                if reset.value.is_none() {
                    return Err(
                        "to: timestamp needs spec.offsetReset.value (ms since the epoch)".into(),
                    );
                }
                // No record at or after the time (-1): the end.
                match at_time.get(&key) {
                    Some(o) if *o >= 0 => *o,
                    Some(_) => *hi,
                    None => {
                        return Err(format!(
                            "{t}-{p} did not answer for the time; the reset is tried again"
                        ))
                    }
                }
            }
        };
        out.insert(key, offset);
    }
    Ok(out)
}

/// The status a ConsumerGroup should have, from what its coordinator said
/// (`report`, or why it could not be read) and the partitions' log ends.
/// Conditions keep their transition time while their status stays.
pub fn status_of(
    cg: &ConsumerGroup,
    report: Result<&GroupReport, &str>,
    log_end: &BTreeMap<(String, i32), i64>,
    reset: &ResetState,
    now: DateTime<Utc>,
) -> ConsumerGroupStatus {
    let generation = cg.metadata.generation.unwrap_or(0);
    let previous = cg.status.clone().unwrap_or_default();
    let mut st = ConsumerGroupStatus {
        observed_generation: Some(generation),
        ..ConsumerGroupStatus::default()
    };
    let mut conditions = vec![];
    match report {
        Ok(r) if r.state == "Dead" => {
            st.state = Some("NotFound".into());
            st.member_count = Some(0);
            conditions.push(condition(
                "Ready",
                false,
                "GroupNotFound",
                format!(
                    "no group {} on the cluster yet: it appears when a consumer joins it or commits",
                    cg.spec.group_id
                ),
                generation,
            ));
        }
        Ok(r) => {
            st.state = Some(r.state.clone());
            st.member_count = Some(r.members.len() as i32);
            st.members = r
                .members
                .iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.clone(),
                    client_id: m.client_id.clone(),
                    host: m.host.clone(),
                    partitions: m
                        .partitions
                        .iter()
                        .map(|(t, p)| format!("{t}-{p}"))
                        .collect(),
                })
                .collect();
            st.offsets = r
                .committed
                .iter()
                .map(|((topic, partition), committed)| {
                    let end = log_end.get(&(topic.clone(), *partition)).copied();
                    PartitionLag {
                        topic: topic.clone(),
                        partition: *partition,
                        committed: *committed,
                        log_end: end.unwrap_or(-1),
                        // -1: the partition's leader did not answer.
                        lag: end.map(|e| (e - committed).max(0)).unwrap_or(-1),
                    }
                })
                .collect();
            st.total_lag = Some(st.offsets.iter().map(|o| o.lag.max(0)).sum());
            conditions.push(condition(
                "Ready",
                true,
                "Observed",
                format!("{} with {} members", r.state, r.members.len()),
                generation,
            ));
        }
        Err(why) => {
            // Keep what was last seen; say it is not current.
            st.state = previous.state.clone();
            st.member_count = previous.member_count;
            st.members = previous.members.clone();
            st.offsets = previous.offsets.clone();
            st.total_lag = previous.total_lag;
            conditions.push(condition(
                "Ready",
                false,
                "CoordinatorUnavailable",
                format!("the group's coordinator could not be read: {why}"),
                generation,
            ));
        }
    }
    match reset {
        ResetState::None => {}
        ResetState::Done(a) | ResetState::Applied(a) => {
            st.last_offset_reset = Some(a.clone());
            conditions.push(condition(
                "OffsetReset",
                true,
                "Applied",
                format!("{} committed offsets written", a.offsets.len()),
                generation,
            ));
        }
        ResetState::Waiting(members) => {
            st.last_offset_reset = previous.last_offset_reset.clone();
            conditions.push(condition(
                "OffsetReset",
                false,
                "GroupNotEmpty",
                format!("waiting for the group to be empty: it has {members} members (stop its consumers; offsets are reset only while none are connected)"),
                generation,
            ));
        }
        ResetState::Failed(why) => {
            st.last_offset_reset = previous.last_offset_reset.clone();
            conditions.push(condition(
                "OffsetReset",
                false,
                "Failed",
                why.clone(),
                generation,
            ));
        }
    }
    keep_transition_times(&mut conditions, &previous.conditions, now);
    st.conditions = conditions;
    st
}

/// What to do with a pending reset given the group's state.
pub fn reset_state_before(report: &GroupReport) -> Option<ResetState> {
    match report.state.as_str() {
        "Empty" | "Dead" => None,
        _ => Some(ResetState::Waiting(report.members.len())),
    }
}

async fn apply_reset(
    kafka: &kafka::Kafka,
    view: &View,
    group: &str,
    reset: &OffsetReset,
    report: &GroupReport,
    now: DateTime<Utc>,
) -> Result<ResetState, KafkaError> {
    let counts: BTreeMap<String, i32> = view
        .topics
        .iter()
        .filter(|(_, t)| !t.value.deleting)
        .map(|(n, t)| (n.clone(), t.value.partitions))
        .collect();
    let topics: Vec<String> = if reset.topics.is_empty() {
        report.committed.keys().map(|(t, _)| t.clone()).collect()
    } else {
        reset.topics.clone()
    };
    let parts: Vec<(String, i32)> = topics
        .iter()
        .filter_map(|t| counts.get(t).map(|n| (t, *n)))
        .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
        .collect();
    let earliest = kafka.offsets_at(view, &parts, kafka::EARLIEST).await;
    let latest = kafka.offsets_at(view, &parts, kafka::LATEST).await;
    let at_time = match (reset.to, reset.value) {
        (ResetTo::Timestamp, Some(ts)) => kafka.offsets_at(view, &parts, ts).await,
        _ => BTreeMap::new(),
    };
    let targets = match reset_targets(
        reset,
        &report.committed,
        &counts,
        &earliest,
        &latest,
        &at_time,
    ) {
        Ok(t) => t,
        Err(why) => return Ok(ResetState::Failed(why)),
    };
    kafka.commit(view, group, &targets).await?;
    Ok(ResetState::Applied(AppliedOffsetReset {
        reset: reset.clone(),
        offsets: targets
            .into_iter()
            .map(|((topic, partition), offset)| ResetOffset {
                topic,
                partition,
                offset,
            })
            .collect(),
        applied_at: Time(now),
    }))
}

async fn publish(ctx: &Context, cg: &ConsumerGroup, warn: bool, reason: &str, note: String) {
    let ev = Event {
        type_: if warn {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cg.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event failed");
    }
}

/// Sets this controller's finalizer on the object (`held`) or takes it
/// off, leaving any other finalizer as it is. The patch carries the
/// resourceVersion read: after a concurrent change it fails, and the next
/// pass decides again.
pub async fn set_finalizer<K>(
    api: &Api<K>,
    cg: &K,
    finalizer: &str,
    held: bool,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers: Vec<String> = cg
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if held {
        finalizers.push(finalizer.into());
    }
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": cg.resource_version(),
    }});
    api.patch(
        &cg.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// One ConsumerGroup: finalizer, deletion, offset reset, status.
pub async fn reconcile(cg: Arc<ConsumerGroup>, ctx: Arc<Context>) -> Result<Action, GroupError> {
    let started = Instant::now();
    let r = reconcile_inner(&cg, &ctx).await;
    ctx.metrics
        .reconciled("consumergroup", started.elapsed(), r.is_ok());
    r
}

async fn reconcile_inner(cg: &ConsumerGroup, ctx: &Context) -> Result<Action, GroupError> {
    let ns = cg.namespace().unwrap_or_default();
    let api: Api<ConsumerGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let group = cg.spec.group_id.as_str();
    if cg.metadata.deletion_timestamp.is_some() {
        if !cg.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        if !cg.spec.delete_group_on_removal {
            // Turned off before the deletion: the group stays.
            set_finalizer(&api, cg, FINALIZER, false).await?;
            return Ok(Action::await_change());
        }
        let view = View::read(ctx.coord.as_ref()).await?;
        match ctx.kafka.delete(&view, group).await {
            Ok(()) => {
                publish(
                    ctx,
                    cg,
                    false,
                    "GroupDeleted",
                    format!("Kafka group {group} deleted"),
                )
                .await;
            }
            Err(e) if e.code() == Some(kafka_protocol::ResponseError::NonEmptyGroup) => {
                publish(
                    ctx,
                    cg,
                    true,
                    "GroupNotEmpty",
                    format!("Kafka group {group} has members; it is deleted once they leave"),
                )
                .await;
                return Ok(Action::requeue(ctx.interval));
            }
            Err(e) => return Err(e.into()),
        }
        set_finalizer(&api, cg, FINALIZER, false).await?;
        return Ok(Action::await_change());
    }
    // Held exactly while the Kafka group is to go with the object.
    let held = cg.finalizers().iter().any(|f| f == FINALIZER);
    if held != cg.spec.delete_group_on_removal {
        set_finalizer(&api, cg, FINALIZER, cg.spec.delete_group_on_removal).await?;
    }
    if let Some(wait) = ctx.not_due(cg) {
        return Ok(Action::requeue(wait));
    }
    let now = Utc::now();
    let view = View::read(ctx.coord.as_ref()).await?;
    let previous = cg.status.clone().unwrap_or_default();
    let (report, log_end, reset) = match ctx.kafka.describe(&view, group).await {
        Ok(report) => {
            let reset = match reset_pending(
                cg.spec.offset_reset.as_ref(),
                previous.last_offset_reset.as_ref(),
            ) {
                None => match (&cg.spec.offset_reset, previous.last_offset_reset.clone()) {
                    (Some(_), Some(last)) => ResetState::Done(last),
                    _ => ResetState::None,
                },
                Some(r) => match reset_state_before(&report) {
                    Some(waiting) => waiting,
                    None => apply_reset(&ctx.kafka, &view, group, r, &report, now).await?,
                },
            };
            if let ResetState::Applied(a) = &reset {
                // Recorded before anything else can fail, so the reset is
                // never applied twice.
                write_status(&api, cg, &serde_json::json!({"lastOffsetReset": a})).await?;
            }
            // After a reset, the committed offsets are read again (the
            // ones read before will do if that fails).
            let report = match &reset {
                ResetState::Applied(_) => ctx.kafka.describe(&view, group).await.unwrap_or(report),
                _ => report,
            };
            let parts: Vec<(String, i32)> = report.committed.keys().cloned().collect();
            let log_end = ctx.kafka.offsets_at(&view, &parts, kafka::LATEST).await;
            (Ok(report), log_end, reset)
        }
        Err(e) => (
            Err(e.to_string()),
            BTreeMap::new(),
            match &previous.last_offset_reset {
                Some(last) if cg.spec.offset_reset.as_ref() == Some(&last.reset) => {
                    ResetState::Done(last.clone())
                }
                _ => ResetState::None,
            },
        ),
    };
    if let ResetState::Applied(a) = &reset {
        publish(
            ctx,
            cg,
            false,
            "OffsetsReset",
            format!(
                "{} committed offsets of group {group} reset ({:?})",
                a.offsets.len(),
                a.reset.to
            ),
        )
        .await;
    }
    let status = status_of(
        cg,
        report.as_ref().map_err(String::as_str),
        &log_end,
        &reset,
        now,
    );
    if cg.status.as_ref() != Some(&status) {
        // The whole status replaced, so fields that emptied (the last
        // member gone) go from it too.
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/status", "value": status}
        ]))
        .expect("a JSON patch");
        api.patch_status(
            &cg.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    }
    Ok(Action::requeue(ctx.interval))
}

/// Merges `fields` into the object's status.
async fn write_status(
    api: &Api<ConsumerGroup>,
    cg: &ConsumerGroup,
    fields: &serde_json::Value,
) -> Result<(), kube::Error> {
    api.patch_status(
        &cg.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": fields })),
    )
    .await?;
    Ok(())
}

/// A failed pass is tried again after a few seconds, alone: the other
/// objects go on.
pub fn error_policy(cg: Arc<ConsumerGroup>, e: &GroupError, ctx: Arc<Context>) -> Action {
    tracing::warn!(group = %cg.spec.group_id, object = %cg.name_any(), error = %e, "reconciling a ConsumerGroup failed");
    Action::requeue(ctx.interval.min(Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::Member;
    use sluice_api::v1alpha1::ConsumerGroupSpec;

    fn cg(reset: Option<OffsetReset>) -> ConsumerGroup {
        let mut c = ConsumerGroup::new(
            "billing",
            ConsumerGroupSpec {
                group_id: "billing".into(),
                offset_reset: reset,
                delete_group_on_removal: false,
            },
        );
        c.metadata.generation = Some(3);
        c
    }

    fn key(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    fn reset(to: ResetTo, topics: &[&str], value: Option<i64>) -> OffsetReset {
        OffsetReset {
            to,
            topics: topics.iter().map(|s| s.to_string()).collect(),
            value,
        }
    }

    #[test]
    fn lag_is_the_log_end_less_the_committed_offset() {
        let report = GroupReport {
            state: "Stable".into(),
            members: vec![Member {
                member_id: "m-1".into(),
                client_id: "c".into(),
                host: "/127.0.0.1".into(),
                partitions: vec![key("orders", 0), key("orders", 1)],
            }],
            committed: [(key("orders", 0), 40), (key("orders", 1), 10)].into(),
        };
        let ends = [(key("orders", 0), 50), (key("orders", 1), 10)].into();
        let st = status_of(&cg(None), Ok(&report), &ends, &ResetState::None, Utc::now());
        assert_eq!(st.state.as_deref(), Some("Stable"));
        assert_eq!(st.member_count, Some(1));
        assert_eq!(st.members[0].partitions, ["orders-0", "orders-1"]);
        assert_eq!(st.offsets[0].lag, 10);
        assert_eq!(st.offsets[1].lag, 0);
        assert_eq!(st.total_lag, Some(10));
        assert_eq!(st.conditions[0].status, "True");
    }

    #[test]
    fn a_group_not_there_yet_is_reported_not_failed() {
        let report = GroupReport {
            state: "Dead".into(),
            ..GroupReport::default()
        };
        let st = status_of(
            &cg(None),
            Ok(&report),
            &BTreeMap::new(),
            &ResetState::None,
            Utc::now(),
        );
        assert_eq!(st.state.as_deref(), Some("NotFound"));
        assert_eq!(st.conditions[0].reason, "GroupNotFound");
        // Unreachable: what was seen stays, and the condition says why.
        let mut seen = cg(None);
        seen.status = Some(ConsumerGroupStatus {
            state: Some("Stable".into()),
            total_lag: Some(7),
            ..ConsumerGroupStatus::default()
        });
        let st = status_of(
            &seen,
            Err("no answer"),
            &BTreeMap::new(),
            &ResetState::None,
            Utc::now(),
        );
        assert_eq!(
            (st.state.as_deref(), st.total_lag),
            (Some("Stable"), Some(7))
        );
        assert_eq!(st.conditions[0].reason, "CoordinatorUnavailable");
    }

    #[test]
    fn a_reset_is_pending_until_that_reset_was_applied() {
        let r = reset(ResetTo::Earliest, &[], None);
        assert!(reset_pending(Some(&r), None).is_some());
        let applied = AppliedOffsetReset {
            reset: r.clone(),
            offsets: vec![],
            applied_at: Time(Utc::now()),
        };
        assert!(reset_pending(Some(&r), Some(&applied)).is_none());
        let other = reset(ResetTo::Latest, &[], None);
        assert!(reset_pending(Some(&other), Some(&applied)).is_some());
        assert!(reset_pending(None, Some(&applied)).is_none());
        // Only an empty group is reset.
        let busy = GroupReport {
            state: "Stable".into(),
            members: vec![Member::default(), Member::default()],
            ..GroupReport::default()
        };
        assert_eq!(reset_state_before(&busy), Some(ResetState::Waiting(2)));
        let empty = GroupReport {
            state: "Empty".into(),
            ..GroupReport::default()
        };
        assert_eq!(reset_state_before(&empty), None);
        let st = status_of(
            &cg(Some(r)),
            Ok(&busy),
            &BTreeMap::new(),
            &ResetState::Waiting(2),
            Utc::now(),
        );
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "OffsetReset")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "GroupNotEmpty")
        );
    }

    #[test]
    fn reset_targets_follow_kafka_consumer_groups() {
        let committed = [(key("orders", 0), 5)].into();
        let counts = [("orders".to_string(), 2), ("audit".to_string(), 1)].into();
        let lo = [
            (key("orders", 0), 2),
            (key("orders", 1), 0),
            (key("audit", 0), 0),
        ]
        .into();
        let hi = [
            (key("orders", 0), 9),
            (key("orders", 1), 4),
            (key("audit", 0), 3),
        ]
        .into();
        let none = BTreeMap::new();
        // No topics named: the partitions the group has offsets for.
        let t = reset_targets(
            &reset(ResetTo::Earliest, &[], None),
            &committed,
            &counts,
            &lo,
            &hi,
            &none,
        )
        .unwrap();
        assert_eq!(t, [(key("orders", 0), 2)].into());
        let t = reset_targets(
            &reset(ResetTo::Latest, &["audit"], None),
            &committed,
            &counts,
            &lo,
            &hi,
            &none,
        )
        .unwrap();
        assert_eq!(t, [(key("audit", 0), 3)].into());
        // An offset out of range is clamped into it.
        let t = reset_targets(
            &reset(ResetTo::Offset, &["orders"], Some(7)),
            &committed,
            &counts,
            &lo,
            &hi,
            &none,
        )
        .unwrap();
        assert_eq!(t, [(key("orders", 0), 7), (key("orders", 1), 4)].into());
        // A time after the last record: the end.
        let at = [(key("orders", 0), 6), (key("orders", 1), -1)].into();
        let t = reset_targets(
            &reset(ResetTo::Timestamp, &["orders"], Some(1)),
            &committed,
            &counts,
            &lo,
            &hi,
            &at,
        )
        .unwrap();
        assert_eq!(t, [(key("orders", 0), 6), (key("orders", 1), 4)].into());
        assert!(reset_targets(
            &reset(ResetTo::Earliest, &["nope"], None),
            &committed,
            &counts,
            &lo,
            &hi,
            &none
        )
        .unwrap_err()
        .contains("no topic nope"));
        assert!(reset_targets(
            &reset(ResetTo::Offset, &["orders"], None),
            &committed,
            &counts,
            &lo,
            &hi,
            &none
        )
        .is_err());
        assert!(reset_targets(
            &reset(ResetTo::Earliest, &[], None),
            &BTreeMap::new(),
            &counts,
            &lo,
            &hi,
            &none
        )
        .is_err());
    }
}
