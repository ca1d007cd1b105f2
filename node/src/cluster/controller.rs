//! The controller: one per cluster, deciding what no single node may decide
//! for itself. It elects leaders when a leader's lease lapses (clean, or
//! unclean where a topic allows it), removes followers on lapsed nodes from
//! ISRs, completes reassignments once their new replicas are in sync, moves
//! leadership back to preferred replicas periodically, and creates the
//! offsets topic once enough nodes are up. The rules are the
//! pure functions of `sluice_api`; this loop reads the metadata and writes
//! their answers by compare-and-swap, so a stale controller changes nothing.
//!
//! `sluice dev` runs it in process; the operator runs the same rules later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_api::election::{self, ElectionOptions};
use sluice_api::{placement, reassign};
use uuid::Uuid;

use crate::coord::mono_ms;
use crate::coord::{CResult, CoordError, Coordination, PartitionRecord, TopicSpec};
use crate::group::OFFSETS_TOPIC;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Nodes the cluster is meant to have (the offsets topic waits for
    /// `min(offsets_replication_factor, expected_nodes)` of them).
    pub expected_nodes: usize,
    pub offsets_partitions: i32,
    pub offsets_replication_factor: i16,
    /// Nodes without a lease count as alive for one lease duration after the
    /// controller starts, so a restarting cluster keeps its leaders.
    pub lease_duration_ms: i64,
    /// How often leadership moves back to preferred replicas that are in
    /// sync (`leader.imbalance.check.interval.seconds`); 0 disables it.
    pub preferred_leader_interval_ms: i64,
}

