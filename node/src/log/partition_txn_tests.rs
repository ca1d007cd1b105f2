//! Transactions in one partition's log: the last stable offset, the
//! aborted index, both across a reopen and a truncation, and what the
//! cleaner does with transactional records.

use super::*;
use kafka_protocol::records::{Compression, Record, TimestampType as Tst};

fn open() -> (tempfile::TempDir, Arc<Store>, Uuid, PartitionLog) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Default::default()).unwrap();
    let id = Uuid::new_v4();
    let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
    (dir, store, id, log)
}

/// `n` records of producer `pid` (keys `k{i}`), transactional or not.
fn data(pid: i64, seq: i32, keys: &[&str], transactional: bool) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: Tst::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: 1_000,
            key: Some(Bytes::from(k.to_string())),
            value: Some(Bytes::from(format!("{pid}-{k}"))),
            headers: Default::default(),
        })
        .collect();
    batch::encode_v2(&records, Compression::None).unwrap()
}

fn marker(pid: i64, commit: bool) -> Bytes {
    batch::marker_batch(pid, 0, commit, 0, 1_000).unwrap()
}

fn put(log: &PartitionLog, b: &Bytes) -> Appended {
    log.append_committed(b, 0, TimestampType::CreateTime, 1_000)
        .unwrap()
}

#[test]
fn open_transactions_hold_the_stable_offset_and_aborts_are_indexed() {
    let (_d, _s, _id, log) = open();
    put(&log, &data(-1, -1, &["p"], false));
    put(&log, &data(7, 0, &["a", "b"], true)); // 1..=2
    put(&log, &data(8, 0, &["c"], true)); // 3
    assert_eq!(log.high_watermark(), 4);
    assert_eq!(log.last_stable_offset(), 1);
    assert_eq!(log.open_transaction(7), Some(1));
    put(&log, &marker(7, false)); // 4
    assert_eq!(log.last_stable_offset(), 3, "producer 8 still open");
    put(&log, &marker(8, true)); // 5
    assert_eq!(log.last_stable_offset(), 6);
    let aborted = log.aborted_in(0, 6);
    assert_eq!(
        aborted,
        vec![AbortedTxn {
            producer_id: 7,
            first_offset: 1,
            last_offset: 4
        }]
    );
    assert_eq!(log.aborted_in(5, 6), vec![]);
    // A marker from an older epoch than the producer's is refused.
    put(&log, &batch::marker_batch(7, 1, false, 0, 0).unwrap());
    let old = batch::marker_batch(7, 0, true, 0, 0).unwrap();
    assert!(matches!(
        log.append_committed(&old, 0, TimestampType::CreateTime, 0),
        Err(AppendError::Sequence(SequenceError::StaleEpoch { .. }))
    ));
}

#[test]
fn the_index_survives_a_reopen_and_follows_truncation() {
    let (_d, store, id, log) = open();
    put(&log, &data(7, 0, &["a"], true)); // 0
    put(&log, &marker(7, false)); // 1
    put(&log, &data(8, 0, &["b"], true)); // 2
    drop(log);
    let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
    assert_eq!(log.last_stable_offset(), 2);
    assert_eq!(log.aborted_in(0, 3).len(), 1);
    // A follower's divergent tail cut at the abort marker: that
    // transaction is open again, the later one is gone.
    assert_eq!(log.truncate_to(1).unwrap(), 1);
    assert_eq!(log.open_transaction(7), Some(0));
    assert_eq!(log.open_transaction(8), None);
    assert_eq!(log.aborted_in(0, 3), vec![]);
    drop(log);
    let log = PartitionLog::open(store, &id, 0).unwrap();
    assert_eq!(log.open_transaction(7), Some(0));
    assert_eq!(log.aborted_in(0, 3), vec![]);
    // Replicated batches feed the index the same way.
    let (_d2, _s2, _id2, follower) = open();
    let r = log.read(0, usize::MAX, i64::MAX, true).unwrap();
    follower.append_replicated(&r.records).unwrap();
    assert_eq!(follower.open_transaction(7), Some(0));
}

#[test]
fn the_cleaner_drops_aborted_records_and_compacts_committed_ones() {
    let (_d, _s, _id, log) = open();
    let p = Policy {
        min_cleanable_dirty_ratio: 0.0,
        min_compaction_lag_ms: 0,
        max_compaction_lag_ms: i64::MAX,
        delete_retention_ms: 1_000,
    };
    put(&log, &data(7, 0, &["a", "b"], true)); // 0..=1, aborted
    put(&log, &marker(7, false)); // 2
    put(&log, &data(8, 0, &["a", "c"], true)); // 3..=4, committed
    put(&log, &marker(8, true)); // 5
    put(&log, &data(-1, -1, &["c"], false)); // 6, supersedes 8's "c"
    put(&log, &data(9, 0, &["z"], true)); // 7, open
    log.clean(&p, 10_000, 1 << 20, 1 << 20, &mut |_| {})
        .unwrap();
    let r = log.read(0, usize::MAX, i64::MAX, true).unwrap();
    let mut buf = r.records.clone();
    let mut kept = vec![];
    while !buf.is_empty() {
        for rec in kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
            .unwrap()
            .records
        {
            if !rec.control {
                kept.push((
                    rec.offset,
                    String::from_utf8(rec.value.unwrap().to_vec()).unwrap(),
                ));
            }
        }
    }
    assert_eq!(
        kept,
        vec![
            (3, "8-a".to_string()),
            (6, "-1-c".to_string()),
            (7, "9-z".to_string())
        ]
    );
    // The index and the stable offset are unchanged.
    assert_eq!(log.aborted_in(0, 8).len(), 1);
    assert_eq!(log.last_stable_offset(), 7);
    assert_eq!(control_offsets(&log), vec![2, 5]);
    // Once clean for delete.retention.ms, the abort marker (no records of
    // its transaction left) goes; the commit marker, whose "8-a" is still
    // there, stays.
    put(&log, &marker(9, true)); // 8
                                 // (Producer 7 writes again, so its aborted batch is no longer the one
                                 // that keeps its last sequence.)
    put(&log, &data(7, 2, &["q"], false)); // 9
    put(&log, &data(-1, -1, &["d"], false)); // 10
    log.clean(&p, 20_000, 1 << 20, 1 << 20, &mut |_| {})
        .unwrap();
    assert_eq!(control_offsets(&log), vec![5, 8]);
}

fn control_offsets(log: &PartitionLog) -> Vec<i64> {
    let r = log.read(0, usize::MAX, i64::MAX, true).unwrap();
    batch::framed(&r.records)
        .filter_map(|b| {
            let h = Header::parse(&b).unwrap();
            h.is_control().then(|| h.base_offset())
        })
        .collect()
}

#[test]
fn a_write_verified_before_its_transaction_ended_is_refused() {
    let (_d, _s, _id, log) = open();
    put(&log, &data(7, 0, &["a"], true));
    let (open, guard) = log.txn_guard(7);
    assert!(open);
    // The transaction ends (a timeout abort) while the next write waits.
    put(&log, &marker(7, false));
    let late = data(7, 1, &["b"], true);
    let r = log.append_checked(
        &late,
        0,
        TimestampType::CreateTime,
        1_000,
        true,
        Some(guard),
    );
    assert!(matches!(r, Err(AppendError::TxnEnded)), "{r:?}");
    assert_eq!(log.open_transaction(7), None, "no transaction left open");
    let (_, now) = log.txn_guard(7);
    assert!(log
        .append_checked(&late, 0, TimestampType::CreateTime, 1_000, true, Some(now))
        .is_ok());
}
