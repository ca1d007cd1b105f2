//! Replication, ISR and leader election across nodes: `sluice dev --nodes 3`
//! (three nodes in one process sharing in-memory coordination), driven with
//! Kafka requests encoded by `kafka-protocol`, with nodes stopped and
//! restarted through the dev cluster's control input.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{batch, create_topic, idempotent_batch, wait_for, Client, Cluster};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;

/// Short leases and lag so failures are noticed within seconds.
const FAST: &[&str] = &[
    "--lease-duration-ms",
    "2000",
    "--replica-lag-time-max-ms",
    "2000",
];

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}
fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

fn produce(c: &mut Client, topic: &str, records: Bytes, acks: i16) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let r = c.send(&req, 9);
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch(c: &mut Client, topic: &str, offset: i64, epoch: i32) -> fetch_response::PartitionData {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    c.send(&req, 12).responses[0].partitions[0].clone()
}

fn count_records(records: &Option<Bytes>) -> usize {
    let mut b = records.clone().unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .iter()
        .map(|s| s.records.len())
        .sum()
}

/// (leader, epoch, replicas, isr, offline) of partition 0, as `c` reports it.
fn partition0(c: &mut Client, topic: &str) -> (i32, i32, Vec<i32>, Vec<i32>, Vec<i32>) {
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(tn(topic)))
    ]));
    let r = c.send(&req, 12);
    let p = &r.topics[0].partitions[0];
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    (
        p.leader_id.0,
        p.leader_epoch,
        ids(&p.replica_nodes),
        ids(&p.isr_nodes),
        ids(&p.offline_replicas),
    )
}

#[test]
fn leaders_fail_over_and_replicas_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(
        create_topic(&mut c0, "t", 1, 3, &[("min.insync.replicas", "2")]),
        0
    );
    // Every node reports the same placement once the ISR is complete.
    let (leader, epoch, replicas, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "t");
        (p.3.len() == 3).then_some(p)
    });
    assert_eq!(replicas.len(), 3);
    let leader = leader as usize;
    let follower = (leader + 1) % 3;

    let mut cl = cluster.client(leader);
    assert_eq!(
        produce(&mut cl, "t", batch(10, "a", Compression::None), -1),
        (0, 0)
    );
    // A follower refuses clients with NOT_LEADER_OR_FOLLOWER, for writes
    // and reads alike.
    let mut cf = cluster.client(follower);
    let (code, _) = produce(&mut cf, "t", batch(1, "x", Compression::None), -1);
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());
    assert_eq!(
        fetch(&mut cf, "t", 0, -1).error_code,
        ResponseError::NotLeaderOrFollower.code()
    );
    let d = fetch(&mut cl, "t", 0, epoch);
    assert_eq!((d.error_code, d.high_watermark), (0, 10));
    assert_eq!(count_records(&d.records), 10);

    // The leader is lost: a live in-sync replica takes over at a new epoch.
    cluster.stop(leader);
    let (new_leader, new_epoch, _, isr, offline) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut cf, "t");
        (p.0 >= 0 && p.0 != leader as i32).then_some(p)
    });
    assert_eq!(new_epoch, epoch + 1);
    assert!(!isr.contains(&(leader as i32)), "isr {isr:?}");
    assert_eq!(offline, vec![leader as i32]);
    let mut cn = cluster.client(new_leader as usize);
    // What was acknowledged with acks=all is all there.
    let d = wait_for(Duration::from_secs(10), || {
        let d = fetch(&mut cn, "t", 0, new_epoch);
        (d.error_code == 0 && d.high_watermark == 10).then_some(d)
    });
    assert_eq!(count_records(&d.records), 10);
    // A client still at the old epoch is told its view is stale.
    assert_eq!(
        fetch(&mut cn, "t", 0, epoch).error_code,
        ResponseError::FencedLeaderEpoch.code()
    );
    assert_eq!(
        fetch(&mut cn, "t", 0, new_epoch + 1).error_code,
        ResponseError::UnknownLeaderEpoch.code()
    );
    // Two of three in sync: acks=all goes on.
    assert_eq!(
        produce(&mut cn, "t", batch(5, "b", Compression::None), -1),
        (0, 10)
    );

    // The old leader returns as a follower, catches up, and rejoins the ISR.
    cluster.start_node(leader);
    let (_, _, _, isr, offline) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut cn, "t");
        (p.3.len() == 3).then_some(p)
    });
    assert!(isr.contains(&(leader as i32)) && offline.is_empty());
    let mut back = cluster.client(leader);
    let (code, _) = produce(&mut back, "t", batch(1, "x", Compression::None), -1);
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());
    assert_eq!(
        produce(&mut cn, "t", batch(5, "c", Compression::None), -1),
        (0, 15)
    );
    let d = fetch(&mut cn, "t", 0, -1);
    assert_eq!((d.high_watermark, count_records(&d.records)), (20, 20));
}

