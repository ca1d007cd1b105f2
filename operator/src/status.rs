//! A `Topic`'s status as a pure function of the object, the cluster's
//! metadata and the settings: where each partition lives and who leads it,
//! and the conditions Ready (every partition led, its ISR full), Reassigning
//! (replicas moving, with counts), HoldsNodes (the topic needs more nodes
//! than minNodes, so a scale-down below them is refused) and Degraded (what
//! is wrong, in words). The spec is
//! never changed to match: a refused change (fewer partitions, more
//! replicas than nodes may exist, an unknown config) is a condition, and
//! Kafka keeps the topic as it was.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sluice_api::election::PartitionRecord;
use sluice_api::topic_config;
use sluice_api::v1alpha1::{kafka_name, PartitionStatus, Topic, TopicStatus};
use sluice_coord::{TopicSpec, Versioned};

use crate::config::Settings;

/// What the metadata holds for one topic.
pub struct Observed<'a> {
    pub spec: Option<&'a Versioned<TopicSpec>>,
    /// By partition index.
    pub records: &'a [Option<Versioned<PartitionRecord>>],
    /// Another `Topic` object already stands for this Kafka name.
    pub clash_with: Option<String>,
}

/// Problems with the object's spec, in words; empty when it is fine.
pub fn spec_problems(t: &Topic, seen: &Observed, s: &Settings) -> Vec<(String, String)> {
    let mut out = vec![];
    if let Some(other) = &seen.clash_with {
        out.push((
            "TopicNameClash".into(),
            format!(
                "Topic {other} already stands for Kafka topic {:?}; this object is ignored",
                kafka_name(t)
            ),
        ));
    }
    if t.spec.replication_factor > s.max_nodes {
        out.push((
            "ReplicationFactorTooHigh".into(),
            format!(
                "replicationFactor {} is above maxNodes ({}); the topic keeps its current replicas",
                t.spec.replication_factor, s.max_nodes
            ),
        ));
    }
    if let Some(spec) = seen.spec {
        if t.spec.partitions < spec.value.partitions {
            out.push((
                "PartitionsDecreased".into(),
                format!(
                    "partitions may not decrease: the topic has {}, the spec asks for {}",
                    spec.value.partitions, t.spec.partitions
                ),
            ));
        }
    }
    for (k, v) in &t.spec.config {
        let problem = match topic_config::spec(k) {
            None => Some("is not a topic config".to_string()),
            Some(spec) => topic_config::check(spec, v).err(),
        };
        if let Some(p) = problem {
            out.push(("InvalidConfig".into(), format!("config {k}={v:?}: {p}")));
        }
    }
    out
}

/// A condition; its transition time is set by [`keep_transition_times`].
pub(crate) fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
) -> Condition {
    Condition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        // Set by `keep_transition_times`.
        last_transition_time: Time(k8s_openapi::chrono::DateTime::UNIX_EPOCH),
    }
}

