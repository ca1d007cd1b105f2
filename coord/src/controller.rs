//! The controller: one per cluster, deciding what no single node may decide
//! for itself. Its decisions are a pure function of the cluster's metadata
//! ([`plan`], unit-tested) and a thin step writes them, each by
//! compare-and-swap, so a stale or second controller changes nothing:
//!
//! - leaders: a leader whose lease lapsed is replaced by the first live
//!   in-sync replica (unclean where a topic allows it); followers on lapsed
//!   nodes leave the ISR; leadership moves back to preferred replicas
//!   periodically;
//! - reassignments complete once their new replicas are in sync;
//! - topics: a declared topic (a `Topic` applied with kubectl) is set up
//!   with an id (its old one if its data is still on the nodes) and its
//!   partitions placed; partitions raised in a topic's spec are placed; a
//!   changed replication factor starts a reassignment of every partition
//!   (Kafka's rule: old plus new replicas until the new ones are in sync);
//!   a deleted topic is removed once every node that held it dropped its
//!   data;
//! - scaling, when the operator names the member nodes: replicas are
//!   balanced over them (a new node gets its fair share and no more) and
//!   leave nodes outside them (draining, highest id first; leadership
//!   first), by reassignment, at most `max_concurrent_moves` at once;
//! - the internal topics (`__consumer_offsets`, `__transaction_state`) are
//!   created once enough nodes are up.
//!
//! `sluice dev` runs it in process; on Kubernetes the operator runs it, one
//! replica at a time ([`crate::elector`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_api::election::{self, ElectionOptions};
use sluice_api::{placement, reassign, rebalance, OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    mono_ms, CResult, CoordError, Coordination, PartitionKey, PartitionRecord, TopicSpec, Version,
    Versioned, View,
};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Nodes the cluster is meant to have (the internal topics wait for
    /// `min(offsets_replication_factor, expected_nodes)` of them).
    pub expected_nodes: usize,
    pub offsets_partitions: i32,
    /// The replication factor of both internal topics.
    pub offsets_replication_factor: i16,
    /// Partitions of `__transaction_state` (Kafka's
    /// `transaction.state.log.num.partitions`).
    pub transaction_state_partitions: i32,
    /// Nodes without a lease count as alive for one lease duration after the
    /// controller starts, so a restarting cluster keeps its leaders.
    pub lease_duration_ms: i64,
    /// How often leadership moves back to preferred replicas that are in
    /// sync (`leader.imbalance.check.interval.seconds`); 0 disables it.
    pub preferred_leader_interval_ms: i64,
    /// Most partitions reassigning at once (rebalancing, draining, a
    /// changed replication factor); more wait for these to finish.
    pub max_concurrent_moves: usize,
    /// The nodes meant to hold replicas, when someone decides it (the
    /// operator: the StatefulSet's ordinals below its target size). Replicas
    /// are then balanced over them, and nodes outside are drained.
    /// `None`: every live node holds replicas and nothing is rebalanced.
    pub members: Option<watch::Receiver<BTreeSet<i32>>>,
}

/// What the controller reads before deciding.
#[derive(Debug, Default)]
pub struct Input {
    pub view: View,
    /// Topics declared but not set up yet.
    pub pending: Vec<Versioned<TopicSpec>>,
    /// Topic ids partition records remember, by topic name.
    pub remembered_ids: BTreeMap<String, Uuid>,
    /// Partitions whose leader restarted, at the epoch it led them in
    /// (see [`Restarts`]): leadership leaves them.
    pub handing_over: BTreeMap<PartitionKey, i32>,
    /// See [`ControllerConfig::members`].
    pub members: Option<BTreeSet<i32>>,
}

/// Which nodes restarted (a new incarnation in their lease) and which
/// partitions they led at that moment, until each has a new leader epoch.
#[derive(Debug, Default)]
pub struct Restarts {
    seen: HashMap<i32, Uuid>,
    pending: BTreeMap<PartitionKey, i32>,
}

impl Restarts {
    /// Notes what `view` shows and returns the partitions to hand over.
    pub fn observe(&mut self, view: &View) -> BTreeMap<PartitionKey, i32> {
        for n in &view.nodes {
            let now = n.info.incarnation;
            let before = self.seen.insert(n.info.id, now);
            if before.is_some_and(|b| b != now && !b.is_nil()) {
                tracing::info!(node = n.info.id, "node restarted: leadership moves off it");
                for (topic, records) in &view.records {
                    for (i, r) in records.iter().enumerate() {
                        if let Some(r) = r.as_ref().filter(|r| r.value.leader == Some(n.info.id)) {
                            self.pending
                                .insert(PartitionKey::new(topic, i as i32), r.value.leader_epoch);
                        }
                    }
                }
            }
        }
        // Done once the epoch moved on (or the partition went).
        self.pending.retain(|k, epoch| {
            view.record(&k.topic, k.partition)
                .is_some_and(|r| r.value.leader_epoch == *epoch)
        });
        self.pending.clone()
    }
}

