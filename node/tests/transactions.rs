//! Transactions over the Kafka protocol, against the real binary: every
//! transaction API at every advertised version, read_committed fetches and
//! ListOffsets, state across kill -9, and every bad-input path answered
//! with its Kafka error and nothing written.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{batch, transactional_batch, wait_for, Client, Node};
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

fn txn_id(v: &str) -> TransactionalId {
    TransactionalId(s(v))
}

fn node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(
        dir.path(),
        &["--transaction-abort-check-interval-ms", "100"],
    );
    (dir, n)
}

/// InitProducerId for a transactional id, retried while the coordinator
/// is loading or a previous transaction is being aborted.
fn init(c: &mut Client, id: &str, version: i16) -> (i64, i16) {
    init_with(c, id, version, 60_000)
}

fn init_with(c: &mut Client, id: &str, version: i16, timeout_ms: i32) -> (i64, i16) {
    wait_for(Duration::from_secs(30), || {
        let r = c.send(
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(txn_id(id)))
                .with_transaction_timeout_ms(timeout_ms)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            version,
        );
        let retriable = [
            ResponseError::CoordinatorNotAvailable.code(),
            ResponseError::NotCoordinator.code(),
            ResponseError::ConcurrentTransactions.code(),
            ResponseError::CoordinatorLoadInProgress.code(),
        ];
        if retriable.contains(&r.error_code) {
            return None;
        }
        assert_eq!(r.error_code, 0, "init {id} v{version}");
        Some((r.producer_id.0, r.producer_epoch))
    })
}

fn add_partitions(
    c: &mut Client,
    id: &str,
    (pid, epoch): (i64, i16),
    topic: &str,
    partitions: &[i32],
    version: i16,
) -> Vec<i16> {
    let topics = vec![AddPartitionsToTxnTopic::default()
        .with_name(tn(topic))
        .with_partitions(partitions.to_vec())];
    if version >= 4 {
        let r = c.send(
            &AddPartitionsToTxnRequest::default().with_transactions(vec![
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(txn_id(id))
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_topics(topics),
            ]),
            version,
        );
        return r.results_by_transaction[0].topic_results[0]
            .results_by_partition
            .iter()
            .map(|p| p.partition_error_code)
            .collect();
    }
    let r = c.send(
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txn_id(id))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(topics),
        version,
    );
    r.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect()
}

fn end(c: &mut Client, id: &str, (pid, epoch): (i64, i16), commit: bool, version: i16) -> i16 {
    c.send(
        &EndTxnRequest::default()
            .with_transactional_id(txn_id(id))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit),
        version,
    )
    .error_code
}

fn produce(c: &mut Client, id: Option<&str>, topic: &str, partition: i32, records: Bytes) -> i16 {
    let r = c.send(
        &ProduceRequest::default()
            .with_transactional_id(id.map(txn_id))
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(tn(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]),
        9,
    );
    r.responses[0].partition_responses[0].error_code
}