/// The status `t` should have. `now` stamps conditions whose status changed.
pub fn topic_status(
    t: &Topic,
    seen: &Observed,
    s: &Settings,
    now: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>,
) -> TopicStatus {
    let generation = t.metadata.generation.unwrap_or(0);
    let partitions: Vec<PartitionStatus> = seen
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let r = &r.as_ref()?.value;
            Some(PartitionStatus {
                partition: i as i32,
                replicas: r.replicas.clone(),
                leader: r.leader,
                leader_epoch: r.leader_epoch,
                isr: r.isr.clone(),
            })
        })
        .collect();
    let placed = seen.spec.is_some_and(|spec| !spec.value.id.is_nil());
    let leaderless: Vec<i32> = partitions
        .iter()
        .filter(|p| p.leader.is_none())
        .map(|p| p.partition)
        .collect();
    let under: Vec<i32> = partitions
        .iter()
        .filter(|p| p.isr.len() < p.replicas.len())
        .map(|p| p.partition)
        .collect();
    let wanted = seen
        .spec
        .map(|sp| sp.value.partitions)
        .unwrap_or(t.spec.partitions)
        .max(t.spec.partitions);
    let (ready, reason, message) = if !placed {
        (
            false,
            "Placing",
            "waiting for the controller to place the partitions".to_string(),
        )
    } else if (partitions.len() as i32) < wanted {
        (
            false,
            "Placing",
            format!("{} of {wanted} partitions placed", partitions.len()),
        )
    } else if !leaderless.is_empty() {
        (
            false,
            "LeaderMissing",
            format!("partitions without a leader: {leaderless:?}"),
        )
    } else if !under.is_empty() {
        (
            false,
            "UnderReplicated",
            format!("partitions whose ISR is not every replica: {under:?}"),
        )
    } else {
        (
            true,
            "AllPartitionsInSync",
            format!(
                "{} partitions, each led and fully in sync",
                partitions.len()
            ),
        )
    };
    let moving: Vec<String> = seen
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let r = &r.as_ref()?.value;
            (!r.adding.is_empty() || !r.removing.is_empty())
                .then(|| format!("{i}: adding {:?}, removing {:?}", r.adding, r.removing))
        })
        .collect();
    let total = seen.records.iter().flatten().count();
    let problems = spec_problems(t, seen, s);
    let needed = s.nodes_needed(t.spec.replication_factor, &t.spec.config);
    let mut conditions = vec![
        condition("Ready", ready, reason, message, generation),
        if moving.is_empty() {
            condition(
                "Reassigning",
                false,
                "Settled",
                "no replicas moving".into(),
                generation,
            )
        } else {
            condition(
                "Reassigning",
                true,
                "ReplicasMoving",
                format!(
                    "{} of {total} partitions moving: {}",
                    moving.len(),
                    moving.join("; ")
                ),
                generation,
            )
        },
        // A scale-down below what this topic needs is refused: the cluster
        // keeps enough nodes for it.
        if needed > s.min_nodes {
            condition(
                "HoldsNodes",
                true,
                "ScaleDownRefused",
                format!(
                    "minNodes is {} but this topic needs {needed} nodes (replicationFactor {}, \
                     min.insync.replicas included): the cluster keeps {} nodes",
                    s.min_nodes,
                    t.spec.replication_factor,
                    s.node_count(needed)
                ),
                generation,
            )
        } else {
            condition(
                "HoldsNodes",
                false,
                "WithinMinNodes",
                format!("needs {needed} nodes, within minNodes ({})", s.min_nodes),
                generation,
            )
        },
    ];
    conditions.push(match problems.first() {
        None => condition(
            "Degraded",
            false,
            "AsDeclared",
            "the spec is served as declared".into(),
            generation,
        ),
        Some((reason, _)) => condition(
            "Degraded",
            true,
            reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            generation,
        ),
    });
    let previous = t
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    keep_transition_times(&mut conditions, previous, now);
    TopicStatus {
        observed_generation: Some(generation),
        topic_id: seen
            .spec
            .filter(|sp| !sp.value.id.is_nil())
            .map(|sp| sp.value.id.to_string()),
        conditions,
        partitions,
    }
}