#[test]
fn acks_all_needs_min_insync_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(
        create_topic(&mut c0, "m", 1, 3, &[("min.insync.replicas", "2")]),
        0
    );
    let (leader, _, _, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "m");
        (p.3.len() == 3).then_some(p)
    });
    let leader = leader as usize;
    let mut cl = cluster.client(leader);
    assert_eq!(
        produce(&mut cl, "m", batch(3, "a", Compression::None), -1).0,
        0
    );
    // Both followers go: once their leases lapse the ISR is the leader alone.
    for f in (0..3).filter(|n| *n != leader) {
        cluster.stop(f);
    }
    wait_for(Duration::from_secs(20), || {
        (partition0(&mut cl, "m").3 == vec![leader as i32]).then_some(())
    });
    let (code, _) = produce(&mut cl, "m", batch(1, "x", Compression::None), -1);
    assert_eq!(code, ResponseError::NotEnoughReplicas.code());
    // acks=1 does not ask for replicas; the leader alone commits it.
    let (code, offset) = produce(&mut cl, "m", batch(1, "y", Compression::None), 1);
    assert_eq!((code, offset), (0, 3));
    // The refused batch was never written.
    let d = fetch(&mut cl, "m", 0, -1);
    assert_eq!((d.high_watermark, count_records(&d.records)), (4, 4));
}

/// A batch refused before it was written (too few in-sync replicas) leaves
/// a gap in its producer's sequences; the batch after it, arriving once the
/// replicas are back, is answered with the same retriable error rather than
/// OUT_OF_ORDER_SEQUENCE_NUMBER, on which librdkafka bumps its epoch and
/// sends again batches that may already be written.
#[test]
fn the_batch_after_a_refused_one_is_refused_alike_not_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(
        create_topic(&mut c0, "g", 1, 3, &[("min.insync.replicas", "2")]),
        0
    );
    let (leader, _, _, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "g");
        (p.3.len() == 3).then_some(p)
    });
    let leader = leader as usize;
    let mut cl = cluster.client(leader);
    let pid = 4242;
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(1, "a", pid, 0, 0), -1),
        (0, 0)
    );
    let followers: Vec<usize> = (0..3).filter(|n| *n != leader).collect();
    for f in &followers {
        cluster.stop(*f);
    }
    wait_for(Duration::from_secs(20), || {
        (partition0(&mut cl, "g").3 == vec![leader as i32]).then_some(())
    });
    let refused = ResponseError::NotEnoughReplicas.code();
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(2, "b", pid, 0, 1), -1).0,
        refused
    );
    for f in &followers {
        cluster.start_node(*f);
    }
    wait_for(Duration::from_secs(30), || {
        (partition0(&mut cl, "g").3.len() == 3).then_some(())
    });
    // The replicas are back; sequence 3 still follows the refused 1..=2.
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(1, "c", pid, 0, 3), -1).0,
        refused
    );
    // Retried in order, both are written once.
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(2, "b", pid, 0, 1), -1),
        (0, 1)
    );
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(1, "c", pid, 0, 3), -1),
        (0, 3)
    );
    // A gap no refusal explains is out of order, as on Kafka.
    assert_eq!(
        produce(&mut cl, "g", idempotent_batch(1, "d", pid, 0, 9), -1).0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    let d = fetch(&mut cl, "g", 0, -1);
    assert_eq!((d.high_watermark, count_records(&d.records)), (4, 4));
}

#[test]
fn steady_state_coordination_writes_do_not_grow_with_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let mut c0 = cluster.client(0);
    let window = Duration::from_secs(4);
    let mut rates = vec![];
    for (topic, partitions) in [("small", 10), ("large", 990)] {
        assert_eq!(create_topic(&mut c0, topic, partitions, 3, &[]), 0);
        // Settled: every partition's ISR complete (no ISR changes pending).
        wait_for(Duration::from_secs(60), || {
            let req = MetadataRequest::default().with_topics(None);
            let r = c0.send(&req, 12);
            r.topics
                .iter()
                .all(|t| t.partitions.iter().all(|p| p.isr_nodes.len() == 3))
                .then_some(())
        });
        let before = cluster.writes();
        std::thread::sleep(window);
        let writes = cluster.writes() - before;
        rates.push(writes);
    }
    // Three leases renewed every 2 s: about 6 writes in 4 s whatever the
    // partition count (1,000 partitions here in the second window).
    assert!(
        rates[0] <= 9 && rates[1] <= 9,
        "writes per window {rates:?}"
    );
}

