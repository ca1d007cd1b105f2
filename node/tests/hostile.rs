//! Hostile input and resource limits, against the real binary: each test
//! is a reproduction of a way a client (or bad data on disk) could crash,
//! wedge or exhaust a node, and shows that it no longer does.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{batch, create_topic, wait_for, Client, Node};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record};
use kafka_protocol::ResponseError;
use sluice_node::log::batch::{encode_v2, plain_record};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}
fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn produce_v(
    c: &mut Client,
    topic: &str,
    records: Bytes,
    version: i16,
) -> produce_response::PartitionProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    c.send(&req, version).responses[0].partition_responses[0].clone()
}

fn list_offset(c: &mut Client, topic: &str, ts: i64) -> (i16, i64, i64) {
    let r = c.send(
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(ts)])]),
        7,
    );
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

/// Records with the given keys (and timestamps), in one batch.
fn keyed_batch(keys: &[Option<&str>], ts: &[i64], compression: Compression) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .zip(ts)
        .enumerate()
        .map(|(i, (k, t))| {
            let key = k.map(|k| Bytes::from(k.to_string()));
            plain_record(i as i64, *t, key, Some(Bytes::from(format!("v{i}"))))
        })
        .collect();
    encode_v2(&records, compression).unwrap()
}

fn reframe(b: &mut BytesMut) {
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A one-record batch whose header claims `count` records.
fn lying_count(count: i32) -> Bytes {
    let mut b = BytesMut::from(&batch(1, "x", Compression::None)[..]);
    b[57..61].copy_from_slice(&count.to_be_bytes());
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    reframe(&mut b);
    b.freeze()
}

/// A batch header (CRC valid) over records that are noise.
fn garbage_records() -> Bytes {
    let good = batch(3, "x", Compression::None);
    let mut b = BytesMut::from(&good[..61]);
    b.extend_from_slice(&[
        0x7f, 0x01, 0xfe, 0x33, 0x80, 0x80, 0x80, 0x80, 0x7f, 9, 9, 9,
    ]);
    reframe(&mut b);
    b.freeze()
}

#[test]
fn a_23_byte_request_claiming_two_billion_topics_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut n = Node::start(d.path(), &[]);
    let mut c = n.client();
    // Metadata v1 whose topic array count is 0x7fffffff.
    c.write_bytes(&[
        0x00, 0x00, 0x00, 0x13, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x4d, 0x00, 0x05, b'p',
        b'r', b'o', b'b', b'e', 0x7f, 0xff, 0xff, 0xff,
    ]);
    assert!(c.is_closed());
    assert!(n.exit_status().is_none(), "the node died");
    let md = n
        .client()
        .send(&MetadataRequest::default().with_topics(None), 1);
    assert_eq!(md.brokers.len(), 1);
}