/// A condition keeps its last transition time while its status stays.
/// Stamps each condition with `now` where its status changed from
/// `previous`, and keeps the old time where it did not.
pub(crate) fn keep_transition_times(
    conditions: &mut [Condition],
    previous: &[Condition],
    now: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>,
) {
    let before: BTreeMap<&str, &Condition> =
        previous.iter().map(|c| (c.type_.as_str(), c)).collect();
    for c in conditions {
        c.last_transition_time = match before.get(c.type_.as_str()) {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Time(now),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::v1alpha1::TopicSpec as ObjectSpec;

    fn object(partitions: i32, rf: i32, config: &[(&str, &str)]) -> Topic {
        let mut t = Topic::new(
            "orders",
            ObjectSpec {
                partitions,
                replication_factor: rf,
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                topic_name: None,
                deletion_policy: Default::default(),
            },
        );
        t.metadata.generation = Some(4);
        t
    }

    fn stored(partitions: i32) -> Versioned<TopicSpec> {
        Versioned {
            value: TopicSpec::new("orders", uuid_of(7), partitions, 3, Default::default()),
            version: 1,
        }
    }

    fn uuid_of(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    fn record(
        replicas: &[i32],
        isr: &[i32],
        leader: Option<i32>,
    ) -> Option<Versioned<PartitionRecord>> {
        Some(Versioned {
            value: PartitionRecord {
                replicas: replicas.to_vec(),
                isr: isr.to_vec(),
                leader,
                leader_epoch: 2,
                adding: vec![],
                removing: vec![],
            },
            version: 1,
        })
    }

    fn cond<'a>(s: &'a TopicStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    fn now() -> k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc> {
        k8s_openapi::chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn ready_means_every_partition_led_and_fully_in_sync() {
        let t = object(2, 3, &[]);
        let spec = stored(2);
        let records = [
            record(&[0, 1, 2], &[0, 1, 2], Some(0)),
            record(&[1, 2, 0], &[1, 2], Some(1)),
        ];
        let seen = Observed {
            spec: Some(&spec),
            records: &records,
            clash_with: None,
        };
        let st = topic_status(&t, &seen, &Settings::default(), now());
        assert_eq!(st.observed_generation, Some(4));
        assert_eq!(
            st.topic_id.as_deref(),
            Some(uuid_of(7).to_string().as_str())
        );
        assert_eq!(st.partitions[1].isr, vec![1, 2]);
        let ready = cond(&st, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UnderReplicated")
        );
        assert!(ready.message.contains("[1]"), "{}", ready.message);
        let records = [
            record(&[0, 1, 2], &[0, 1, 2], Some(0)),
            record(&[1, 2, 0], &[1, 2, 0], Some(1)),
        ];
        let seen = Observed {
            spec: Some(&spec),
            records: &records,
            clash_with: None,
        };
        let st = topic_status(&t, &seen, &Settings::default(), now());
        assert_eq!(cond(&st, "Ready").status, "True");
        assert_eq!(cond(&st, "Degraded").status, "False");
        let records = [
            record(&[0, 1, 2], &[0], None),
            record(&[1, 2, 0], &[1, 2, 0], Some(1)),
        ];
        let seen = Observed {
            spec: Some(&spec),
            records: &records,
            clash_with: None,
        };
        let st = topic_status(&t, &seen, &Settings::default(), now());
        assert_eq!(cond(&st, "Ready").reason, "LeaderMissing");
    }

    #[test]
    fn refused_specs_are_conditions_that_say_why() {
        let t = object(1, 12, &[("retention.ms", "soon"), ("colour", "blue")]);
        let spec = stored(2);
        let records = [record(&[0], &[0], Some(0)), record(&[1], &[1], Some(1))];
        let seen = Observed {
            spec: Some(&spec),
            records: &records,
            clash_with: Some("orders-v2".into()),
        };
        let st = topic_status(&t, &seen, &Settings::default(), now());
        let d = cond(&st, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "TopicNameClash")
        );
        for part in [
            "Topic orders-v2 already stands",
            "replicationFactor 12 is above maxNodes (9)",
            "partitions may not decrease: the topic has 2, the spec asks for 1",
            "config retention.ms=\"soon\": not a whole number",
            "config colour=\"blue\": is not a topic config",
        ] {
            assert!(
                d.message.contains(part),
                "{part} missing from {}",
                d.message
            );
        }
    }

    #[test]
    fn a_topic_not_yet_placed_is_not_ready_and_transition_times_stay() {
        let mut t = object(3, 1, &[]);
        let seen = Observed {
            spec: None,
            records: &[],
            clash_with: None,
        };
        let first = topic_status(&t, &seen, &Settings::default(), now());
        assert_eq!(cond(&first, "Ready").reason, "Placing");
        t.status = Some(first.clone());
        let later = now() + k8s_openapi::chrono::Duration::seconds(30);
        let again = topic_status(&t, &seen, &Settings::default(), later);
        assert_eq!(
            cond(&again, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
    }
}