#[test]
fn an_isolated_leader_stops_writing_before_its_lease_can_lapse() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        3,
        &[
            "--lease-duration-ms",
            "4000",
            "--replica-lag-time-max-ms",
            "2000",
        ],
    );
    let mut c0 = cluster.client(0);
    assert_eq!(
        create_topic(&mut c0, "f", 1, 3, &[("min.insync.replicas", "2")]),
        0
    );
    let (leader, epoch, _, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "f");
        (p.3.len() == 3).then_some(p)
    });
    let leader = leader as usize;
    let other = (leader + 1) % 3;
    let mut cl = cluster.client(leader);
    let mut co = cluster.client(other);
    assert_eq!(
        produce(&mut cl, "f", batch(4, "a", Compression::None), -1),
        (0, 0)
    );
    // Cut off from the metadata, the leader cannot renew its lease. It
    // stops taking writes on its own...
    let a = cluster.control(&format!("isolate {leader}"));
    assert_eq!(a, format!("isolated {leader}"));
    let mut accepted = 0;
    wait_for(Duration::from_secs(10), || {
        let (code, _) = produce(&mut cl, "f", batch(1, "z", Compression::None), 1);
        accepted += i64::from(code == 0);
        (code == ResponseError::NotLeaderOrFollower.code()).then_some(())
    });
    // ...while the rest of the cluster still has it as the leader: its
    // lease has not lapsed, so no one else can be leading yet.
    let (still, still_epoch, _, _, _) = partition0(&mut co, "f");
    assert_eq!((still as usize, still_epoch), (leader, epoch));
    // Once the lease lapses, another replica is elected and takes writes.
    let (new_leader, new_epoch, _, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut co, "f");
        (p.0 >= 0 && p.0 as usize != leader).then_some(p)
    });
    assert_eq!(new_epoch, epoch + 1);
    let mut cn = cluster.client(new_leader as usize);
    let (code, _) = wait_for(Duration::from_secs(10), || {
        let r = produce(&mut cn, "f", batch(2, "b", Compression::None), -1);
        (r.0 != ResponseError::NotLeaderOrFollower.code()).then_some(r)
    });
    assert_eq!(code, 0);
    // Reconnected, the old leader learns it follows now and rejoins the ISR.
    let a = cluster.control(&format!("heal {leader}"));
    assert_eq!(a, format!("healed {leader}"));
    wait_for(Duration::from_secs(20), || {
        (partition0(&mut cn, "f").3.len() == 3).then_some(())
    });
    let (code, _) = produce(&mut cl, "f", batch(1, "z", Compression::None), 1);
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());
    // Every acknowledged record (those the old leader took before fencing
    // itself had reached its followers), and nothing it refused.
    let total = 4 + accepted + 2;
    let d = fetch(&mut cn, "f", 0, -1);
    assert_eq!(d.high_watermark, total);
    assert_eq!(count_records(&d.records) as i64, total);
}

fn elect(c: &mut Client, topic: Option<&str>, election_type: i8, version: i16) -> Vec<(i32, i16)> {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    let req = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_timeout_ms(10_000)
        .with_topic_partitions(topic.map(|t| {
            vec![TopicPartitions::default()
                .with_topic(tn(t))
                .with_partitions(vec![0])]
        }));
    let r = c.send(&req, version);
    r.replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(|p| (p.partition_id, p.error_code))
        })
        .collect()
}