impl Input {
    pub async fn read(coord: &dyn Coordination) -> CResult<Input> {
        Ok(Input {
            handing_over: BTreeMap::new(),
            view: View::read(coord).await?,
            pending: coord.pending_topics().await?,
            remembered_ids: coord.partition_topic_ids().await?,
            members: None,
        })
    }
}

/// One decision, to be written by compare-and-swap.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A partition record changes (an election, the ISR, a reassignment).
    Partition {
        key: PartitionKey,
        record: PartitionRecord,
        expected: Version,
        why: Why,
    },
    /// A declared topic is set up: its id and partitions.
    Adopt {
        spec: TopicSpec,
        records: Vec<PartitionRecord>,
        expected: Version,
    },
    /// Partitions a topic's spec names but that have no record yet.
    CreatePartitions {
        topic: String,
        first: i32,
        records: Vec<PartitionRecord>,
    },
    /// A deleted topic whose data every node holding it has dropped.
    Remove { name: String, id: Uuid },
    /// An internal topic: `__consumer_offsets` or `__transaction_state`.
    CreateInternalTopic {
        spec: TopicSpec,
        records: Vec<PartitionRecord>,
    },
}

/// Why a partition record changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Election,
    DeadFollowers,
    ReassignmentCompleted,
    ReplicationFactor,
    /// Replicas leave a node outside the members.
    Drain,
    /// A fair share of replicas moves onto new members.
    Balance,
}