/// A fetch from offset 0 at `isolation` (0 read_uncommitted, 1
/// read_committed): (values, last stable offset, aborted producer ids).
fn fetch(c: &mut Client, topic: &str, isolation: i8) -> (Vec<String>, i64, Option<Vec<i64>>) {
    let r = c.send(
        &FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_isolation_level(isolation)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
        12,
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut b = p.records.clone().unwrap_or_default();
    let mut values = vec![];
    for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
        for r in set.records {
            if !r.control {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
    }
    let aborted = p
        .aborted_transactions
        .as_ref()
        .map(|a| a.iter().map(|t| t.producer_id.0).collect());
    (values, p.last_stable_offset, aborted)
}

fn latest(c: &mut Client, topic: &str, isolation: i8) -> i64 {
    c.send(
        &ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(tn(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]),
        7,
    )
    .topics[0]
        .partitions[0]
        .offset
}

#[test]
fn transactions_at_every_version_with_read_committed_fetches() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(common::create_topic(&mut c, "t", 1, 1, &[]), 0);
    let mut committed = vec![];
    for v in 0..=4 {
        // InitProducerId 0..4, AddPartitionsToTxn 0..4, EndTxn 0..3.
        let id = format!("tx-v{v}");
        let ids = init(&mut c, &id, v);
        assert_eq!(ids.1, 0);
        assert_eq!(
            add_partitions(&mut c, &id, ids, "t", &[0], v),
            [0],
            "add v{v}"
        );
        let b = transactional_batch(2, &format!("v{v}-"), ids.0, ids.1, 0);
        assert_eq!(produce(&mut c, Some(&id), "t", 0, b), 0, "produce v{v}");
        // Open: read_committed sees nothing new, the LSO holds.
        let (_, lso, _) = fetch(&mut c, "t", 1);
        assert!(lso < latest(&mut c, "t", 0), "v{v}: lso {lso} held back");
        assert_eq!(latest(&mut c, "t", 1), lso);
        let commit = v % 2 == 0;
        assert_eq!(end(&mut c, &id, ids, commit, v.min(3)), 0, "end v{v}");
        if commit {
            committed.extend([format!("v{v}-0"), format!("v{v}-1")]);
        }
    }
    let (values, lso, aborted) = fetch(&mut c, "t", 1);
    // The LSO reached the log end: every transaction is decided.
    assert_eq!(lso, latest(&mut c, "t", 0));
    assert_eq!(latest(&mut c, "t", 1), lso);
    // Aborted data is returned with the list that tells clients to drop it.
    let aborted = aborted.expect("read_committed fetches carry the aborted list");
    assert_eq!(aborted.len(), 2, "{aborted:?}");
    assert_eq!(values.len(), 10);
    let (_, _, none) = fetch(&mut c, "t", 0);
    assert!(none.is_none(), "read_uncommitted gets no aborted list");
    assert!(committed.iter().all(|v| values.contains(v)));

    // AddOffsetsToTxn 0..3 and TxnOffsetCommit 0..3: offsets apply on commit.
    for v in 0..=3 {
        let id = format!("offsets-v{v}");
        let group = format!("g-v{v}");
        let ids = init(&mut c, &id, 4);
        let r = c.send(
            &AddOffsetsToTxnRequest::default()
                .with_transactional_id(txn_id(&id))
                .with_producer_id(ProducerId(ids.0))
                .with_producer_epoch(ids.1)
                .with_group_id(GroupId(s(&group))),
            v,
        );
        assert_eq!(r.error_code, 0, "add offsets v{v}");
        let r = c.send(
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(txn_id(&id))
                .with_group_id(GroupId(s(&group)))
                .with_producer_id(ProducerId(ids.0))
                .with_producer_epoch(ids.1)
                .with_generation_id(-1)
                .with_member_id(s(""))
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(tn("t"))
                    .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(3 + i64::from(v))])]),
            v,
        );
        assert_eq!(
            r.topics[0].partitions[0].error_code, 0,
            "txn offset commit v{v}"
        );
        let fetched = |c: &mut Client| {
            let r = c.send(
                &OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_topics(None),
                3,
            );
            r.topics
                .first()
                .map(|t| t.partitions[0].committed_offset)
                .unwrap_or(-1)
        };
        assert_eq!(fetched(&mut c), -1, "v{v}: not visible before the commit");
        assert_eq!(end(&mut c, &id, ids, true, 3), 0);
        assert_eq!(
            fetched(&mut c),
            3 + i64::from(v),
            "v{v}: visible after the commit"
        );
    }

    // DescribeTransactions and ListTransactions 0..1.
    let r = c.send(
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![txn_id("tx-v0"), txn_id("unknown")]),
        0,
    );
    assert_eq!(r.transaction_states[0].error_code, 0);
    assert_eq!(
        r.transaction_states[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    assert_eq!(
        r.transaction_states[1].error_code,
        ResponseError::TransactionalIdNotFound.code()
    );
    for v in 0..=1 {
        let r = c.send(
            &ListTransactionsRequest::default()
                .with_state_filters(vec![s("CompleteAbort"), s("Nope")]),
            v,
        );
        let mut ids: Vec<&str> = r
            .transaction_states
            .iter()
            .map(|t| t.transactional_id.0.as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["tx-v1", "tx-v3"], "list v{v}");
        assert_eq!(r.unknown_state_filters, [s("Nope")]);
    }
    // FindCoordinator for a transactional id names this node.
    let r = c.send(
        &FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![s("tx-v0")]),
        4,
    );
    assert_eq!(r.coordinators[0].error_code, 0);
    assert_eq!(r.coordinators[0].port, i32::from(n.kafka.port()));
    // AddPartitionsToTxn v4 verify_only: what a leader asks.
    let ids = init(&mut c, "verify", 4);
    assert_eq!(add_partitions(&mut c, "verify", ids, "t", &[0], 3), [0]);
    let r = c.send(
        &AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(txn_id("verify"))
                .with_producer_id(ProducerId(ids.0))
                .with_producer_epoch(ids.1)
                .with_verify_only(true)
                .with_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(tn("t"))
                    .with_partitions(vec![0])]),
        ]),
        4,
    );
    assert_eq!(
        r.results_by_transaction[0].topic_results[0].results_by_partition[0].partition_error_code,
        0
    );
    n.assert_no_panics();
}