#[test]
fn elect_leaders_moves_leadership_back_and_elects_uncleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(create_topic(&mut c0, "e", 1, 3, &[]), 0);
    let (preferred, epoch, replicas, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "e");
        (p.3.len() == 3).then_some(p)
    });
    assert_eq!(
        preferred, replicas[0],
        "the first replica leads a new partition"
    );
    let other = (0..3).find(|n| *n != preferred as usize).unwrap();
    let mut co = cluster.client(other);
    // That node knows the partition too (it applies the metadata on its own).
    wait_for(Duration::from_secs(20), || {
        let req = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(tn("e"))),
        ]));
        let r = co.send(&req, 12);
        r.topics[0]
            .partitions
            .first()
            .is_some_and(|p| p.isr_nodes.len() == 3)
            .then_some(())
    });
    // Leading already: nothing to do.
    for v in 0..=2 {
        assert_eq!(
            elect(&mut co, Some("e"), 0, v),
            vec![(0, ResponseError::ElectionNotNeeded.code())],
            "v{v}"
        );
    }
    // Leadership moves away when the preferred replica stops, and stays
    // away when it returns...
    cluster.stop(preferred as usize);
    wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut co, "e");
        (p.0 >= 0 && p.0 != preferred).then_some(())
    });
    cluster.start_node(preferred as usize);
    let (moved_to, moved_epoch, _, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut co, "e");
        (p.3.len() == 3).then_some(p)
    });
    assert_ne!(moved_to, preferred);
    assert_eq!(moved_epoch, epoch + 1);
    // ...until a preferred election brings it back, at a new epoch.
    assert_eq!(elect(&mut co, Some("e"), 0, 2), vec![(0, 0)]);
    let (leader, e, _, _, _) = partition0(&mut co, "e");
    assert_eq!((leader, e), (preferred, epoch + 2));
    // All partitions: only those that needed an election are reported.
    assert!(elect(&mut co, None, 0, 2).is_empty());
    // Unknown partitions and election types are refused.
    assert_eq!(
        elect(&mut co, Some("nope"), 0, 2),
        vec![(0, ResponseError::UnknownTopicOrPartition.code())]
    );
    let r = co.send(&ElectLeadersRequest::default().with_election_type(7), 2);
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    // An unclean election needs an offline partition: a healthy one answers
    // ELECTION_NOT_NEEDED.
    assert_eq!(
        elect(&mut co, Some("e"), 1, 2),
        vec![(0, ResponseError::ElectionNotNeeded.code())]
    );
}

#[test]
fn an_unclean_election_brings_an_offline_partition_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(create_topic(&mut c0, "u", 1, 2, &[]), 0);
    let (leader, _, replicas, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "u");
        (p.3.len() == 2).then_some(p)
    });
    let follower = *replicas.iter().find(|r| **r != leader).unwrap();
    let bystander = (0..3).find(|n| !replicas.contains(&(*n as i32))).unwrap();
    let mut cb = cluster.client(bystander);
    // The follower goes first (it leaves the ISR), then the leader: no
    // in-sync replica is left, the partition is offline.
    cluster.stop(follower as usize);
    wait_for(Duration::from_secs(20), || {
        (partition0(&mut cb, "u").3 == vec![leader]).then_some(())
    });
    cluster.stop(leader as usize);
    wait_for(Duration::from_secs(20), || {
        (partition0(&mut cb, "u").0 == -1).then_some(())
    });
    // The follower returns, out of sync: a clean election cannot use it.
    cluster.start_node(follower as usize);
    assert_eq!(
        elect(&mut cb, Some("u"), 0, 2),
        vec![(0, ResponseError::PreferredLeaderNotAvailable.code())]
    );
    assert_eq!(partition0(&mut cb, "u").0, -1);
    // An unclean election does, with the ISR reset to it.
    assert_eq!(elect(&mut cb, Some("u"), 1, 2), vec![(0, 0)]);
    let (new_leader, _, _, isr, _) = partition0(&mut cb, "u");
    assert_eq!((new_leader, isr), (follower, vec![follower]));
}

fn reassign(c: &mut Client, topic: &str, target: Option<Vec<i32>>) -> i16 {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_allow_replication_factor_change(true)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(
                    target.map(|t| t.into_iter().map(BrokerId).collect()),
                )])]);
    let r = c.send(&req, 1);
    r.responses[0].partitions[0].error_code
}