/// Everything the controller would change in the cluster described by
/// `input`, given which nodes are alive. Pure: ids for new topics come from
/// `new_id`, and no clock is read.
pub fn plan(
    input: &Input,
    config: &ControllerConfig,
    alive: &dyn Fn(i32) -> bool,
    preferred: bool,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Vec<Action> {
    let view = &input.view;
    let mut out = vec![];
    let live: Vec<placement::Node> = view
        .nodes
        .iter()
        .filter(|n| alive(n.info.id))
        .map(|n| placement::Node {
            id: n.info.id,
            rack: n.info.rack.clone(),
        })
        .collect();
    let member = |n: i32| input.members.as_ref().is_none_or(|m| m.contains(&n));
    // Where replicas are placed: live members.
    let placing: Vec<placement::Node> = live.iter().filter(|n| member(n.id)).cloned().collect();

    // The internal topics, once enough nodes are up.
    let internal = [
        (OFFSETS_TOPIC, config.offsets_partitions),
        (TRANSACTION_STATE_TOPIC, config.transaction_state_partitions),
    ];
    for (name, partitions) in internal {
        if view.topics.contains_key(name) {
            continue;
        }
        let rf = usize::from(config.offsets_replication_factor.max(1) as u16)
            .min(config.expected_nodes.max(1));
        if placing.len() < rf {
            continue;
        }
        if let Ok(a) = placement::assign(&placing, &[], partitions as usize, rf) {
            // Committed offsets and transaction states never age out with
            // the log; compaction keeps one record per live key.
            let configs: BTreeMap<String, String> =
                [("retention.ms", "-1"), ("cleanup.policy", "compact")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            out.push(Action::CreateInternalTopic {
                spec: TopicSpec::new(name, new_id(), partitions, rf as i16, configs),
                records: a.into_iter().map(PartitionRecord::new).collect(),
            });
        }
    }

    // A topic's own setting, else the cluster-wide dynamic default.
    let unclean_default = view
        .broker_configs(None)
        .and_then(|c| c.value.configs.get("unclean.leader.election.enable"))
        .is_some_and(|v| v == "true");
    let unclean: HashMap<&str, bool> = view
        .topics
        .values()
        .map(|t| {
            let on = t
                .value
                .configs
                .get("unclean.leader.election.enable")
                .map(|v| v == "true")
                .unwrap_or(unclean_default);
            (t.value.name.as_str(), on)
        })
        .collect();

    // Nodes shutting down on purpose lead nothing they can hand over.
    let leaving: BTreeSet<i32> = view
        .nodes
        .iter()
        .filter(|n| n.info.leaving)
        .map(|n| n.info.id)
        .collect();
    let staying = |n: i32| alive(n) && !leaving.contains(&n);
    // Nodes being drained keep their replicas (and ISR places) until the
    // new replicas are in sync, but lead nothing another can lead.
    let leads = |n: i32| staying(n) && member(n);
    // Balancing and draining start only with every member up and staying:
    // a member restarting would be a target that cannot catch up.
    let members_ready = input
        .members
        .as_ref()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|n| view.node(*n).is_some() && staying(*n)));

    // Leaders, ISRs, reassignments; partitions changed here are not moved
    // in the same pass (the move would be planned on the old record).
    let mut decided_now: BTreeSet<PartitionKey> = BTreeSet::new();
    let mut keys: Vec<&String> = view.records.keys().collect();
    keys.sort();
    for topic in keys {
        for (i, rec) in view.records[topic].iter().enumerate() {
            let Some(rec) = rec else { continue };
            let opts = ElectionOptions {
                unclean: unclean.get(topic.as_str()).copied().unwrap_or(false),
                preferred,
            };
            let key = PartitionKey::new(topic, i as i32);
            let restarted = input
                .handing_over
                .get(&key)
                .filter(|e| **e == rec.value.leader_epoch)
                .and(rec.value.leader);
            // A restarted or leaving leader hands over and leaves the ISR.
            let from = restarted.or_else(|| rec.value.leader.filter(|l| leaving.contains(l)));
            // Elections pick a draining node only when no member can lead,
            // and a leaving one only when nothing else can; draining
            // replicas stay in the ISR (they hold the data until the move
            // completes), leaving ones do not.
            let (may_lead, in_sync): (&dyn Fn(i32) -> bool, &dyn Fn(i32) -> bool) =
                if rec.value.isr.iter().any(|r| leads(*r)) {
                    (&leads, &staying)
                } else if rec.value.isr.iter().any(|r| staying(*r)) {
                    (&staying, &staying)
                } else {
                    (alive, alive)
                };
            let decided = from
                .and_then(|from| {
                    election::hand_over_among(&rec.value, from, &leads, &staying)
                        .or_else(|| election::hand_over(&rec.value, from, staying))
                })
                .or_else(|| election::elect_among(&rec.value, may_lead, in_sync, opts))
                .map(|r| (r, Why::Election))
                .or_else(|| {
                    // Followers that are gone, or leaving (a controlled
                    // shutdown), leave the ISR, so acks=all does not wait
                    // for them; a restarted node joins again once caught up.
                    election::without_dead_followers(&rec.value, staying)
                        .map(|r| (r, Why::DeadFollowers))
                })
                .or_else(|| {
                    reassign::complete(&rec.value).map(|r| (r, Why::ReassignmentCompleted))
                });
            if let Some((record, why)) = decided {
                decided_now.insert(key.clone());
                out.push(Action::Partition {
                    key: PartitionKey::new(topic, i as i32),
                    record,
                    expected: rec.version,
                    why,
                });
            }
        }
    }

    // Topics: partitions raised, replication factor changed, deletions;
    // replicas balanced over the members.
    let mut moves: Vec<(Option<i32>, Action)> = vec![];
    for t in view.topics.values() {
        let spec = &t.value;
        let records = view.topic_records(&spec.name);
        let have = records.map_or(0, |r| r.len()) as i32;
        let rf = usize::from(spec.replication_factor.max(1) as u16);
        if spec.deleting {
            let holders: BTreeSet<i32> = records
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|r| r.value.replicas.iter().copied())
                .collect();
            // Every node with a lease that holds replicas of it must have
            // dropped its data (a node that is down holds the deletion up,
            // as in Kafka); nodes without a lease left the cluster.
            let done = holders
                .iter()
                .all(|n| spec.dropped_on.contains(n) || view.node(*n).is_none());
            if done {
                out.push(Action::Remove {
                    name: spec.name.clone(),
                    id: spec.id,
                });
            }
            continue;
        }
        let existing = view.replica_lists(&spec.name);
        if spec.partitions > have && have > 0 {
            if let Ok(a) = placement::assign(&placing, &existing, spec.partitions as usize, rf) {
                out.push(Action::CreatePartitions {
                    topic: spec.name.clone(),
                    first: have,
                    records: a[have as usize..]
                        .iter()
                        .cloned()
                        .map(PartitionRecord::new)
                        .collect(),
                });
            }
        }
        let scope = if members_ready {
            rebalance::Scope::Balance
        } else {
            rebalance::Scope::ReplicationFactor
        };
        let refs: Vec<Option<&PartitionRecord>> = records
            .map(|rs| rs.iter().map(|r| r.as_ref().map(|r| &r.value)).collect())
            .unwrap_or_default();
        for m in rebalance::topic_moves(&placing, &refs, rf, scope) {
            let Some(rec) = records.and_then(|rs| rs[m.partition].as_ref()) else {
                continue;
            };
            let key = PartitionKey::new(&spec.name, m.partition as i32);
            if decided_now.contains(&key) {
                continue;
            }
            moves.push((
                m.drains,
                Action::Partition {
                    key,
                    record: m.record,
                    expected: rec.version,
                    why: if m.drains.is_some() {
                        Why::Drain
                    } else if rec.value.replicas.len() != rf {
                        Why::ReplicationFactor
                    } else {
                        Why::Balance
                    },
                },
            ));
        }
    }
    // Draining moves first (highest node first), as many as the limit on
    // moves at once allows.
    let moving_now = view
        .records
        .values()
        .flatten()
        .flatten()
        .filter(|r| rebalance::moving(&r.value))
        .count();
    moves.sort_by_key(|(drains, _)| std::cmp::Reverse(*drains));
    out.extend(
        moves
            .into_iter()
            .take(config.max_concurrent_moves.saturating_sub(moving_now))
            .map(|(_, a)| a),
    );

    // Declared topics: set up with an id (the one their data was kept
    // under, where the nodes or the partition records remember it).
    for p in &input.pending {
        let spec = &p.value;
        if view.topics.contains_key(&spec.name) {
            continue;
        }
        let rf = usize::from(spec.replication_factor.max(1) as u16);
        let kept_on: Vec<i32> = view
            .nodes
            .iter()
            .filter(|n| n.info.orphans.contains_key(&spec.name))
            .map(|n| n.info.id)
            .collect();
        let id = input
            .remembered_ids
            .get(&spec.name)
            .copied()
            .or_else(|| {
                view.nodes
                    .iter()
                    .find_map(|n| n.info.orphans.get(&spec.name).copied())
            })
            .unwrap_or_else(&mut *new_id);
        // Replicas go where the kept data is, first (leading); placement
        // fills the rest. Not balanced away: moving a replica off the node
        // holding its data would start it empty.
        let Ok(base) = placement::assign(&placing, &[], spec.partitions as usize, rf) else {
            continue;
        };
        let kept: Vec<i32> = kept_on
            .iter()
            .copied()
            .filter(|id| live.iter().any(|n| n.id == *id))
            .take(rf)
            .collect();
        let a: Vec<Vec<i32>> = base
            .into_iter()
            .map(|b| {
                let mut r = kept.clone();
                for x in b {
                    if r.len() < rf && !r.contains(&x) {
                        r.push(x);
                    }
                }
                r
            })
            .collect();
        let mut adopted = spec.clone();
        adopted.id = id;
        out.push(Action::Adopt {
            spec: adopted,
            records: a.into_iter().map(PartitionRecord::new).collect(),
            expected: p.version,
        });
    }
    out
}