#[test]
fn bad_transactional_input_gets_kafka_errors_and_writes_nothing() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(common::create_topic(&mut c, "b", 2, 1, &[]), 0);
    let end_of = |c: &mut Client| latest(c, "b", 0);

    // EndTxn for an unknown transactional id (once this node coordinates
    // it: just after start, the coordinator may not be elected yet).
    let starting = [
        ResponseError::NotCoordinator.code(),
        ResponseError::CoordinatorLoadInProgress.code(),
    ];
    let code = wait_for(Duration::from_secs(30), || {
        let code = end(&mut c, "nobody", (5, 0), true, 3);
        (!starting.contains(&code)).then_some(code)
    });
    assert_eq!(code, ResponseError::InvalidProducerIdMapping.code());
    // A transaction timeout above transaction.max.timeout.ms.
    let r = c.send(
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_id("slow")))
            .with_transaction_timeout_ms(i32::MAX),
        4,
    );
    assert_eq!(
        r.error_code,
        ResponseError::InvalidTransactionTimeout.code()
    );

    let ids = init(&mut c, "bad", 4);
    assert_eq!(add_partitions(&mut c, "bad", ids, "b", &[0], 3), [0]);
    // A transactional produce to a partition not added to the transaction.
    let before = end_of(&mut c);
    let r = produce(
        &mut c,
        Some("bad"),
        "b",
        1,
        transactional_batch(1, "x", ids.0, ids.1, 0),
    );
    assert_eq!(r, ResponseError::InvalidTxnState.code());
    // ... and one without a transactional id.
    let r = produce(
        &mut c,
        None,
        "b",
        0,
        transactional_batch(1, "x", ids.0, ids.1, 0),
    );
    assert_eq!(r, ResponseError::InvalidTxnState.code());
    // A control batch from a client.
    let marker = sluice_node::log::batch::marker_batch(ids.0, ids.1, true, 0, 0).unwrap();
    assert_eq!(
        produce(&mut c, Some("bad"), "b", 0, marker),
        ResponseError::InvalidRecord.code()
    );
    // Adding a partition of a topic that does not exist.
    assert_eq!(
        add_partitions(&mut c, "bad", ids, "missing", &[0], 3),
        [ResponseError::UnknownTopicOrPartition.code()]
    );
    // A stale epoch: a second producer with the same id fences the first.
    // (Its open transaction is aborted under a bumped epoch, then it gets
    // the next one, as Kafka does.)
    let newer = init(&mut c, "bad", 4);
    assert_eq!(newer.0, ids.0);
    assert!(newer.1 > ids.1);
    assert_eq!(
        add_partitions(&mut c, "bad", ids, "b", &[0], 3),
        [ResponseError::ProducerFenced.code()]
    );
    assert_eq!(
        end(&mut c, "bad", ids, true, 3),
        ResponseError::ProducerFenced.code()
    );
    assert_eq!(
        end(&mut c, "bad", ids, true, 1),
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(add_partitions(&mut c, "bad", newer, "b", &[0], 3), [0]);
    let r = produce(
        &mut c,
        Some("bad"),
        "b",
        0,
        transactional_batch(1, "old", ids.0, ids.1, 0),
    );
    assert_eq!(r, ResponseError::InvalidProducerEpoch.code());
    // EndTxn with nothing open is refused.
    let fresh = init(&mut c, "empty", 4);
    assert_eq!(
        end(&mut c, "empty", fresh, true, 3),
        ResponseError::InvalidTxnState.code()
    );
    // TxnOffsetCommit for a group whose offsets were not added to the
    // transaction (AddOffsetsToTxn), then for an unknown member of it.
    let offsets = |c: &mut Client, member: &str, generation: i32| {
        c.send(
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(txn_id("bad"))
                .with_group_id(GroupId(s("some-group")))
                .with_producer_id(ProducerId(newer.0))
                .with_producer_epoch(newer.1)
                .with_generation_id(generation)
                .with_member_id(s(member))
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(tn("b"))
                    .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)])]),
            3,
        )
        .topics[0]
            .partitions[0]
            .error_code
    };
    assert_eq!(
        offsets(&mut c, "", -1),
        ResponseError::InvalidTxnState.code()
    );
    let r = c.send(
        &AddOffsetsToTxnRequest::default()
            .with_transactional_id(txn_id("bad"))
            .with_producer_id(ProducerId(newer.0))
            .with_producer_epoch(newer.1)
            .with_group_id(GroupId(s("some-group"))),
        3,
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(
        offsets(&mut c, "who", 3),
        ResponseError::UnknownMemberId.code()
    );
    // No record was written by any of it; the log holds only the abort
    // marker of the fenced producer's transaction.
    assert_eq!(end_of(&mut c), before + 1);
    let (values, _, _) = fetch(&mut c, "b", 0);
    assert!(values.is_empty(), "{values:?}");
    // The producer still works.
    let b = transactional_batch(2, "ok", newer.0, newer.1, 0);
    assert_eq!(produce(&mut c, Some("bad"), "b", 0, b), 0);
    assert_eq!(end(&mut c, "bad", newer, true, 3), 0);
    assert_eq!(fetch(&mut c, "b", 1).0, ["ok0", "ok1"]);
    n.assert_no_panics();
}