fn ongoing(c: &mut Client) -> Vec<(String, i32, Vec<i32>, Vec<i32>)> {
    let r = c.send(
        &ListPartitionReassignmentsRequest::default().with_topics(None),
        0,
    );
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

#[test]
fn reassignment_moves_replicas_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(create_topic(&mut c0, "r", 1, 1, &[]), 0);
    let (leader, epoch, replicas, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "r");
        (p.0 >= 0).then_some(p)
    });
    assert_eq!(replicas, vec![leader]);
    let mut cl = cluster.client(leader as usize);
    for i in 0..5 {
        assert_eq!(
            produce(
                &mut cl,
                "r",
                batch(10, &format!("b{i}"), Compression::None),
                -1
            )
            .0,
            0
        );
    }
    // Move the single replica to the two other nodes.
    let target: Vec<i32> = (0..3).filter(|n| *n != leader).collect();
    // Bad input first: an unknown node, a repeated node, an unknown
    // partition; nothing changes.
    assert_eq!(
        reassign(&mut c0, "r", Some(vec![7])),
        ResponseError::InvalidReplicaAssignment.code()
    );
    assert_eq!(
        reassign(&mut c0, "r", Some(vec![target[0], target[0]])),
        ResponseError::InvalidReplicaAssignment.code()
    );
    assert_eq!(
        reassign(&mut c0, "nope", Some(target.clone())),
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        reassign(&mut c0, "r", None),
        ResponseError::NoReassignmentInProgress.code()
    );
    assert_eq!(partition0(&mut c0, "r").2, vec![leader]);
    assert_eq!(reassign(&mut c0, "r", Some(target.clone())), 0);
    // The new replicas catch up, then the move completes: the old replica
    // goes and leadership moves at a new epoch.
    let (new_leader, new_epoch, now, isr, _) = wait_for(Duration::from_secs(30), || {
        let p = partition0(&mut c0, "r");
        (p.2 == target && p.3.len() == 2).then_some(p)
    });
    assert!(target.contains(&new_leader) && isr.iter().all(|r| target.contains(r)));
    assert_eq!((now, new_epoch), (target.clone(), epoch + 1));
    assert!(ongoing(&mut c0).is_empty());
    let mut cn = cluster.client(new_leader as usize);
    let d = fetch(&mut cn, "r", 0, -1);
    assert_eq!((d.high_watermark, count_records(&d.records)), (50, 50));
    // The old node no longer serves it, and its copy is reclaimed.
    let (code, _) = produce(&mut cl, "r", batch(1, "x", Compression::None), 1);
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());
    let dirs = cl.send(&DescribeLogDirsRequest::default().with_topics(None), 4);
    let size: i64 = dirs.results[0]
        .topics
        .iter()
        .filter(|t| t.name.as_str() == "r")
        .flat_map(|t| t.partitions.iter().map(|p| p.partition_size))
        .sum();
    assert_eq!(size, 0);
    // Moved back, the old node fetches everything again from the start.
    assert_eq!(reassign(&mut c0, "r", Some(vec![leader])), 0);
    wait_for(Duration::from_secs(30), || {
        (partition0(&mut c0, "r").2 == vec![leader] && partition0(&mut cl, "r").0 == leader)
            .then_some(())
    });
    let d = wait_for(Duration::from_secs(10), || {
        let d = fetch(&mut cl, "r", 0, -1);
        (d.error_code == 0).then_some(d)
    });
    assert_eq!((d.high_watermark, count_records(&d.records)), (50, 50));
}

#[test]
fn a_reassignment_waiting_for_a_stopped_node_can_be_listed_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, FAST);
    let mut c0 = cluster.client(0);
    assert_eq!(create_topic(&mut c0, "w", 1, 2, &[]), 0);
    let (_, _, replicas, _, _) = wait_for(Duration::from_secs(20), || {
        let p = partition0(&mut c0, "w");
        (p.3.len() == 2).then_some(p)
    });
    let spare = (0..3).find(|n| !replicas.contains(n)).unwrap();
    let stays = replicas[0];
    let asker = if spare == 0 { 1 } else { 0 };
    let mut ca = cluster.client(asker as usize);
    // Stopped, the spare node cannot catch up; its lease still lives when
    // the move starts, so the move is accepted and then waits.
    cluster.stop(spare as usize);
    assert_eq!(reassign(&mut ca, "w", Some(vec![stays, spare])), 0);
    let gone = *replicas.iter().find(|r| **r != stays).unwrap();
    assert_eq!(
        ongoing(&mut ca),
        vec![("w".to_string(), 0, vec![spare], vec![gone])]
    );
    assert_eq!(reassign(&mut ca, "w", None), 0);
    assert!(ongoing(&mut ca).is_empty());
    // Metadata shows the replicas from before once the node applies it.
    let mut before = replicas.clone();
    before.sort();
    wait_for(Duration::from_secs(10), || {
        let mut back = partition0(&mut ca, "w").2;
        back.sort();
        (back == before).then_some(())
    });
}

fn commit(c: &mut Client, group: &str, topic: &str, offset: i64) -> Option<i16> {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    c.try_send(&req, 8)
        .map(|r| r.topics[0].partitions[0].error_code)
}