#[test]
fn produce_validates_every_record_and_stores_nothing_of_a_bad_batch() {
    let d = tempfile::tempdir().unwrap();
    let mut n = Node::start(d.path(), &[]);
    let mut c = n.client();
    assert_eq!(create_topic(&mut c, "t", 1, 1, &[]), 0);
    let corrupt = ResponseError::CorruptMessage.code();
    // CRC-valid noise where the records should be.
    assert_eq!(
        produce_v(&mut c, "t", garbage_records(), 9).error_code,
        corrupt
    );
    // A count of 1000 over one record: no offsets burned.
    assert_eq!(
        produce_v(&mut c, "t", lying_count(1000), 9).error_code,
        corrupt
    );
    // A count of 2^31-1 over one record.
    assert_eq!(
        produce_v(&mut c, "t", lying_count(i32::MAX), 9).error_code,
        corrupt
    );
    // Bytes after the last record.
    let mut trailing = BytesMut::from(&batch(2, "x", Compression::None)[..]);
    trailing.extend_from_slice(b"trailing");
    reframe(&mut trailing);
    assert_eq!(
        produce_v(&mut c, "t", trailing.freeze(), 9).error_code,
        corrupt
    );
    // A compressed payload that is not what its codec says.
    let mut bad_codec = BytesMut::from(&batch(2, "x", Compression::Zstd)[..]);
    // The zstd frame's magic number, right after the batch header.
    bad_codec[61] ^= 0xff;
    reframe(&mut bad_codec);
    assert_eq!(
        produce_v(&mut c, "t", bad_codec.freeze(), 9).error_code,
        corrupt
    );
    // Nothing of any of them was stored.
    assert_eq!(list_offset(&mut c, "t", -1).1, 0);
    // A sound batch lands at offset 0, and timestamp lookups work.
    let ok = produce_v(&mut c, "t", batch(2, "x", Compression::None), 9);
    assert_eq!((ok.error_code, ok.base_offset), (0, 0));
    assert_eq!(list_offset(&mut c, "t", 0).0, 0);
    // A header whose max timestamp lies is corrected from the records.
    let now = now_ms();
    let mut liar = BytesMut::from(
        &keyed_batch(&[Some("a"), Some("b")], &[now, now + 7], Compression::None)[..],
    );
    liar[35..43].copy_from_slice(&(now + 999_999).to_be_bytes());
    reframe(&mut liar);
    assert_eq!(produce_v(&mut c, "t", liar.freeze(), 9).error_code, 0);
    let (err, offset, ts) = list_offset(&mut c, "t", -3);
    assert_eq!((err, offset, ts), (0, 3, now + 7));
    assert!(n.exit_status().is_none());
}

#[test]
fn bad_records_are_named_by_index_kip_467() {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(d.path(), &[]);
    let mut c = n.client();
    assert_eq!(
        create_topic(&mut c, "compacted", 1, 1, &[("cleanup.policy", "compact")]),
        0
    );
    let now = now_ms();
    let keys: Vec<Option<&str>> = (0..10)
        .map(|i| if i % 4 == 0 { None } else { Some("k") })
        .collect();
    let ts = vec![now; 10];
    for codec in [Compression::None, Compression::Snappy] {
        let r = produce_v(&mut c, "compacted", keyed_batch(&keys, &ts, codec), 9);
        assert_eq!(r.error_code, ResponseError::InvalidRecord.code());
        let idx: Vec<i32> = r.record_errors.iter().map(|e| e.batch_index).collect();
        assert_eq!(idx, vec![0, 4, 8]);
        assert!(r.record_errors[0]
            .batch_index_error_message
            .as_ref()
            .is_some_and(|m| m.contains("key")));
        assert!(r.error_message.is_some());
    }
    // Before v8 there is no field for them: the code alone.
    let r = produce_v(
        &mut c,
        "compacted",
        keyed_batch(&keys, &ts, Compression::None),
        7,
    );
    assert_eq!(r.error_code, ResponseError::InvalidRecord.code());
    // Timestamps out of range, per record.
    assert_eq!(
        create_topic(
            &mut c,
            "strict",
            1,
            1,
            &[("message.timestamp.difference.max.ms", "60000")]
        ),
        0
    );
    let r = produce_v(
        &mut c,
        "strict",
        keyed_batch(
            &[Some("a"), Some("b"), Some("c")],
            &[now, now - 3_600_000, now],
            Compression::Gzip,
        ),
        9,
    );
    assert_eq!(r.error_code, ResponseError::InvalidTimestamp.code());
    let idx: Vec<i32> = r.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(idx, vec![1]);
    assert_eq!(list_offset(&mut c, "strict", -1).1, 0);
}

/// A Fetch naming one partition `times` times, with no byte limits.
fn duplicated_unbounded_fetch(topic: &str, times: usize) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(
                (0..times)
                    .map(|_| {
                        FetchPartition::default()
                            .with_partition(0)
                            .with_partition_max_bytes(i32::MAX)
                    })
                    .collect(),
            )])
}

/// About `mb` megabytes in partition 0 of `topic`, in batches of ~900 KB.
fn fill(c: &mut Client, topic: &str, mb: usize) {
    let value = "x".repeat(900 << 10);
    for i in 0..mb * 10 / 9 {
        let r = produce_v(c, topic, keyed_batch_values(&[Some("k")], &value, i), 9);
        assert_eq!(r.error_code, 0);
    }
}