#[test]
fn open_transactions_survive_kill_9_and_time_out() {
    let (_d, mut n) = node();
    let mut c = n.client();
    assert_eq!(common::create_topic(&mut c, "k", 1, 1, &[]), 0);
    let ids = init_with(&mut c, "k1", 4, 3_000);
    assert_eq!(add_partitions(&mut c, "k1", ids, "k", &[0], 3), [0]);
    let b = transactional_batch(3, "open", ids.0, ids.1, 0);
    assert_eq!(produce(&mut c, Some("k1"), "k", 0, b), 0);
    assert_eq!(
        produce(&mut c, None, "k", 0, batch(1, "plain", Compression::None)),
        0
    );
    assert_eq!(
        fetch(&mut c, "k", 1).1,
        0,
        "the open transaction holds the LSO"
    );
    n.kill9();
    n.restart();
    let mut c = n.client();
    // After the restart the transaction is still open ...
    assert_eq!(fetch(&mut c, "k", 1).1, 0);
    // ... until its timeout aborts it: the LSO moves on, and the aborted
    // records are listed for read_committed clients to drop.
    let (values, lso, aborted) = wait_for(Duration::from_secs(30), || {
        let f = fetch(&mut c, "k", 1);
        (f.1 > 0).then_some(f)
    });
    assert_eq!(lso, latest(&mut c, "k", 0));
    assert_eq!(aborted, Some(vec![ids.0]));
    assert!(values.contains(&"plain0".to_string()));
    // The producer was fenced by the abort.
    assert_eq!(
        end(&mut c, "k1", ids, true, 3),
        ResponseError::ProducerFenced.code()
    );
    n.assert_no_panics();
}