fn committed(c: &mut Client, group: &str, topic: &str) -> i64 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(tn(topic))
            .with_partition_indexes(vec![0])]));
    c.send(&req, 7).topics[0].partitions[0].committed_offset
}

/// An offset commit is visible (OffsetFetch) only once the ISR of the
/// group's offsets partition has it: a coordinator failover can then never
/// roll back an offset a consumer was shown.
#[test]
fn a_commit_is_not_served_before_it_is_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--offsets-topic-num-partitions", "1"]);
    let mut cluster = Cluster::start(dir.path(), 3, &args);
    let mut c = cluster.client(0);
    assert_eq!(create_topic(&mut c, "t", 1, 3, &[]), 0);
    let offsets = wait_for(Duration::from_secs(30), || {
        let (leader, _, _, isr, _) = partition0(&mut c, "__consumer_offsets");
        (leader >= 0 && isr.len() == 3).then_some(leader)
    });
    let leader = offsets as usize;
    let mut lc = cluster.client(leader);
    assert_eq!(commit(&mut lc, "g", "t", 5), Some(0));
    assert_eq!(committed(&mut lc, "g", "t"), 5);
    // Both followers stop: a commit is written on the leader alone and
    // waits for them (they stay in the ISR until their leases lapse).
    for f in (0..3).filter(|f| *f != leader) {
        cluster.stop(f);
    }
    let addr = cluster.kafka[leader];
    let pending = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        commit(&mut c, "g", "t", 10)
    });
    // While it waits, OffsetFetch keeps answering the replicated offset.
    let mut seen = vec![];
    while !pending.is_finished() {
        seen.push(committed(&mut lc, "g", "t"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen.len() > 10, "the commit did not wait");
    assert!(
        seen.iter().all(|o| *o == 5),
        "served before replicated: {seen:?}"
    );
    // Once the followers' leases lapse, the ISR is the leader alone and the
    // commit completes: only then is it served.
    let answer = pending.join().unwrap();
    let expected = if answer == Some(0) { 10 } else { 5 };
    assert_eq!(committed(&mut lc, "g", "t"), expected);
}

/// OffsetDelete and DeleteGroups are answered, and served, only once their
/// tombstones are replicated: until then OffsetFetch keeps answering the
/// offsets a coordinator failover would bring back.
#[test]
fn deletions_are_not_served_before_they_are_replicated() {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--offsets-topic-num-partitions", "1"]);
    let mut cluster = Cluster::start(dir.path(), 3, &args);
    let mut c = cluster.client(0);
    assert_eq!(create_topic(&mut c, "t", 1, 3, &[]), 0);
    let leader = wait_for(Duration::from_secs(30), || {
        let (leader, _, _, isr, _) = partition0(&mut c, "__consumer_offsets");
        (leader >= 0 && isr.len() == 3).then_some(leader)
    }) as usize;
    let mut lc = cluster.client(leader);
    assert_eq!(commit(&mut lc, "g", "t", 5), Some(0));
    assert_eq!(commit(&mut lc, "h", "t", 7), Some(0));
    for f in (0..3).filter(|f| *f != leader) {
        cluster.stop(f);
    }
    let addr = cluster.kafka[leader];
    let offset_delete = std::thread::spawn(move || {
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(tn("t"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        Client::connect(addr).try_send(&req, 0).map(|r| {
            let p = r.topics.first().map_or(0, |t| t.partitions[0].error_code);
            if r.error_code != 0 {
                r.error_code
            } else {
                p
            }
        })
    });
    let delete_group = std::thread::spawn(move || {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("h"))]);
        Client::connect(addr)
            .try_send(&req, 2)
            .map(|r| r.results[0].error_code)
    });
    let mut seen = vec![];
    while !(offset_delete.is_finished() && delete_group.is_finished()) {
        seen.push((committed(&mut lc, "g", "t"), committed(&mut lc, "h", "t")));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen.len() > 10, "the deletions did not wait");
    assert!(
        seen.iter().all(|o| *o == (5, 7)),
        "served before replicated: {seen:?}"
    );
    // Once the followers' leases lapse the ISR is the leader alone and the
    // deletions complete; what was answered is what is served.
    let (od, dg) = (offset_delete.join().unwrap(), delete_group.join().unwrap());
    let g = if od == Some(0) { -1 } else { 5 };
    let h = if dg == Some(0) { -1 } else { 7 };
    assert_eq!(
        (committed(&mut lc, "g", "t"), committed(&mut lc, "h", "t")),
        (g, h)
    );
}