fn keyed_batch_values(keys: &[Option<&str>], value: &str, salt: usize) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let key = k.map(|k| Bytes::from(format!("{k}{salt}")));
            plain_record(
                i as i64,
                now_ms(),
                key,
                Some(Bytes::from(value.to_string())),
            )
        })
        .collect();
    encode_v2(&records, Compression::None).unwrap()
}

#[test]
fn fetch_answers_are_bounded_and_each_partition_answered_once() {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(d.path(), &["--fetch-max-bytes", "4194304"]);
    let mut c = n.client();
    assert_eq!(create_topic(&mut c, "big", 1, 1, &[]), 0);
    fill(&mut c, "big", 10);
    let r = c.send(&duplicated_unbounded_fetch("big", 100), 4);
    assert_eq!(r.responses.len(), 1);
    let parts = &r.responses[0].partitions;
    assert_eq!(
        parts.len(),
        1,
        "a partition named 100 times is answered once"
    );
    let bytes = parts[0].records.as_ref().map_or(0, |b| b.len());
    // fetch.max.bytes, plus at most the one batch KIP-74 lets through.
    assert!(bytes > 0 && bytes <= (4 << 20) + (1 << 20), "{bytes} bytes");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn ten_parallel_duplicated_unbounded_fetches_stay_within_the_memory_pool() {
    let d = tempfile::tempdir().unwrap();
    let pool = 32u64 << 20;
    let n = Node::start(d.path(), &["--queued-max-request-bytes", &pool.to_string()]);
    let mut c = n.client();
    assert_eq!(create_topic(&mut c, "big", 1, 1, &[]), 0);
    fill(&mut c, "big", 10);
    // Warm: one answer read, so caches and allocator arenas are in place.
    c.send(&duplicated_unbounded_fetch("big", 100), 4);
    let before = rss_kib(n.pid(), "VmRSS:");
    let addr = n.kafka;
    let workers: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..5 {
                    let r = c.send(&duplicated_unbounded_fetch("big", 100), 4);
                    assert_eq!(r.responses[0].partitions.len(), 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let peak = rss_kib(n.pid(), "VmHWM:");
    let grew_mib = peak.saturating_sub(before) / 1024;
    println!(
        "RSS before {} MiB, peak during {} MiB",
        before / 1024,
        peak / 1024
    );
    // Answers are built in the pool (32 MiB); allocator slack and RocksDB's
    // reads add a bounded amount. Unbounded, each answer alone was ~1 GB.
    assert!(grew_mib < 160, "the node grew by {grew_mib} MiB");
}

#[test]
fn idle_and_stalled_connections_are_closed_and_busy_ones_kept() {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(
        d.path(),
        &[
            "--connections-max-idle-ms",
            "400",
            "--request-read-timeout-ms",
            "400",
        ],
    );
    let closed_within = |mut s: TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let started = Instant::now();
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0)),
            "still open after {:?}: {r:?}",
            started.elapsed()
        );
        started.elapsed()
    };
    // Idle: no request at all.
    let idle = TcpStream::connect(n.kafka).unwrap();
    closed_within(idle, Duration::from_secs(5));
    // A sender announcing 100 MB and sending 10 bytes of it.
    let mut slow = TcpStream::connect(n.kafka).unwrap();
    slow.write_all(&100_000_000i32.to_be_bytes()).unwrap();
    slow.write_all(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 0]).unwrap();
    closed_within(slow, Duration::from_secs(5));
    // Half a length prefix.
    let mut half = TcpStream::connect(n.kafka).unwrap();
    half.write_all(&[0, 0]).unwrap();
    closed_within(half, Duration::from_secs(5));
    // A client sending requests more often than the idle limit stays.
    let mut busy = n.client();
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        busy.send(&ApiVersionsRequest::default(), 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = n.http_get("/metrics");
    for reason in ["idle", "read_timeout"] {
        assert!(
            metrics.contains(&format!(
                "sluice_kafka_connections_closed_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
}

/// Whether the node answers an ApiVersions on a new connection.
fn answers(addr: std::net::SocketAddr) -> Option<Client> {
    let mut c = Client::connect(addr);
    c.try_send(&ApiVersionsRequest::default(), 0).map(|_| c)
}

#[test]
fn connections_are_capped_in_all_and_per_address() {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(d.path(), &["--max-connections-per-ip", "4"]);
    let held: Vec<Client> = (0..4)
        .map(|_| answers(n.kafka).expect("admitted"))
        .collect();
    assert!(
        answers(n.kafka).is_none(),
        "a fifth connection from one address"
    );
    drop(held);
    wait_for(Duration::from_secs(5), || answers(n.kafka));

    let d2 = tempfile::tempdir().unwrap();
    let n2 = Node::start(d2.path(), &["--max-connections", "3"]);
    let held: Vec<Client> = (0..3)
        .map(|_| answers(n2.kafka).expect("admitted"))
        .collect();
    assert!(answers(n2.kafka).is_none(), "a fourth connection in all");
    drop(held);
    wait_for(Duration::from_secs(5), || answers(n2.kafka));
}

#[test]
fn deleting_a_2000_partition_topic_answers_in_time_and_creation_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let mut n = Node::start(d.path(), &[]);
    let mut c = n.client();
    assert_eq!(create_topic(&mut c, "wide", 2_000, 1, &[]), 0);
    for _ in 0..20 {
        assert_eq!(
            produce_v(&mut c, "wide", batch(10, "x", Compression::None), 9).error_code,
            0
        );
    }
    let started = Instant::now();
    let r = c.send(
        &DeleteTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topic_names(vec![tn("wide")]),
        4,
    );
    let took = started.elapsed();
    assert_eq!(r.responses[0].error_code, 0);
    assert!(took < Duration::from_secs(5), "DeleteTopics took {took:?}");
    let started = Instant::now();
    assert_eq!(create_topic(&mut c, "after", 1, 1, &[]), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    let md = c.send(&MetadataRequest::default().with_topics(None), 12);
    assert!(md.topics.iter().all(|t| t.name != Some(tn("wide"))));
    // SIGTERM is honoured promptly.
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &n.pid().to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(Duration::from_secs(10), || n.exit_status());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Runs `sluice dev` until it exits or says it is ready; returns (ready,
/// stderr).
fn start_and_collect(data_dir: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).ok();
    let ready = out.contains("sluice ready");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).ok();
    (ready, err)
}

/// A tmpfs of a few megabytes, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(mb: usize) -> Option<SmallDisk> {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(d.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(d))
    }
    /// Fills the disk with a file until it is full; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        let p = self.0.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_stops_writes_cleanly_and_they_resume_when_space_returns() {
    // Room for the store and for RocksDB's recovery rule: writes resume
    // once a memtable's worth (64 MiB) is free again.
    let Some(disk) = SmallDisk::mount(192) else {
        // Mounting needs root (CI runs as root); say so rather than pass.
        panic!("this test mounts a 192 MiB tmpfs and needs root; run the tests as root");
    };
    let data = disk.0.path().join("data");
    let mut n = Node::start(&data, &[]);
    let mut c = n.client();
    assert_eq!(create_topic(&mut c, "t", 1, 1, &[]), 0);
    assert_eq!(
        produce_v(&mut c, "t", batch(10, "x", Compression::None), 9).error_code,
        0
    );
    let filler = disk.fill();
    // Writes now fail with KAFKA_STORAGE_ERROR; reads go on; not ready.
    let storage = ResponseError::KafkaStorageError.code();
    // The write-ahead log has room preallocated: write until it is used.
    let big = keyed_batch_values(&[Some("k")], &"y".repeat(900 << 10), 0);
    wait_for(Duration::from_secs(60), || {
        (produce_v(&mut c, "t", big.clone(), 9).error_code == storage).then_some(())
    });
    let (err, end, _) = list_offset(&mut c, "t", -1);
    assert_eq!(err, 0);
    assert_eq!(
        produce_v(&mut c, "t", batch(50, "y", Compression::None), 9).error_code,
        storage
    );
    assert_eq!(
        list_offset(&mut c, "t", -1),
        (0, end, -1),
        "nothing half-written"
    );
    let (status, body) = n.http_get("/readyz");
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("storage"), "{body}");
    // Space comes back: so do writes, and readiness.
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(60), || {
        (produce_v(&mut c, "t", batch(5, "z", Compression::None), 9).error_code == 0).then_some(())
    });
    let (status, _) = n.http_get("/readyz");
    assert!(status.contains("200"), "{status}");
    assert!(n.exit_status().is_none());
    // A start with too little space says why it cannot start.
    n.kill9();
    let filler = disk.fill();
    let (ready, stderr) = start_and_collect(&data);
    if !ready {
        assert!(
            stderr.to_lowercase().contains("space"),
            "the exit does not say why: {stderr}"
        );
        assert!(!stderr.contains("channel closed"), "{stderr}");
    }
    std::fs::remove_file(&filler).unwrap();
    // And with space again it starts and has every acknowledged record.
    n.restart();
    let mut c = n.client();
    let (err, after, _) = list_offset(&mut c, "t", -1);
    assert_eq!(err, 0);
    assert!(
        after >= end + 5,
        "log end {after}, was {end} when the disk filled"
    );
}

