//! Replication over real gRPC on loopback: a leader's partition log, a
//! follower's, and the fetch session between them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use sluice_node::log::{PartitionLog, Store, TimestampType as Ts};
use sluice_node::replication::throttle::Throttle;
use sluice_node::replication::{follower, leader, FetchError, Following, LeaderLogs};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

struct TestLeader {
    log: Arc<PartitionLog>,
    epoch: AtomicI32,
    fetched: Mutex<HashMap<i32, i64>>,
    changed: Notify,
}

fn test_leader(log: &Arc<PartitionLog>, epoch: i32) -> Arc<TestLeader> {
    Arc::new(TestLeader {
        log: log.clone(),
        epoch: AtomicI32::new(epoch),
        fetched: Mutex::new(HashMap::new()),
        changed: Notify::new(),
    })
}

/// What a follower of partition t-0 at `epoch` is told to follow.
fn following(log: &Arc<PartitionLog>, epoch: i32) -> Vec<Following> {
    vec![Following {
        topic: "t".into(),
        partition: 0,
        leader_epoch: epoch,
        log: log.clone(),
        replica: None,
        throttled: false,
    }]
}

impl LeaderLogs for TestLeader {
    fn leader_log(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
    ) -> Result<Arc<PartitionLog>, FetchError> {
        if topic != "t" || partition != 0 {
            return Err(FetchError::UnknownPartition);
        }
        let current = self.epoch.load(Ordering::SeqCst);
        match epoch.cmp(&current) {
            std::cmp::Ordering::Less => Err(FetchError::FencedLeaderEpoch),
            std::cmp::Ordering::Greater => Err(FetchError::UnknownLeaderEpoch),
            std::cmp::Ordering::Equal => Ok(self.log.clone()),
        }
    }

    fn follower_fetched(&self, _topic: &str, _partition: i32, follower: i32, fetch_offset: i64) {
        self.fetched.lock().unwrap().insert(follower, fetch_offset);
        let followers = [sluice_api::isr::Follower {
            id: follower,
            log_end: fetch_offset,
            last_caught_up_ms: 0,
        }];
        let hw = sluice_api::isr::high_watermark(
            1,
            self.log.log_end_offset(),
            &followers,
            &[1, follower],
            self.log.high_watermark(),
        );
        self.log.set_high_watermark(hw).unwrap();
    }