/// Runs the controller until the process ends.
pub async fn run(coord: Arc<dyn Coordination>, config: ControllerConfig) {
    let started = mono_ms();
    let mut changes = coord.changes();
    let mut next_preferred = started + config.preferred_leader_interval_ms;
    loop {
        changes.borrow_and_update();
        let now = mono_ms();
        let preferred = config.preferred_leader_interval_ms > 0 && now >= next_preferred;
        if preferred {
            next_preferred = now + config.preferred_leader_interval_ms;
        }
        if let Err(e) = pass(coord.as_ref(), &config, started, preferred).await {
            tracing::warn!(error = %e, "controller pass failed");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

/// One look at the cluster: offsets topic, elections, ISR cleanup.
pub async fn pass(
    coord: &dyn Coordination,
    config: &ControllerConfig,
    started_ms: i64,
    preferred: bool,
) -> CResult<usize> {
    // Leases are judged on this process's monotonic clock (when it saw
    // them renewed), never by comparing another node's clock with ours.
    let now = mono_ms();
    let nodes = coord.nodes().await?;
    let grace = now < started_ms + config.lease_duration_ms;
    let alive = |id: i32| {
        nodes
            .iter()
            .find(|n| n.info.id == id)
            .map(|n| n.alive(now))
            .unwrap_or(grace)
    };
    let topics = coord.topics().await?;
    if !topics.iter().any(|t| t.value.name == OFFSETS_TOPIC) {
        create_offsets_topic(coord, config, &nodes, now).await?;
    }
    // A topic's own setting, else the cluster-wide dynamic default.
    let unclean_default = coord
        .broker_configs()
        .await?
        .iter()
        .find(|c| c.value.node.is_none())
        .and_then(|c| {
            c.value
                .configs
                .get("unclean.leader.election.enable")
                .cloned()
        })
        .is_some_and(|v| v == "true");
    let unclean: HashMap<&str, bool> = topics
        .iter()
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
    let mut changed = 0;
    for (key, rec) in coord.partitions().await? {
        let opts = ElectionOptions {
            unclean: unclean.get(key.topic.as_str()).copied().unwrap_or(false),
            preferred,
        };
        let Some(next) = election::elect(&rec.value, alive, opts)
            .or_else(|| election::without_dead_followers(&rec.value, alive))
            .or_else(|| reassign::complete(&rec.value))
        else {
            continue;
        };
        match coord
            .update_partition(&key, next.clone(), rec.version)
            .await
        {
            Ok(_) => {
                changed += 1;
                if next.replicas != rec.value.replicas {
                    tracing::info!(topic = %key.topic, partition = key.partition, replicas = ?next.replicas, leader = ?next.leader, "reassignment completed");
                } else if next.leader != rec.value.leader {
                    tracing::info!(topic = %key.topic, partition = key.partition, from = ?rec.value.leader, to = ?next.leader, epoch = next.leader_epoch, isr = ?next.isr, "leader elected");
                } else {
                    tracing::info!(topic = %key.topic, partition = key.partition, isr = ?next.isr, "lapsed nodes removed from the ISR");
                }
            }
            Err(CoordError::Conflict(_)) | Err(CoordError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}

async fn create_offsets_topic(
    coord: &dyn Coordination,
    config: &ControllerConfig,
    nodes: &[crate::coord::NodeLease],
    now: i64,
) -> CResult<()> {
    let live: Vec<placement::Node> = nodes
        .iter()
        .filter(|n| n.alive(now))
        .map(|n| placement::Node {
            id: n.info.id,
            rack: n.info.rack.clone(),
        })
        .collect();
    let rf = usize::from(config.offsets_replication_factor.max(1) as u16)
        .min(config.expected_nodes.max(1));
    if live.len() < rf {
        return Ok(());
    }
    let assignment = placement::assign(&live, &[], config.offsets_partitions as usize, rf)
        .map_err(|e| CoordError::Backend(e.to_string()))?;
    // Committed offsets never age out with the log; they go when their group
    // does (offset retention, tombstones), and compaction keeps the topic to
    // one record per live key.
    let configs: BTreeMap<String, String> = [("retention.ms", "-1"), ("cleanup.policy", "compact")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = TopicSpec {
        name: OFFSETS_TOPIC.to_string(),
        id: Uuid::new_v4(),
        partitions: config.offsets_partitions,
        replication_factor: rf as i16,
        configs,
    };
    match coord
        .create_topic(
            spec,
            assignment.into_iter().map(PartitionRecord::new).collect(),
        )
        .await
    {
        Ok(()) => {
            tracing::info!(
                partitions = config.offsets_partitions,
                replication_factor = rf,
                "offsets topic created"
            );
            Ok(())
        }
        Err(CoordError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::{InMemory, NodeInfo, PartitionKey};

    fn info(id: i32) -> NodeInfo {
        NodeInfo {
            id,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092,
            replication_addr: "127.0.0.1:9093".into(),
            rack: None,
        }
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            expected_nodes: 2,
            offsets_partitions: 1,
            offsets_replication_factor: 1,
            lease_duration_ms: 10_000,
            preferred_leader_interval_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_leader_whose_wall_clock_is_behind_keeps_its_leadership() {
        let c = InMemory::new();
        let wall = crate::broker::now_ms();
        // Node 1 renews on time, but its wall clock is 11 s behind ours.
        c.renew_node(&info(1), wall - 11_000, 10_000).await.unwrap();
        c.renew_node(&info(2), wall, 10_000).await.unwrap();
        let spec = TopicSpec {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: 1,
            replication_factor: 2,
            configs: BTreeMap::new(),
        };
        c.create_topic(spec, vec![PartitionRecord::new(vec![1, 2])])
            .await
            .unwrap();
        // No start-up grace: liveness alone decides.
        let started = mono_ms() - 60_000;
        pass(&c, &config(), started, false).await.unwrap();
        let parts = c.partitions().await.unwrap();
        let (_, rec) = parts
            .iter()
            .find(|(k, _)| *k == PartitionKey::new("t", 0))
            .unwrap();
        assert_eq!(rec.value.leader, Some(1), "a healthy leader was replaced");
        assert_eq!(rec.value.leader_epoch, 0);
    }
}