#[test]
fn a_poisoned_batch_on_disk_cannot_crash_the_node() {
    use sluice_node::log::{PartitionLog, Store, StoreOptions, TimestampType as Ts};
    let d = tempfile::tempdir().unwrap();
    let mut n = Node::start(d.path(), &["--log-cleaner-backoff-ms", "50"]);
    let mut c = n.client();
    assert_eq!(
        create_topic(
            &mut c,
            "poison",
            1,
            1,
            &[
                ("cleanup.policy", "compact"),
                ("min.cleanable.dirty.ratio", "0.01")
            ]
        ),
        0
    );
    assert_eq!(create_topic(&mut c, "healthy", 1, 1, &[]), 0);
    for t in ["poison", "healthy"] {
        assert_eq!(
            produce_v(&mut c, t, batch(5, "ok", Compression::None), 9).error_code,
            0
        );
    }
    n.kill9();
    // Written straight into the store, past every check a produce makes:
    // a count of 2^31-1 over one record, and noise where records should be.
    {
        let store = Store::open(&d.path().join("rocksdb"), StoreOptions::default()).unwrap();
        let (_, json) = store
            .list_topics()
            .unwrap()
            .into_iter()
            .find(|(name, _)| name == "poison")
            .unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let id: uuid::Uuid = spec["id"].as_str().unwrap().parse().unwrap();
        let log = PartitionLog::open(store, &id, 0).unwrap();
        let now = now_ms();
        log.append_committed(&garbage_records(), 0, Ts::CreateTime, now)
            .unwrap();
        log.append_committed(&lying_count(i32::MAX), 0, Ts::CreateTime, now)
            .unwrap();
    }
    for round in 0..2 {
        n.restart();
        let mut c = n.client();
        // The healthy topic serves as before.
        assert_eq!(
            list_offset(&mut c, "healthy", -1).1,
            5 + round,
            "round {round}"
        );
        assert_eq!(
            produce_v(&mut c, "healthy", batch(1, "more", Compression::None), 9).error_code,
            0
        );
        // Every reader of the poisoned partition answers.
        let (err, _, _) = list_offset(&mut c, "poison", 0);
        assert!(
            err == 0 || err == ResponseError::CorruptMessage.code(),
            "timestamp lookup: {err}"
        );
        list_offset(&mut c, "poison", -3);
        let r = c.send(
            &FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(tn("poison"))
                    .with_partitions(vec![
                        FetchPartition::default().with_partition_max_bytes(1 << 20)
                    ])]),
            12,
        );
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
        // The cleaner gives up on that partition, and only that one.
        wait_for(Duration::from_secs(30), || {
            let (_, m) = n.http_get("/metrics");
            m.contains("sluice_log_cleaner_uncleanable_partitions 1")
                .then_some(())
        });
        assert!(n.exit_status().is_none(), "round {round}");
    }
}