    fn roles_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

fn batch(values: &[&str]) -> Bytes {
    let records = values
        .iter()
        .map(|v| (None, Some(Bytes::copy_from_slice(v.as_bytes()))))
        .collect();
    sluice_node::log::batch::encode_records(records, 1_000, Compression::Lz4).unwrap()
}

fn contents(log: &PartitionLog) -> Vec<String> {
    let mut b = log
        .read(log.log_start_offset(), 1 << 24, log.log_end_offset(), true)
        .unwrap()
        .records;
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unthrottled() -> Arc<Throttle> {
    Arc::new(Throttle::new(0, Default::default()))
}

async fn serve(leader: Arc<TestLeader>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(leader::Service::new(leader))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_copies_the_leader_and_the_high_watermark_follows() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let topic_id = Uuid::new_v4();
    let leader_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.0.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    let follower_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.1.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    let leader = test_leader(&leader_log, 1);
    let addr = serve(leader.clone()).await;
    let (tx, rx) = watch::channel(following(&follower_log, 1));
    let session = tokio::spawn(follower::run(2, addr, rx, unthrottled(), None));

    for i in 0..20 {
        leader_log
            .append(
                &batch(&[&format!("a{i}"), &format!("b{i}")]),
                1,
                Ts::CreateTime,
                0,
            )
            .unwrap();
        // The log wakes the parked fetch itself.
    }
    until("the follower to catch up", || {
        follower_log.log_end_offset() == 40
    })
    .await;
    assert_eq!(contents(&follower_log), contents(&leader_log));
    // The leader's high watermark moves with the follower's fetches, and the
    // follower learns it on its next fetch.
    until("the high watermarks", || {
        leader_log.high_watermark() == 40 && follower_log.high_watermark() == 40
    })
    .await;
    assert_eq!(follower_log.end_offset_for_epoch(1), (1, 40));

    // A follower that still believes in an older epoch is fenced and copies nothing.
    leader.epoch.store(2, Ordering::SeqCst);
    leader_log
        .append(&batch(&["epoch-two"]), 2, Ts::CreateTime, 0)
        .unwrap();
    leader.changed.notify_waiters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(follower_log.log_end_offset(), 40);
    // Told of the new epoch, it resumes.
    tx.send_replace(following(&follower_log, 2));
    until("the epoch-2 batch", || follower_log.log_end_offset() == 41).await;
    assert_eq!(follower_log.latest_epoch(), 2);

    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("the session ends with its partition set")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_leaders_unreplicated_tail_is_truncated() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let topic_id = Uuid::new_v4();
    let new_leader_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.0.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    let old_leader_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.1.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    // Both hold the same committed prefix written at epoch 0...
    for i in 0..5 {
        let a = old_leader_log
            .append(&batch(&[&format!("c{i}")]), 0, Ts::CreateTime, 0)
            .unwrap();
        let copy = old_leader_log
            .read(a.base_offset, 1 << 20, a.last_offset + 1, true)
            .unwrap();
        new_leader_log.append_replicated(&copy.records).unwrap();
    }
    // ...then the old leader wrote a tail at epoch 1 that never replicated,
    old_leader_log
        .append(&batch(&["lost-1", "lost-2"]), 1, Ts::CreateTime, 0)
        .unwrap();
    old_leader_log
        .append(&batch(&["lost-3"]), 1, Ts::CreateTime, 0)
        .unwrap();
    // ...while the new leader, elected at epoch 2, took new writes.
    new_leader_log
        .append(&batch(&["new-1"]), 2, Ts::CreateTime, 0)
        .unwrap();
    new_leader_log
        .append(&batch(&["new-2", "new-3", "new-4"]), 2, Ts::CreateTime, 0)
        .unwrap();

    let leader = test_leader(&new_leader_log, 2);
    let addr = serve(leader).await;
    let (_tx, rx) = watch::channel(following(&old_leader_log, 2));
    tokio::spawn(follower::run(2, addr, rx, unthrottled(), None));
    until("the old leader to converge", || {
        old_leader_log.log_end_offset() == 9 && old_leader_log.latest_epoch() == 2
    })
    .await;
    let got = contents(&old_leader_log);
    assert_eq!(got, contents(&new_leader_log));
    assert!(
        !got.iter().any(|v| v.starts_with("lost")),
        "the unreplicated tail never reappears: {got:?}"
    );
    assert_eq!(old_leader_log.end_offset_for_epoch(1), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_resets() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let topic_id = Uuid::new_v4();
    let leader_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.0.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    let follower_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.1.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    for i in 0..10 {
        leader_log
            .append(&batch(&[&format!("r{i}")]), 0, Ts::CreateTime, 0)
            .unwrap();
    }
    leader_log.set_high_watermark(10).unwrap();
    // Retention removed the first six batches on the leader.
    let mut n = 0;
    leader_log
        .delete_prefix_while(|_, _| {
            n += 1;
            n <= 6
        })
        .unwrap();
    assert_eq!(leader_log.log_start_offset(), 6);
    let leader = test_leader(&leader_log, 0);
    let addr = serve(leader).await;
    let (_tx, rx) = watch::channel(following(&follower_log, 0));
    tokio::spawn(follower::run(2, addr, rx, unthrottled(), None));
    until("the follower to reset and catch up", || {
        follower_log.log_end_offset() == 10
    })
    .await;
    assert_eq!(follower_log.log_start_offset(), 6);
    assert_eq!(contents(&follower_log), vec!["r6", "r7", "r8", "r9"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resets_to_a_log_start_inside_a_batch() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let topic_id = Uuid::new_v4();
    let leader_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.0.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    let follower_log = Arc::new(
        PartitionLog::open(
            Store::open(dirs.1.path(), Default::default()).unwrap(),
            &topic_id,
            0,
        )
        .unwrap(),
    );
    for i in 0..3 {
        let values: Vec<String> = (0..10).map(|j| format!("v{}", i * 10 + j)).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        leader_log
            .append(&batch(&refs), 0, Ts::CreateTime, 0)
            .unwrap();
    }
    leader_log.set_high_watermark(30).unwrap();
    // DeleteRecords put the leader's start inside its second batch.
    leader_log.delete_records_before(15).unwrap();
    let leader = test_leader(&leader_log, 0);
    let addr = serve(leader).await;
    let (_tx, rx) = watch::channel(following(&follower_log, 0));
    tokio::spawn(follower::run(2, addr, rx, unthrottled(), None));
    until(
        "the follower to take the straddling batch and the rest",
        || follower_log.log_end_offset() == 30,
    )
    .await;
    assert_eq!(follower_log.log_start_offset(), 15);
    assert_eq!(contents(&follower_log), contents(&leader_log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_being_added_catches_up_no_faster_than_the_throttle() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let topic_id = Uuid::new_v4();
    let open = |d: &tempfile::TempDir| {
        Arc::new(
            PartitionLog::open(
                Store::open(d.path(), Default::default()).unwrap(),
                &topic_id,
                0,
            )
            .unwrap(),
        )
    };
    let (leader_log, follower_log) = (open(&dirs.0), open(&dirs.1));
    // About 400 KiB the leader holds, in 100 uncompressed batches of 4 KiB.
    let value = Bytes::from(vec![b'x'; 4096]);
    for _ in 0..100 {
        let b = sluice_node::log::batch::encode_records(
            vec![(None, Some(value.clone()))],
            1_000,
            Compression::None,
        )
        .unwrap();
        leader_log.append(&b, 1, Ts::CreateTime, 0).unwrap();
    }
    let leader = test_leader(&leader_log, 1);
    let addr = serve(leader.clone()).await;
    let mut set = following(&follower_log, 1);
    set[0].throttled = true;
    let (_tx, rx) = watch::channel(set);
    let rate = 128 * 1024;
    let throttle = Arc::new(Throttle::new(rate, Default::default()));
    let started = std::time::Instant::now();
    tokio::spawn(follower::run(2, addr, rx, throttle.clone(), None));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while follower_log.log_end_offset() < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let fetched = throttle.fetched.get();
    assert!(fetched >= 400 * 1024, "{fetched} bytes counted");
    // The bucket starts with one second's worth; the rest comes at the
    // rate (give or take one batch).
    let earliest = (fetched as f64 - rate as f64 - 8192.0) / rate as f64;
    assert!(
        took >= earliest,
        "{fetched} bytes in {took:.2} s at {rate} B/s"
    );
    assert_eq!(contents(&follower_log), contents(&leader_log));
}