/// Runs the controller until the process ends (or the future is dropped:
/// the operator drops it when it stops holding the controller lease).
pub async fn run(coord: Arc<dyn Coordination>, config: ControllerConfig) {
    let started = mono_ms();
    let mut changes = coord.changes();
    let mut next_preferred = started + config.preferred_leader_interval_ms;
    let mut restarts = Restarts::default();
    loop {
        changes.borrow_and_update();
        let now = mono_ms();
        let preferred = config.preferred_leader_interval_ms > 0 && now >= next_preferred;
        if preferred {
            next_preferred = now + config.preferred_leader_interval_ms;
        }
        if let Err(e) = pass(coord.as_ref(), &config, started, preferred, &mut restarts).await {
            tracing::warn!(error = %e, "controller pass failed");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

/// One look at the cluster: read, decide, write. Returns how many changes
/// were written.
pub async fn pass(
    coord: &dyn Coordination,
    config: &ControllerConfig,
    started_ms: i64,
    preferred: bool,
    restarts: &mut Restarts,
) -> CResult<usize> {
    coord.housekeeping().await?;
    let mut input = Input::read(coord).await?;
    input.handing_over = restarts.observe(&input.view);
    // An empty set: not decided yet (the operator's first look).
    input.members = config
        .members
        .as_ref()
        .map(|m| m.borrow().clone())
        .filter(|m| !m.is_empty());
    // Leases are judged on this process's monotonic clock (when it saw
    // them renewed), never by comparing another node's clock with ours.
    let now = mono_ms();
    let grace = now < started_ms + config.lease_duration_ms;
    let alive = |id: i32| input.view.node(id).map(|n| n.alive(now)).unwrap_or(grace);
    let actions = plan(&input, config, &alive, preferred, &mut Uuid::new_v4);
    let mut written = 0;
    for a in actions {
        match write(coord, a).await {
            Ok(()) => written += 1,
            // The metadata moved on: the next pass decides again.
            Err(CoordError::Conflict(_))
            | Err(CoordError::NotFound(_))
            | Err(CoordError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Writes one decision.
pub async fn write(coord: &dyn Coordination, action: Action) -> CResult<()> {
    match action {
        Action::Partition {
            key,
            record,
            expected,
            why,
        } => {
            coord
                .update_partition(&key, record.clone(), expected)
                .await?;
            match why {
                Why::Election => {
                    tracing::info!(topic = %key.topic, partition = key.partition, leader = ?record.leader, epoch = record.leader_epoch, isr = ?record.isr, "leader elected")
                }
                Why::DeadFollowers => {
                    tracing::info!(topic = %key.topic, partition = key.partition, isr = ?record.isr, "lapsed nodes removed from the ISR")
                }
                Why::ReassignmentCompleted => {
                    tracing::info!(topic = %key.topic, partition = key.partition, replicas = ?record.replicas, leader = ?record.leader, "reassignment completed")
                }
                Why::ReplicationFactor => {
                    tracing::info!(topic = %key.topic, partition = key.partition, replicas = ?record.replicas, adding = ?record.adding, removing = ?record.removing, "replication factor changed: reassigning")
                }
                Why::Drain => {
                    tracing::info!(topic = %key.topic, partition = key.partition, adding = ?record.adding, removing = ?record.removing, "draining: replicas leave nodes outside the cluster's members")
                }
                Why::Balance => {
                    tracing::info!(topic = %key.topic, partition = key.partition, adding = ?record.adding, removing = ?record.removing, "balancing: replicas move onto new members")
                }
            }
        }
        Action::Adopt {
            spec,
            records,
            expected,
        } => {
            let (name, id, partitions) = (spec.name.clone(), spec.id, records.len());
            coord.adopt_topic(spec, records, expected).await?;
            tracing::info!(topic = %name, %id, partitions, "declared topic set up");
        }
        Action::CreatePartitions {
            topic,
            first,
            records,
        } => {
            let n = records.len();
            coord.create_partitions(&topic, first, records).await?;
            tracing::info!(topic = %topic, first, added = n, "partitions placed");
        }
        Action::Remove { name, id } => {
            coord.remove_topic(&name, id).await?;
            tracing::info!(topic = %name, %id, "deleted topic removed: every node dropped its data");
        }
        Action::CreateInternalTopic { spec, records } => {
            let (partitions, rf) = (spec.partitions, spec.replication_factor);
            let name = spec.name.clone();
            coord.create_topic(spec, records).await?;
            tracing::info!(topic = %name, partitions, replication_factor = rf, "internal topic created");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InMemory, NodeInfo, NodeLease};

    fn info(id: i32) -> NodeInfo {
        NodeInfo {
            id,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092,
            replication_addr: "127.0.0.1:9093".into(),
            rack: None,
            listeners: Default::default(),
            orphans: Default::default(),
            incarnation: Uuid::nil(),
            leaving: false,
        }
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            expected_nodes: 3,
            offsets_partitions: 1,
            offsets_replication_factor: 1,
            transaction_state_partitions: 1,
            lease_duration_ms: 10_000,
            preferred_leader_interval_ms: 0,
            max_concurrent_moves: 4,
            members: None,
        }
    }

    fn lease(id: i32) -> NodeLease {
        NodeLease {
            info: info(id),
            renewed_ms: 0,
            duration_ms: 10_000,
            seen_mono_ms: 0,
        }
    }

    /// A view of `nodes` holding topic `t` with these partitions.
    fn input(nodes: &[i32], spec: TopicSpec, records: Vec<PartitionRecord>) -> Input {
        let mut view = View {
            nodes: nodes.iter().map(|n| lease(*n)).collect(),
            ..Default::default()
        };
        for name in [OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC] {
            view.topics.insert(
                name.into(),
                Versioned {
                    value: TopicSpec::new(name, Uuid::nil(), 1, 1, BTreeMap::new()),
                    version: 1,
                },
            );
        }
        view.records.insert(
            spec.name.clone(),
            records
                .into_iter()
                .map(|r| {
                    Some(Versioned {
                        value: r,
                        version: 7,
                    })
                })
                .collect(),
        );
        view.topics.insert(
            spec.name.clone(),
            Versioned {
                value: spec,
                version: 3,
            },
        );
        Input {
            view,
            ..Default::default()
        }
    }

    fn topic(partitions: i32, rf: i16) -> TopicSpec {
        TopicSpec::new("t", Uuid::from_u128(1), partitions, rf, BTreeMap::new())
    }

    fn run_plan(input: &Input, alive: &dyn Fn(i32) -> bool) -> Vec<Action> {
        let mut n = 100u128;
        plan(input, &config(), alive, false, &mut || {
            n += 1;
            Uuid::from_u128(n)
        })
    }

    #[test]
    fn a_lapsed_leader_is_replaced_by_an_in_sync_replica() {
        let i = input(
            &[1, 2, 3],
            topic(1, 3),
            vec![PartitionRecord::new(vec![1, 2, 3])],
        );
        let a = run_plan(&i, &|n| n != 1);
        let [Action::Partition {
            record,
            why,
            expected,
            ..
        }] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!((record.leader, record.leader_epoch), (Some(2), 1));
        assert_eq!((*why, *expected), (Why::Election, 7));
        assert!(
            run_plan(&i, &|_| true).is_empty(),
            "a healthy cluster: nothing"
        );
    }

    #[test]
    fn raised_partitions_are_placed_and_a_new_rf_reassigns() {
        let i = input(&[1, 2, 3], topic(3, 1), vec![PartitionRecord::new(vec![1])]);
        let a = run_plan(&i, &|_| true);
        let [Action::CreatePartitions { first, records, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!((*first, records.len()), (1, 2));
        // RF 1 -> 3: the partition adds two replicas, keeping the first.
        let i = input(&[1, 2, 3], topic(1, 3), vec![PartitionRecord::new(vec![1])]);
        let a = run_plan(&i, &|_| true);
        let [Action::Partition { record, why, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(*why, Why::ReplicationFactor);
        assert_eq!(record.replicas[0], 1);
        assert_eq!(record.adding.len(), 2);
        // RF 3 -> 2: one replica leaves.
        let i = input(
            &[1, 2, 3],
            topic(1, 2),
            vec![PartitionRecord::new(vec![1, 2, 3])],
        );
        let a = run_plan(&i, &|_| true);
        let [Action::Partition { record, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(record.replicas.len(), 2);
        // Not while a move is already running.
        let moving = reassign::start(&PartitionRecord::new(vec![1]), &[1, 2])
            .unwrap()
            .unwrap();
        let i = input(&[1, 2, 3], topic(1, 3), vec![moving]);
        assert!(run_plan(&i, &|_| true).is_empty());
    }

    #[test]
    fn a_deleted_topic_goes_once_every_holder_dropped_its_data() {
        let mut t = topic(1, 2);
        t.deleting = true;
        t.dropped_on = vec![1];
        let i = input(
            &[1, 2, 3],
            t.clone(),
            vec![PartitionRecord::new(vec![1, 2])],
        );
        assert!(run_plan(&i, &|_| true).is_empty(), "node 2 has not dropped");
        t.dropped_on = vec![1, 2];
        let i = input(&[1, 2, 3], t, vec![PartitionRecord::new(vec![1, 2])]);
        let a = run_plan(&i, &|_| true);
        assert_eq!(
            a,
            vec![Action::Remove {
                name: "t".into(),
                id: Uuid::from_u128(1)
            }]
        );
    }

    #[test]
    fn a_restarted_leader_hands_its_partitions_over_once() {
        let mut i = input(
            &[1, 2, 3],
            topic(2, 3),
            vec![
                PartitionRecord::new(vec![1, 2, 3]),
                PartitionRecord::new(vec![2, 3, 1]),
            ],
        );
        let mut restarts = Restarts::default();
        i.view.nodes[0].info.incarnation = Uuid::from_u128(5);
        assert!(
            restarts.observe(&i.view).is_empty(),
            "first sight is no restart"
        );
        i.view.nodes[0].info.incarnation = Uuid::from_u128(6);
        i.handing_over = restarts.observe(&i.view);
        assert_eq!(i.handing_over.len(), 1, "only what node 1 led");
        let a = run_plan(&i, &|_| true);
        match &a[..] {
            [Action::Partition {
                key,
                record,
                why: Why::Election,
                ..
            }] => {
                assert_eq!(
                    (key.partition, record.leader, record.leader_epoch),
                    (0, Some(2), 1)
                );
            }
            other => panic!("{other:?}"),
        }
        // Once the epoch moved, nothing more.
        i.view.records.get_mut("t").unwrap()[0] = Some(Versioned {
            value: match &a[0] {
                Action::Partition { record, .. } => record.clone(),
                _ => unreachable!(),
            },
            version: 8,
        });
        assert!(restarts.observe(&i.view).is_empty());
    }

    #[test]
    fn a_leaving_node_hands_its_leaderships_over_and_is_elected_nowhere() {
        let mut i = input(
            &[1, 2, 3],
            topic(3, 3),
            vec![
                PartitionRecord::new(vec![1, 2, 3]),
                PartitionRecord::new(vec![2, 1, 3]),
                PartitionRecord::new(vec![3, 1, 2]),
            ],
        );
        i.view.nodes[0].info.leaving = true;
        let a = run_plan(&i, &|_| true);
        // Partition 0 (led by node 1): node 2 leads it next. Partitions 1
        // and 2 keep their leaders; node 1 leaves their ISRs.
        let changed: Vec<(i32, Option<i32>, i32, Vec<i32>)> = a
            .iter()
            .map(|x| match x {
                Action::Partition { key, record, .. } => (
                    key.partition,
                    record.leader,
                    record.leader_epoch,
                    record.isr.clone(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            changed,
            [
                (0, Some(2), 1, vec![2, 3]),
                (1, Some(2), 0, vec![2, 3]),
                (2, Some(3), 0, vec![3, 2]),
            ]
        );
        // A preferred-leader pass does not move leadership back to it.
        let mut n = 0u128;
        let a = plan(&i, &config(), &|_| true, true, &mut || {
            n += 1;
            Uuid::from_u128(n)
        });
        assert!(
            a.iter().all(
                |x| !matches!(x, Action::Partition { record, .. } if record.leader == Some(1))
            ),
            "{a:?}"
        );
        // When nothing else can lead, it still may.
        let mut alone = input(&[1], topic(1, 1), vec![PartitionRecord::new(vec![1])]);
        alone.view.nodes[0].info.leaving = true;
        assert!(run_plan(&alone, &|_| true).is_empty());
    }

    #[test]
    fn a_declared_topic_takes_the_id_its_kept_data_has() {
        let mut i = input(&[1, 2, 3], topic(1, 1), vec![PartitionRecord::new(vec![1])]);
        i.view.nodes[1]
            .info
            .orphans
            .insert("again".into(), Uuid::from_u128(42));
        i.pending.push(Versioned {
            value: TopicSpec::new("again", Uuid::nil(), 2, 1, BTreeMap::new()),
            version: 9,
        });
        i.pending.push(Versioned {
            value: TopicSpec::new("fresh", Uuid::nil(), 1, 1, BTreeMap::new()),
            version: 10,
        });
        let a = run_plan(&i, &|_| true);
        let adopted: Vec<(String, Uuid, Vec<Vec<i32>>)> = a
            .iter()
            .filter_map(|x| match x {
                Action::Adopt { spec, records, .. } => Some((
                    spec.name.clone(),
                    spec.id,
                    records.iter().map(|r| r.replicas.clone()).collect(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(adopted[0].0, "again");
        assert_eq!(adopted[0].1, Uuid::from_u128(42), "the kept id");
        assert_eq!(adopted[0].2, vec![vec![2], vec![2]], "where the data is");
        assert_eq!(adopted[1].1, Uuid::from_u128(101), "a new id");
    }

    #[tokio::test]
    async fn a_leader_whose_wall_clock_is_behind_keeps_its_leadership() {
        let c = InMemory::new();
        let wall = 1_800_000_000_000;
        // Node 1 renews on time, but its wall clock is 11 s behind ours.
        c.renew_node(&info(1), wall - 11_000, 10_000).await.unwrap();
        c.renew_node(&info(2), wall, 10_000).await.unwrap();
        let spec = TopicSpec::new("t", Uuid::new_v4(), 1, 2, BTreeMap::new());
        c.create_topic(spec, vec![PartitionRecord::new(vec![1, 2])])
            .await
            .unwrap();
        // No start-up grace: liveness alone decides.
        let started = mono_ms() - 60_000;
        pass(&c, &config(), started, false, &mut Restarts::default())
            .await
            .unwrap();
        let rec = c
            .partition(&PartitionKey::new("t", 0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.value.leader, Some(1), "a healthy leader was replaced");
        assert_eq!(rec.value.leader_epoch, 0);
    }

    fn with_members(mut i: Input, members: &[i32]) -> Input {
        i.members = Some(members.iter().copied().collect());
        i
    }

    fn partition_actions(a: &[Action]) -> Vec<(i32, &PartitionRecord, Why)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Partition {
                    key, record, why, ..
                } => Some((key.partition, record, *why)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn scaling_down_hands_leadership_over_then_drains_the_highest_node_first() {
        let placed = placement::assign(
            &(0..5).map(placement::Node::new).collect::<Vec<_>>(),
            &[],
            10,
            3,
        )
        .unwrap();
        let records: Vec<PartitionRecord> =
            placed.iter().cloned().map(PartitionRecord::new).collect();
        let i = with_members(
            input(&[0, 1, 2, 3, 4], topic(10, 3), records.clone()),
            &[0, 1, 2],
        );
        let a = run_plan(&i, &|_| true);
        let acts = partition_actions(&a);
        // Partitions led by 3 or 4 elect a member first, keeping every
        // replica in sync: leadership leaves before the replicas do (their
        // moves start on a later pass).
        for (p, r) in records.iter().enumerate() {
            if r.leader.is_some_and(|l| l >= 3) {
                let mine: Vec<_> = acts.iter().filter(|(q, _, _)| *q == p as i32).collect();
                let [(_, rec, why)] = mine.as_slice() else {
                    panic!("{mine:?}")
                };
                assert_eq!(*why, Why::Election);
                assert!(rec.leader.is_some_and(|l| l < 3), "{rec:?}");
                assert_eq!(rec.isr, r.isr);
            }
        }
        // The rest drains, node 4 first, four at a time.
        let drains: Vec<&(i32, &PartitionRecord, Why)> =
            acts.iter().filter(|(_, _, w)| *w == Why::Drain).collect();
        assert!(!drains.is_empty() && drains.len() <= 4, "{acts:?}");
        assert!(drains[0].1.removing.contains(&4), "{:?}", drains[0]);
        for (_, rec, _) in &drains {
            assert!(rec.adding.iter().all(|n| *n < 3));
            // The old replicas stay in the ISR until the new ones catch up.
            assert!(rec.removing.iter().all(|n| rec.isr.contains(n)));
        }
        // With four moves under way, no more start.
        let mut moving = records.clone();
        for (p, rec, _) in &drains {
            moving[*p as usize] = (*rec).clone();
        }
        let i = with_members(input(&[0, 1, 2, 3, 4], topic(10, 3), moving), &[0, 1, 2]);
        let a = run_plan(&i, &|_| true);
        assert!(
            partition_actions(&a)
                .iter()
                .all(|(_, _, w)| *w != Why::Drain),
            "{a:?}"
        );
    }

    #[test]
    fn new_members_get_their_share_once_every_member_is_up() {
        let placed = placement::assign(
            &(0..3).map(placement::Node::new).collect::<Vec<_>>(),
            &[],
            6,
            3,
        )
        .unwrap();
        let records: Vec<PartitionRecord> =
            placed.iter().cloned().map(PartitionRecord::new).collect();
        // Node 4 is a member but has not come up: nothing moves yet.
        let i = with_members(
            input(&[0, 1, 2, 3], topic(6, 3), records.clone()),
            &[0, 1, 2, 3, 4],
        );
        assert!(run_plan(&i, &|_| true).is_empty());
        let i = with_members(
            input(&[0, 1, 2, 3, 4], topic(6, 3), records.clone()),
            &[0, 1, 2, 3, 4],
        );
        let a = run_plan(&i, &|_| true);
        let acts = partition_actions(&a);
        assert!(acts.iter().all(|(_, _, w)| *w == Why::Balance), "{acts:?}");
        // 18 replicas over 5 nodes: 4, 4, 4, 3, 3. Each new node takes 3,
        // nothing moves between the old ones.
        let onto = |n: i32| {
            acts.iter()
                .filter(|(_, r, _)| r.adding.contains(&n))
                .count()
        };
        assert_eq!((onto(3), onto(4)), (3, 3), "{acts:?}");
        assert!(acts
            .iter()
            .all(|(_, r, _)| r.adding.iter().all(|n| *n >= 3)));
        // Without members (sluice dev) nothing is balanced.
        let i = input(&[0, 1, 2, 3, 4], topic(6, 3), records);
        assert!(run_plan(&i, &|_| true).is_empty());
    }
}
