//! The node's Kafka protocol surface, exercised against the real binary:
//! every advertised API at every advertised version, and every bad-input path.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch, batch_at, idempotent_batch, wait_for, Client, Node};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
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

fn create(c: &mut Client, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    common::create_topic(c, name, partitions, 1, configs)
}

fn produce_req(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

fn produce(
    c: &mut Client,
    topic: &str,
    partition: i32,
    records: Bytes,
    version: i16,
) -> (i16, i64) {
    let r = c.send(&produce_req(topic, partition, records, -1), version);
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_req(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

fn fetch(
    c: &mut Client,
    topic: &str,
    partition: i32,
    offset: i64,
    version: i16,
) -> fetch_response::PartitionData {
    let r = c.send(&fetch_req(topic, partition, offset, 0), version);
    r.responses[0].partitions[0].clone()
}

fn values(records: &Bytes) -> Vec<(i64, String)> {
    let mut b = records.clone();
    let mut out = vec![];
    for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
        for r in set.records {
            out.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    out
}

fn list_offset(
    c: &mut Client,
    topic: &str,
    partition: i32,
    ts: i64,
    version: i16,
) -> list_offsets_response::ListOffsetsPartitionResponse {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(ts)])]);
    c.send(&req, version).topics[0].partitions[0].clone()
}

fn node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    (dir, node)
}

#[test]
fn api_versions_lists_every_handled_api_at_every_version() {
    let (_d, n) = node();
    let mut c = n.client();
    for v in 0..=3 {
        let r = c.send(&ApiVersionsRequest::default(), v);
        assert_eq!(r.error_code, 0, "v{v}");
        let keys: Vec<i16> = r.api_keys.iter().map(|k| k.api_key).collect();
        for api in [
            0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 28,
            32, 33, 35, 37, 42, 43, 44, 45, 46, 47, 60, 61, 65, 66, 75,
        ] {
            assert!(keys.contains(&api), "v{v} lacks api {api}");
        }
    }
    // A version the node does not know gets the v0 answer with the error (KIP-511).
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&99i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    let mut resp = c.raw(&body).expect("answered");
    use kafka_protocol::protocol::Decodable;
    let h = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(h.correlation_id, 7);
    let r = ApiVersionsResponse::decode(&mut resp, 0).unwrap();
    assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == 18 && k.max_version == 3));
}

#[test]
fn every_version_of_every_api_round_trips() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "matrix", 2, &[]), 0);
    // Produce 3..=9, each appends one more batch of 5.
    let mut expected = 0;
    for v in 3..=9 {
        let (err, base) = produce(
            &mut c,
            "matrix",
            0,
            batch(5, &format!("v{v}-"), Compression::None),
            v,
        );
        assert_eq!((err, base), (0, expected), "produce v{v}");
        expected += 5;
    }
    for v in 4..=12 {
        let p = fetch(&mut c, "matrix", 0, 0, v);
        assert_eq!(p.error_code, 0, "fetch v{v}");
        assert_eq!(p.high_watermark, expected, "fetch v{v}");
        assert_eq!(
            values(p.records.as_ref().unwrap()).len() as i64,
            expected,
            "fetch v{v}"
        );
    }
    for v in 1..=7 {
        assert_eq!(
            list_offset(&mut c, "matrix", 0, -1, v).offset,
            expected,
            "list offsets v{v}"
        );
        assert_eq!(
            list_offset(&mut c, "matrix", 0, -2, v).offset,
            0,
            "list offsets v{v}"
        );
    }
    for v in 0..=12 {
        let req = if v == 0 {
            MetadataRequest::default().with_topics(Some(vec![]))
        } else {
            MetadataRequest::default().with_topics(None)
        };
        let r = c.send(&req, v);
        assert_eq!(r.brokers.len(), 1, "metadata v{v}");
        assert_eq!(
            r.brokers[0].port,
            i32::from(n.kafka.port()),
            "metadata v{v}"
        );
        let t = r
            .topics
            .iter()
            .find(|t| t.name.as_deref().map(|x| x.as_str()) == Some("matrix"))
            .unwrap();
        assert_eq!(t.partitions.len(), 2, "metadata v{v}");
        if v >= 10 {
            assert!(!t.topic_id.is_nil(), "metadata v{v} topic id");
        }
    }
    for v in 2..=7 {
        let name = format!("created-v{v}");
        let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(tn(&name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)]);
        let r = c.send(&req, v);
        assert_eq!(r.topics[0].error_code, 0, "create topics v{v}");
        if v >= 5 {
            assert_eq!(r.topics[0].num_partitions, 1);
        }
    }
    for v in 1..=6 {
        let name = format!("created-v{}", v + 1);
        let req = if v >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![DeleteTopicState::default().with_name(Some(tn(&name)))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![tn(&name)])
        };
        let r = c.send(&req, v);
        assert_eq!(r.responses[0].error_code, 0, "delete topics v{v}");
    }
    for v in 0..=3 {
        let req =
            CreatePartitionsRequest::default().with_topics(vec![CreatePartitionsTopic::default()
                .with_name(tn("matrix"))
                .with_count(3 + v as i32)]);
        let r = c.send(&req, v);
        assert_eq!(r.results[0].error_code, 0, "create partitions v{v}");
    }
    for v in 1..=4 {
        let req = DescribeConfigsRequest::default()
            .with_include_synonyms(true)
            .with_include_documentation(v >= 3)
            .with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("matrix")),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("0")),
            ]);
        let r = c.send(&req, v);
        assert!(
            r.results.iter().all(|x| x.error_code == 0),
            "describe configs v{v}"
        );
        assert!(r.results[0]
            .configs
            .iter()
            .any(|e| e.name.as_str() == "retention.ms"));
        assert!(r.results[1]
            .configs
            .iter()
            .any(|e| e.name.as_str() == "num.partitions"));
    }
    for v in 0..=1 {
        let r = c.send(
            &DescribeClusterRequest::default()
                .with_endpoint_type(1)
                .with_include_cluster_authorized_operations(true),
            v,
        );
        assert_eq!(r.error_code, 0, "describe cluster v{v}");
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.cluster_authorized_operations, 8096, "every cluster op");
    }
}

#[test]
fn describe_topic_partitions_pages_with_a_cursor() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "dtp-a", 3, &[]), 0);
    assert_eq!(create(&mut c, "dtp-b", 2, &[]), 0);
    let req = |names: &[&str], limit: i32, cursor: Option<(&str, i32)>| {
        DescribeTopicPartitionsRequest::default()
            .with_topics(
                names
                    .iter()
                    .map(|n| TopicRequest::default().with_name(tn(n)))
                    .collect(),
            )
            .with_response_partition_limit(limit)
            .with_cursor(cursor.map(|(t, p)| {
                Cursor::default()
                    .with_topic_name(tn(t))
                    .with_partition_index(p)
            }))
    };
    let seen = |r: &DescribeTopicPartitionsResponse| -> Vec<(String, i32)> {
        r.topics
            .iter()
            .flat_map(|t| {
                let name = t.name.as_ref().unwrap().to_string();
                t.partitions
                    .iter()
                    .map(move |p| (name.clone(), p.partition_index))
            })
            .collect()
    };
    // Four at a time: a, a, a, b; then b's last one.
    let r = c.send(&req(&["dtp-b", "dtp-a"], 4, None), 0);
    assert_eq!(
        seen(&r),
        vec![
            ("dtp-a".into(), 0),
            ("dtp-a".into(), 1),
            ("dtp-a".into(), 2),
            ("dtp-b".into(), 0)
        ]
    );
    let next = r.next_cursor.clone().expect("more to come");
    assert_eq!(
        (next.topic_name.as_str(), next.partition_index),
        ("dtp-b", 1)
    );
    let t = &r.topics[0];
    assert_eq!(t.topic_authorized_operations, 3576, "every topic op");
    assert_ne!(t.topic_id, uuid::Uuid::nil());
    let p = &t.partitions[0];
    assert_eq!((p.leader_id.0, p.leader_epoch), (0, 0));
    assert_eq!(p.isr_nodes.len(), 1);
    let r = c.send(&req(&["dtp-b", "dtp-a"], 4, Some(("dtp-b", 1))), 0);
    assert_eq!(seen(&r), vec![("dtp-b".into(), 1)]);
    assert!(r.next_cursor.is_none());
    // Unknown topics answer UNKNOWN_TOPIC_OR_PARTITION; no names means all.
    let r = c.send(&req(&["nope"], 10, None), 0);
    assert_eq!(
        r.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let r = c.send(&req(&[], 500, None), 0);
    let all = seen(&r);
    assert!(all.contains(&("dtp-a".into(), 2)) && all.contains(&("dtp-b".into(), 1)));
}

#[test]
fn compressed_batches_are_served_back_unchanged() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "codecs", 1, &[]), 0);
    let mut sent = vec![];
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let b = batch(20, &format!("{codec:?}-"), codec);
        let (err, base) = produce(&mut c, "codecs", 0, b.clone(), 9);
        assert_eq!(err, 0);
        sent.push((base, b));
    }
    let p = fetch(&mut c, "codecs", 0, 0, 12);
    let got = p.records.unwrap();
    // Same bytes as produced, but for the offset the node assigned.
    let mut pos = 0;
    for (base, b) in &sent {
        let stored = &got[pos..pos + b.len()];
        assert_eq!(i64::from_be_bytes(stored[..8].try_into().unwrap()), *base);
        assert_eq!(&stored[8..12], &b[8..12]);
        assert_eq!(&stored[16..], &b[16..]);
        pos += b.len();
    }
    assert_eq!(pos, got.len());
    assert_eq!(values(&got).len(), 100);
}

#[test]
fn a_topic_codec_recompresses_every_batch() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(
        create(&mut c, "zstd", 1, &[("compression.type", "zstd")]),
        0
    );
    let codec_at = |records: &Bytes, pos: usize| records[pos + 22] & 0x07;
    let mut want = vec![];
    for codec in [Compression::None, Compression::Gzip, Compression::Lz4] {
        let b = batch(20, &format!("{codec:?}-"), codec);
        assert_eq!(produce(&mut c, "zstd", 0, b.clone(), 9).0, 0);
        want.extend(values(&b).into_iter().map(|(_, v)| v));
    }
    let got = fetch(&mut c, "zstd", 0, 0, 12).records.unwrap();
    let mut pos = 0;
    while pos < got.len() {
        assert_eq!(codec_at(&got, pos), Compression::Zstd as u8);
        pos += 12 + i32::from_be_bytes(got[pos + 8..pos + 12].try_into().unwrap()) as usize;
    }
    let read: Vec<String> = values(&got).into_iter().map(|(_, v)| v).collect();
    assert_eq!(read, want);
    assert_eq!(values(&got)[59].0, 59, "offsets as assigned");
    // `producer` keeps the next batch as sent; `uncompressed` decompresses.
    assert_eq!(
        alter(&mut c, "zstd", &[("compression.type", "producer")], false),
        0
    );
    let (_, base) = produce(&mut c, "zstd", 0, batch(5, "g", Compression::Gzip), 9);
    let got = fetch(&mut c, "zstd", 0, base, 12).records.unwrap();
    assert_eq!(codec_at(&got, 0), Compression::Gzip as u8);
    assert_eq!(
        alter(
            &mut c,
            "zstd",
            &[("compression.type", "uncompressed")],
            false
        ),
        0
    );
    let (_, base) = produce(&mut c, "zstd", 0, batch(5, "s", Compression::Snappy), 9);
    let got = fetch(&mut c, "zstd", 0, base, 12).records.unwrap();
    assert_eq!(codec_at(&got, 0), 0);
    assert_eq!(values(&got).len(), 5);
    assert_eq!(
        alter(&mut c, "zstd", &[("compression.type", "brotli")], false),
        ResponseError::InvalidConfig.code()
    );
}

#[test]
fn message_timestamp_difference_max_ms_refuses_far_timestamps() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(
        create(
            &mut c,
            "clock",
            1,
            &[("message.timestamp.difference.max.ms", "60000")]
        ),
        0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = batch_at(1, "old", Compression::None, now - 3_600_000);
    assert_eq!(
        produce(&mut c, "clock", 0, old.clone(), 9).0,
        ResponseError::InvalidTimestamp.code()
    );
    let fresh = batch_at(1, "fresh", Compression::None, now);
    assert_eq!(produce(&mut c, "clock", 0, fresh, 9), (0, 0));
    // Widened, the old record is taken; LogAppendTime topics ignore the rule.
    assert_eq!(
        alter(
            &mut c,
            "clock",
            &[("message.timestamp.difference.max.ms", "7200000")],
            false
        ),
        0
    );
    assert_eq!(produce(&mut c, "clock", 0, old.clone(), 9), (0, 1));
    assert_eq!(
        alter(
            &mut c,
            "clock",
            &[
                ("message.timestamp.difference.max.ms", "1"),
                ("message.timestamp.type", "LogAppendTime")
            ],
            false
        ),
        0
    );
    assert_eq!(produce(&mut c, "clock", 0, old, 9), (0, 2));
}

#[test]
fn log_append_time_topics_stamp_the_broker_time() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(
        create(
            &mut c,
            "lat",
            1,
            &[("message.timestamp.type", "LogAppendTime")]
        ),
        0
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let r = c.send(
        &produce_req("lat", 0, batch_at(3, "x", Compression::Lz4, 1_000), -1),
        9,
    );
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    assert!(p.log_append_time_ms >= before);
    let f = fetch(&mut c, "lat", 0, 0, 12);
    // Consumers take every record's time from the batch's max timestamp when
    // the batch says LogAppendTime (attribute bit 3).
    let b = f.records.unwrap();
    let attributes = i16::from_be_bytes([b[21], b[22]]);
    let max_timestamp = i64::from_be_bytes(b[35..43].try_into().unwrap());
    assert_eq!(attributes & 0x08, 0x08);
    assert_eq!(max_timestamp, p.log_append_time_ms);
    let mut b = b.clone();
    let set = RecordBatchDecoder::decode(&mut b).unwrap();
    assert!(set
        .records
        .iter()
        .all(|r| r.timestamp_type == kafka_protocol::records::TimestampType::LogAppend));
}

#[test]
fn list_offsets_by_timestamp() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "times", 1, &[]), 0);
    produce(
        &mut c,
        "times",
        0,
        batch_at(10, "a", Compression::None, 10_000),
        9,
    );
    produce(
        &mut c,
        "times",
        0,
        batch_at(10, "b", Compression::Zstd, 20_000),
        9,
    );
    let r = list_offset(&mut c, "times", 0, 10_005, 7);
    assert_eq!((r.offset, r.timestamp), (5, 10_005));
    let r = list_offset(&mut c, "times", 0, 15_000, 7);
    assert_eq!((r.offset, r.timestamp), (10, 20_000));
    let r = list_offset(&mut c, "times", 0, 99_000, 7);
    assert_eq!(r.offset, -1);
    let r = list_offset(&mut c, "times", 0, -3, 7);
    assert_eq!((r.offset, r.timestamp), (19, 20_009));
}

#[test]
fn fetch_long_polls_until_data_arrives() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "poll", 1, &[]), 0);
    let addr = n.kafka;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let started = Instant::now();
        let r = c.send(&fetch_req("poll", 0, 0, 20_000), 12);
        (r.responses[0].partitions[0].clone(), started.elapsed())
    });
    // Produce only once the fetch is parked on the node.
    wait_for(Duration::from_secs(10), || {
        let (_, body) = n.http_get("/metrics");
        body.contains("sluice_kafka_fetches_waiting 1")
            .then_some(())
    });
    produce(&mut c, "poll", 0, batch(1, "late", Compression::None), 9);
    let (p, waited) = waiter.join().unwrap();
    assert_eq!(
        values(p.records.as_ref().unwrap()),
        vec![(0, "late0".to_string())]
    );
    assert!(
        waited < Duration::from_secs(20),
        "woken by the append, not the timeout"
    );
    // The wake-up is measured, and the fetch no longer counts as parked.
    let (_, body) = n.http_get("/metrics");
    assert!(body.contains("sluice_kafka_fetches_waiting 0"), "{body}");
    assert!(
        body.contains("sluice_fetch_wake_duration_seconds_count{fetcher=\"consumer\"} 1"),
        "{body}"
    );
    // With nothing to read, max_wait_ms bounds the wait and the answer is empty.
    let r = c.send(&fetch_req("poll", 0, 1, 200), 12);
    assert_eq!(
        r.responses[0].partitions[0].records.as_ref().unwrap().len(),
        0
    );
}

#[test]
fn fetch_respects_max_bytes_but_returns_one_whole_batch() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "big", 2, &[]), 0);
    for _ in 0..3 {
        produce(&mut c, "big", 0, batch(100, "x", Compression::None), 9);
        produce(&mut c, "big", 1, batch(100, "y", Compression::None), 9);
    }
    let mut req = fetch_req("big", 0, 0, 0);
    req.max_bytes = 10;
    req.topics[0].partitions[0].partition_max_bytes = 10;
    req.topics[0].partitions.push(
        FetchPartition::default()
            .with_partition(1)
            .with_fetch_offset(0)
            .with_partition_max_bytes(10),
    );
    let r = c.send(&req, 12);
    let first = values(r.responses[0].partitions[0].records.as_ref().unwrap());
    let second = r.responses[0].partitions[1].records.as_ref().unwrap();
    assert_eq!(first.len(), 100, "exactly one whole batch");
    assert!(second.is_empty(), "limits apply after the first batch");
}

#[test]
fn bad_frames_close_only_their_connection() {
    let (_d, n) = node();
    let mut good = n.client();
    assert_eq!(create(&mut good, "ok", 1, &[]), 0);

    // Length prefix over socket.request.max.bytes: refused before reading it.
    let mut c = n.client();
    c.write_bytes(&(200 * 1024 * 1024i32).to_be_bytes());
    assert!(c.is_closed());
    // Negative length.
    let mut c = n.client();
    c.write_bytes(&(-5i32).to_be_bytes());
    assert!(c.is_closed());
    // Too short for a header.
    let mut c = n.client();
    assert!(c.raw(&[0, 3]).is_none());
    // Garbage with a valid length.
    let mut c = n.client();
    assert!(c.raw(&[0xff; 64]).is_none());
    // Unknown API key.
    let mut c = n.client();
    assert!(c.raw(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff]).is_none());
    // Unsupported version of a known API (Produce v0 uses the old message format).
    let mut c = n.client();
    assert!(c
        .raw(&[0, 0, 0, 2, 0, 0, 0, 1, 0xff, 0xff, 0, 1, 0, 0, 0, 0])
        .is_none());
    // A Metadata request whose body is cut short.
    let mut c = n.client();
    let mut body = vec![0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0];
    body.extend_from_slice(&[2, 0xff]);
    assert!(c.raw(&body).is_none());
    // A frame that ends mid-way and then the socket closes.
    let mut c = n.client();
    c.write_bytes(&[0, 0, 0, 100, 0, 3, 0, 1]);
    drop(c);

    // The node still serves everyone else.
    let (err, base) = produce(&mut good, "ok", 0, batch(2, "x", Compression::None), 9);
    assert_eq!((err, base), (0, 0));
    let (_, metrics) = n.http_get("/metrics");
    for reason in [
        "too_large",
        "too_short",
        "unknown_api",
        "unsupported_version",
        "malformed",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted"
        );
    }
}

#[test]
fn bad_requests_get_kafka_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(
        dir.path(),
        &[
            "--message-max-bytes",
            "2000",
            "--auto-create-topics",
            "false",
        ],
    );
    let mut c = n.client();
    assert_eq!(create(&mut c, "t", 2, &[]), 0);

    // CRC mismatch.
    let mut b = batch(3, "x", Compression::None).to_vec();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert_eq!(
        produce(&mut c, "t", 0, Bytes::from(b), 9).0,
        ResponseError::CorruptMessage.code()
    );
    // Truncated batch.
    let b = batch(3, "x", Compression::None);
    assert_eq!(
        produce(&mut c, "t", 0, b.slice(..b.len() - 3), 9).0,
        ResponseError::CorruptMessage.code()
    );
    // Batch over max.message.bytes.
    assert_eq!(
        produce(&mut c, "t", 0, batch(500, "x", Compression::None), 9).0,
        ResponseError::MessageTooLarge.code()
    );
    // Two batches in one partition's records.
    let two = [
        batch(1, "a", Compression::None),
        batch(1, "b", Compression::None),
    ]
    .concat();
    assert_eq!(
        produce(&mut c, "t", 0, Bytes::from(two), 9).0,
        ResponseError::InvalidRecord.code()
    );
    // Bad acks.
    let r = c.send(&produce_req("t", 0, batch(1, "x", Compression::None), 2), 9);
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::InvalidRequiredAcks.code()
    );
    // Unknown topic and partition, for produce and fetch.
    assert_eq!(
        produce(&mut c, "nope", 0, batch(1, "x", Compression::None), 9).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        produce(&mut c, "t", 7, batch(1, "x", Compression::None), 9).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        produce(&mut c, "t", -1, batch(1, "x", Compression::None), 9).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        fetch(&mut c, "nope", 0, 0, 12).error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        fetch(&mut c, "t", 9, 0, 12).error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // Negative and out-of-range offsets.
    assert_eq!(
        fetch(&mut c, "t", 0, -1, 12).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(
        fetch(&mut c, "t", 0, 5, 12).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    // Stale leader epochs.
    let mut req = fetch_req("t", 0, 0, 0);
    req.topics[0].partitions[0].current_leader_epoch = 3;
    assert_eq!(
        c.send(&req, 12).responses[0].partitions[0].error_code,
        ResponseError::UnknownLeaderEpoch.code()
    );
    // Invalid topic names, for create and metadata.
    for bad in ["has space", "..", "ü"] {
        assert_eq!(
            create(&mut c, bad, 1, &[]),
            ResponseError::InvalidTopicException.code(),
            "{bad}"
        );
    }
    let md = c.send(
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(tn("bad name")))
        ])),
        12,
    );
    assert_eq!(
        md.topics[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    // Auto-creation is off here: unknown topics stay unknown.
    let md = c.send(
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(tn("ghost")))
            ]))
            .with_allow_auto_topic_creation(true),
        12,
    );
    assert_eq!(
        md.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // Topic config errors.
    assert_eq!(
        create(&mut c, "cfg", 1, &[("retention.ms", "soon")]),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        create(&mut c, "cfg", 1, &[("no.such.config", "1")]),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        create(&mut c, "cfg", 0, &[]),
        ResponseError::InvalidPartitions.code()
    );
    assert_eq!(
        create(&mut c, "t", 1, &[]),
        ResponseError::TopicAlreadyExists.code()
    );
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(tn("rf"))
        .with_num_partitions(1)
        .with_replication_factor(3)]);
    assert_eq!(
        c.send(&req, 7).topics[0].error_code,
        ResponseError::InvalidReplicationFactor.code()
    );
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(tn("t"))
            .with_count(1)]);
    assert_eq!(
        c.send(&req, 3).results[0].error_code,
        ResponseError::InvalidPartitions.code()
    );
    let req = DeleteTopicsRequest::default().with_topic_names(vec![tn("nope")]);
    assert_eq!(
        c.send(&req, 5).responses[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );

    // None of it changed the log or the topic list.
    let md = c.send(&MetadataRequest::default().with_topics(None), 12);
    let mut names: Vec<String> = md
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["__consumer_offsets", "__transaction_state", "t"]
    );
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some("t"))
        .unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(list_offset(&mut c, "t", 0, -1, 7).offset, 0);
    let (err, base) = produce(&mut c, "t", 0, batch(3, "x", Compression::None), 9);
    assert_eq!((err, base), (0, 0));
}

#[test]
fn acks_zero_gets_no_response_but_is_written() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "fire", 1, &[]), 0);
    use kafka_protocol::protocol::Encodable;
    let req = produce_req("fire", 0, batch(4, "f", Compression::Snappy), 0);
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(77);
    let mut body = bytes::BytesMut::new();
    header.encode(&mut body, 2).unwrap();
    req.encode(&mut body, 9).unwrap();
    let mut framed = (body.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    c.write_bytes(&framed);
    // The next response on the connection belongs to the next request.
    let r = c.send(&ApiVersionsRequest::default(), 3);
    assert_eq!(r.error_code, 0);
    assert_eq!(list_offset(&mut c, "fire", 0, -1, 7).offset, 4);
}

#[test]
fn data_and_topics_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    let mut c = n.client();
    assert_eq!(create(&mut c, "durable", 3, &[("retention.ms", "-1")]), 0);
    for p in 0..3 {
        for i in 0..10 {
            let (err, _) = produce(
                &mut c,
                "durable",
                p,
                batch(10, &format!("p{p}b{i}-"), Compression::Lz4),
                9,
            );
            assert_eq!(err, 0);
        }
    }
    drop(c);
    n.restart();
    let mut c = n.client();
    for p in 0..3 {
        let f = fetch(&mut c, "durable", p, 0, 12);
        assert_eq!(f.high_watermark, 100);
        let v = values(f.records.as_ref().unwrap());
        assert_eq!(v.len(), 100);
        assert!(v.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
        assert_eq!(v[99].1, format!("p{p}b9-9"));
    }
    // Offsets continue where they stopped.
    assert_eq!(
        produce(
            &mut c,
            "durable",
            0,
            batch(1, "after", Compression::None),
            9
        ),
        (0, 100)
    );
    let md = c.send(
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(tn("durable")))
        ])),
        12,
    );
    assert_eq!(md.topics[0].partitions.len(), 3);
}

#[test]
fn retention_moves_the_log_start_and_older_offsets_go_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &["--log-retention-check-interval-ms", "50"]);
    let mut c = n.client();
    assert_eq!(create(&mut c, "by-time", 1, &[("retention.ms", "1000")]), 0);
    assert_eq!(create(&mut c, "by-size", 1, &[("retention.bytes", "1")]), 0);
    let old = 1_000_000; // 1970: far past any retention window
    produce(
        &mut c,
        "by-time",
        0,
        batch_at(5, "old", Compression::None, old),
        9,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    produce(
        &mut c,
        "by-time",
        0,
        batch_at(5, "new", Compression::None, now + 3_600_000),
        9,
    );
    for _ in 0..3 {
        produce(&mut c, "by-size", 0, batch(5, "s", Compression::None), 9);
    }
    wait_for(Duration::from_secs(10), || {
        (list_offset(&mut c, "by-time", 0, -2, 7).offset == 5).then_some(())
    });
    wait_for(Duration::from_secs(10), || {
        (list_offset(&mut c, "by-size", 0, -2, 7).offset == 10).then_some(())
    });
    assert_eq!(
        fetch(&mut c, "by-time", 0, 0, 12).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    let f = fetch(&mut c, "by-time", 0, 5, 12);
    assert_eq!(f.log_start_offset, 5);
    assert_eq!(values(f.records.as_ref().unwrap())[0].1, "new0");
    // The newest batch is kept even though it alone exceeds retention.bytes.
    assert_eq!(list_offset(&mut c, "by-size", 0, -1, 7).offset, 15);
}

#[test]
fn deleted_topics_are_gone_and_names_reusable() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "gone", 1, &[]), 0);
    produce(&mut c, "gone", 0, batch(5, "x", Compression::None), 9);
    let r = c.send(
        &DeleteTopicsRequest::default().with_topic_names(vec![tn("gone")]),
        5,
    );
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        fetch(&mut c, "gone", 0, 0, 12).error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(create(&mut c, "gone", 1, &[]), 0);
    let f = fetch(&mut c, "gone", 0, 0, 12);
    assert_eq!((f.error_code, f.high_watermark), (0, 0));
}

#[test]
fn health_and_metrics_endpoints() {
    let (_d, n) = node();
    assert!(n.http_get("/healthz").0.contains("200"));
    assert!(n.http_get("/readyz").0.contains("200"));
    let mut c = n.client();
    create(&mut c, "m", 1, &[]);
    produce(&mut c, "m", 0, batch(7, "x", Compression::None), 9);
    let (status, body) = n.http_get("/metrics");
    assert!(status.contains("200"));
    assert!(
        body.contains("sluice_produced_records_total{topic=\"m\"} 7"),
        "{body}"
    );
    assert!(body.contains("sluice_kafka_requests_total{api=\"Produce\"} 1"));
    // Where the produce (acks=all) spent its time.
    for stage in ["queue", "append", "replicate"] {
        assert!(
            body.contains(&format!(
                "sluice_produce_stage_duration_seconds_count{{stage=\"{stage}\"}} 1"
            )),
            "{stage}: {body}"
        );
    }
    // RocksDB's own account: what the node wrote reached the WAL.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
    };
    assert!(value("sluice_store_user_written_bytes_total") > 0.0);
    assert!(value("sluice_store_wal_written_bytes_total") > 0.0);
    assert_eq!(value("sluice_store_write_stall_seconds_total"), 0.0);
    assert!(value("sluice_store_log_level0_files") >= 0.0);
}

#[test]
fn idempotent_producer_sequences_epochs_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    let mut c = n.client();
    assert_eq!(create(&mut c, "idem", 1, &[]), 0);
    let mut ids = vec![];
    for v in 0..=4 {
        let r = c.send(
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            v,
        );
        assert_eq!(
            (r.error_code, r.producer_epoch),
            (0, 0),
            "init producer id v{v}"
        );
        ids.push(r.producer_id.0);
    }
    ids.dedup();
    assert_eq!(ids.len(), 5, "every producer gets its own id");
    let pid = ids[0];
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(5, "a", pid, 0, 0), 9),
        (0, 0)
    );
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(5, "b", pid, 0, 5), 9),
        (0, 5)
    );
    // A retry of either batch answers with the original offset and writes nothing.
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(5, "a", pid, 0, 0), 9),
        (0, 0)
    );
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(5, "b", pid, 0, 5), 9),
        (0, 5)
    );
    assert_eq!(list_offset(&mut c, "idem", 0, -1, 7).offset, 10);
    // A gap is refused.
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "c", pid, 0, 11), 9).0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    // An unknown producer must start at sequence 0.
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "c", ids[1], 0, 3), 9).0,
        ResponseError::UnknownProducerId.code()
    );
    // Bumping the epoch (KIP-360) fences the old one.
    let r = c.send(
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(0),
        4,
    );
    assert_eq!((r.producer_id.0, r.producer_epoch), (pid, 1));
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "d", pid, 1, 0), 9),
        (0, 10)
    );
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "e", pid, 0, 10), 9).0,
        ResponseError::InvalidProducerEpoch.code()
    );
    // Producer state is rebuilt after kill -9: the retry is still a duplicate.
    drop(c);
    n.restart();
    let mut c = n.client();
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "d", pid, 1, 0), 9),
        (0, 10)
    );
    assert_eq!(
        produce(&mut c, "idem", 0, idempotent_batch(1, "f", pid, 1, 1), 9),
        (0, 11)
    );
    let r = c.send(
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
        4,
    );
    assert!(
        !ids.contains(&r.producer_id.0),
        "ids are not reused after a restart"
    );
    let got = values(fetch(&mut c, "idem", 0, 0, 12).records.as_ref().unwrap());
    let vals: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        vals,
        ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4", "d0", "f0"]
    );
    // An empty transactional id is refused (tests/transactions.rs covers
    // the transactional ones).
    let r = c.send(
        &InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(s("")))),
        4,
    );
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
}

fn join_req(group: &str, member: &str, protocols: &[&str]) -> JoinGroupRequest {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|p| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(p))
                        .with_metadata(Bytes::from_static(b"meta"))
                })
                .collect(),
        )
}

/// Joins a one-member group, handling MEMBER_ID_REQUIRED; returns the response.
fn join_alone(c: &mut Client, group: &str, version: i16) -> JoinGroupResponse {
    // The group's coordinator may still be loading on a node that just
    // started: retry as clients do.
    let loading = [
        ResponseError::CoordinatorNotAvailable.code(),
        ResponseError::NotCoordinator.code(),
        ResponseError::CoordinatorLoadInProgress.code(),
    ];
    let r = wait_for(Duration::from_secs(30), || {
        let r = c.send(&join_req(group, "", &["range"]), version);
        (!loading.contains(&r.error_code)).then_some(r)
    });
    if r.error_code == ResponseError::MemberIdRequired.code() {
        assert!(version >= 4);
        let id = r.member_id.to_string();
        return c.send(&join_req(group, &id, &["range"]), version);
    }
    r
}

fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> OffsetCommitRequest {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])])
}

#[test]
fn group_apis_at_every_version() {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "g-topic", 1, &[]), 0);
    for v in 0..=9i16 {
        let group = format!("group-v{v}");
        let fc = v.min(4);
        let req = if fc >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s(&group)])
        } else {
            FindCoordinatorRequest::default().with_key(s(&group))
        };
        let r = c.send(&req, fc);
        let port = if fc >= 4 {
            r.coordinators[0].port
        } else {
            r.port
        };
        assert_eq!(port, i32::from(n.kafka.port()), "find coordinator v{fc}");

        let j = join_alone(&mut c, &group, v);
        assert_eq!(j.error_code, 0, "join v{v}");
        assert_eq!(j.leader, j.member_id);
        assert_eq!(j.members.len(), 1);
        let member = j.member_id.to_string();
        let gen = j.generation_id;

        let sv = v.min(5);
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_generation_id(gen)
            .with_member_id(s(&member))
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(s(&member))
                .with_assignment(Bytes::from_static(b"mine"))]);
        let r = c.send(&sync, sv);
        assert_eq!(
            (r.error_code, &r.assignment[..]),
            (0, &b"mine"[..]),
            "sync v{sv}"
        );

        let hv = v.min(4);
        let hb = HeartbeatRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_generation_id(gen)
            .with_member_id(s(&member));
        assert_eq!(c.send(&hb, hv).error_code, 0, "heartbeat v{hv}");

        let cv = v.clamp(2, 8);
        let r = c.send(
            &commit_req(&group, gen, &member, "g-topic", 42 + i64::from(v)),
            cv,
        );
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "commit v{cv}");

        let fv = v.clamp(1, 8);
        let fetched = if fv >= 8 {
            let req =
                OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(tn("g-topic"))
                        .with_partition_indexes(vec![0])]))]);
            c.send(&req, fv).groups[0].topics[0].partitions[0].committed_offset
        } else {
            let req = OffsetFetchRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(tn("g-topic"))
                    .with_partition_indexes(vec![0])]));
            c.send(&req, fv).topics[0].partitions[0].committed_offset
        };
        assert_eq!(fetched, 42 + i64::from(v), "offset fetch v{fv}");

        let dv = v.min(5);
        let r = c.send(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&group))]),
            dv,
        );
        assert_eq!(r.groups[0].group_state.as_str(), "Stable", "describe v{dv}");
        assert_eq!(
            r.groups[0].members[0].member_assignment,
            Bytes::from_static(b"mine")
        );

        let lv = v.min(4);
        let r = c.send(&ListGroupsRequest::default(), lv);
        assert!(
            r.groups.iter().any(|g| g.group_id.as_str() == group),
            "list groups v{lv}"
        );

        let leave_v = v.min(5);
        let leave = if leave_v >= 3 {
            use kafka_protocol::messages::leave_group_request::MemberIdentity;
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_members(vec![MemberIdentity::default().with_member_id(s(&member))])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_member_id(s(&member))
        };
        let r = c.send(&leave, leave_v);
        assert_eq!(r.error_code, 0, "leave v{leave_v}");
        if leave_v >= 3 {
            assert_eq!(r.members[0].error_code, 0);
        }

        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        let od = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(tn("g-topic"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        let r = c.send(&od, 0);
        assert_eq!(
            (r.error_code, r.topics[0].partitions[0].error_code),
            (0, 0),
            "offset delete"
        );

        let gv = v.min(2);
        let r = c.send(
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(&group))]),
            gv,
        );
        assert_eq!(r.results[0].error_code, 0, "delete groups v{gv}");
    }
}

#[test]
fn group_bad_input_gets_kafka_errors_and_leaves_other_groups_alone() {
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "bt", 1, &[]), 0);
    // A healthy group beside the bad requests.
    let j = join_alone(&mut c, "healthy", 9);
    let (hm, hg) = (j.member_id.to_string(), j.generation_id);
    let sync = |member: &str, gen: i32, assignments: Vec<(&str, &'static [u8])>| {
        SyncGroupRequest::default()
            .with_group_id(GroupId(s("healthy")))
            .with_generation_id(gen)
            .with_member_id(s(member))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::from_static(a))
                    })
                    .collect(),
            )
    };
    // Malformed assignments: an unknown member, or a member twice.
    let r = c.send(&sync(&hm, hg, vec![("ghost", b"x")]), 5);
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    let r = c.send(&sync(&hm, hg, vec![(&hm, b"x"), (&hm, b"y")]), 5);
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    // A JoinGroup with no protocols, and one with a bad session timeout.
    let r = c.send(&join_req("other", "", &[]), 9);
    assert_eq!(
        r.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let r = c.send(
        &join_req("other", "", &["range"]).with_session_timeout_ms(10),
        9,
    );
    assert_eq!(r.error_code, ResponseError::InvalidSessionTimeout.code());
    // Empty group ids.
    assert_eq!(
        c.send(&join_req("", "", &["range"]), 9).error_code,
        ResponseError::InvalidGroupId.code()
    );
    // Syncing with the wrong generation, heartbeating as a stranger.
    assert_eq!(
        c.send(&sync(&hm, hg + 5, vec![]), 5).error_code,
        ResponseError::IllegalGeneration.code()
    );
    let hb = HeartbeatRequest::default()
        .with_group_id(GroupId(s("healthy")))
        .with_generation_id(hg)
        .with_member_id(s("stranger"));
    assert_eq!(
        c.send(&hb, 4).error_code,
        ResponseError::UnknownMemberId.code()
    );
    // Commits from unknown members or for another generation.
    let r = c.send(&commit_req("healthy", hg, "stranger", "bt", 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::UnknownMemberId.code()
    );
    let r = c.send(&commit_req("healthy", hg + 1, &hm, "bt", 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
    // A generation of a group that does not exist: a stale member, refused
    // as Kafka refuses it, and no group is made for it.
    let r = c.send(&commit_req("never-was", 5, "x", "bt", 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
    let groups = c.send(&ListGroupsRequest::default(), 4).groups;
    assert!(groups.iter().all(|g| g.group_id.0.as_str() != "never-was"));
    // Commits while the group waits for its leader's assignment.
    let r = c.send(&commit_req("healthy", hg, &hm, "bt", 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::RebalanceInProgress.code()
    );
    // Deleting a group with members, or one that does not exist.
    let r = c.send(
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(s("healthy")), GroupId(s("nope"))]),
        2,
    );
    assert_eq!(r.results[0].error_code, ResponseError::NonEmptyGroup.code());
    assert_eq!(
        r.results[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    // Producing into the offsets topic is refused.
    assert_eq!(
        produce(
            &mut c,
            "__consumer_offsets",
            0,
            batch(1, "x", Compression::None),
            9
        )
        .0,
        ResponseError::InvalidTopicException.code()
    );
    // An unknown coordinator key type.
    let r = c.send(
        &FindCoordinatorRequest::default()
            .with_key_type(7)
            .with_coordinator_keys(vec![s("tx")]),
        4,
    );
    assert_eq!(
        r.coordinators[0].error_code,
        ResponseError::InvalidRequest.code()
    );

    // The healthy group is untouched: a correct sync and commit still work.
    let r = c.send(&sync(&hm, hg, vec![(&hm, b"ok")]), 5);
    assert_eq!((r.error_code, &r.assignment[..]), (0, &b"ok"[..]));
    let r = c.send(&commit_req("healthy", hg, &hm, "bt", 7), 8);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    // A commit for a partition that does not exist.
    let r = c.send(&commit_req("healthy", hg, &hm, "no-such-topic", 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let r = c.send(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("healthy"))]),
        5,
    );
    assert_eq!(
        (r.groups[0].group_state.as_str(), r.groups[0].members.len()),
        ("Stable", 1)
    );
}

#[test]
fn group_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    let mut c = n.client();
    assert_eq!(create(&mut c, "rt", 1, &[]), 0);
    let j = join_alone(&mut c, "persist", 9);
    let (m, g) = (j.member_id.to_string(), j.generation_id);
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("persist")))
        .with_generation_id(g)
        .with_member_id(s(&m))
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(s(&m))
            .with_assignment(Bytes::from_static(b"A"))]);
    assert_eq!(c.send(&sync, 5).error_code, 0);
    assert_eq!(
        c.send(&commit_req("persist", g, &m, "rt", 9), 8).topics[0].partitions[0].error_code,
        0
    );
    drop(c);
    n.restart();
    let mut c = n.client();
    // The member carries on in its generation after the coordinator restarts.
    let hb = HeartbeatRequest::default()
        .with_group_id(GroupId(s("persist")))
        .with_generation_id(g)
        .with_member_id(s(&m));
    assert_eq!(c.send(&hb, 4).error_code, 0);
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("persist")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(tn("rt"))
            .with_partition_indexes(vec![0])]));
    assert_eq!(c.send(&req, 7).topics[0].partitions[0].committed_offset, 9);
}

#[test]
fn offsets_of_empty_groups_expire() {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let dir = tempfile::tempdir().unwrap();
    // 0.05 minutes = 3 s of retention (room for a loaded machine between
    // the commit and the first fetch), checked every 50 ms.
    let n = Node::start(
        dir.path(),
        &[
            "--offsets-retention-minutes",
            "0.05",
            "--offsets-retention-check-interval-ms",
            "50",
        ],
    );
    let mut c = n.client();
    assert_eq!(create(&mut c, "exp", 1, &[]), 0);
    // A standalone commit (no generation) into a group with no members,
    // retried as a client does while the group's coordinator is still
    // loading (NOT_COORDINATOR, 16, on a busy machine).
    let code = wait_for(std::time::Duration::from_secs(20), || {
        let r = c.send(&commit_req("short-lived", -1, "", "exp", 5), 8);
        let code = r.topics[0].partitions[0].error_code;
        (code != 16).then_some(code)
    });
    assert_eq!(code, 0);
    let fetch = |c: &mut Client| {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("short-lived")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(tn("exp"))
                .with_partition_indexes(vec![0])]));
        c.send(&req, 7).topics[0].partitions[0].committed_offset
    };
    assert_eq!(fetch(&mut c), 5);
    wait_for(Duration::from_secs(10), || {
        (fetch(&mut c) == -1).then_some(())
    });
    // The group itself is forgotten once it holds nothing.
    wait_for(Duration::from_secs(10), || {
        let r = c.send(&ListGroupsRequest::default(), 4);
        (!r.groups
            .iter()
            .any(|g| g.group_id.as_str() == "short-lived"))
        .then_some(())
    });
}

#[test]
fn delete_records_and_offset_for_leader_epoch() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "dr", 1, &[]), 0);
    for _ in 0..4 {
        produce(&mut c, "dr", 0, batch(5, "x", Compression::None), 9);
    }
    let del = |offset: i64| {
        DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(tn("dr"))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(offset)])])
    };
    // Past the high watermark: refused, nothing changes.
    let r = c.send(&del(21), 2);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(list_offset(&mut c, "dr", 0, -2, 7).offset, 0);
    let mut start = 0;
    for (v, offset) in [(0i16, 3i64), (1, 7), (2, 12)] {
        let r = c.send(&del(offset), v);
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.low_watermark),
            (0, offset),
            "delete records v{v}"
        );
        assert!(offset > start);
        start = offset;
    }
    // The start sits inside a batch: below it is out of range, at it reads work.
    assert_eq!(list_offset(&mut c, "dr", 0, -2, 7).offset, 12);
    assert_eq!(
        fetch(&mut c, "dr", 0, 11, 12).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    let f = fetch(&mut c, "dr", 0, 12, 12);
    assert_eq!((f.error_code, f.log_start_offset), (0, 12));
    assert!(values(f.records.as_ref().unwrap())
        .iter()
        .any(|(o, _)| *o == 12));
    // -1 means "up to the high watermark".
    let r = c.send(&del(-1), 2);
    assert_eq!(r.topics[0].partitions[0].low_watermark, 20);
    let r = c.send(&del(5), 2);
    assert_eq!(
        r.topics[0].partitions[0].low_watermark, 20,
        "the start never moves back"
    );
    let unknown = DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default()
        .with_name(tn("nope"))
        .with_partitions(vec![DeleteRecordsPartition::default()
            .with_partition_index(0)
            .with_offset(1)])]);
    assert_eq!(
        c.send(&unknown, 2).topics[0].partitions[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );

    for v in 2..=4 {
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(tn("dr"))
                .with_partitions(vec![
                    OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(-1)
                        .with_leader_epoch(0),
                    OffsetForLeaderPartition::default()
                        .with_partition(3)
                        .with_leader_epoch(0),
                ])]);
        let r = c.send(&req, v);
        let p = &r.topics[0].partitions;
        assert_eq!(
            (p[0].error_code, p[0].leader_epoch, p[0].end_offset),
            (0, 0, 20),
            "offset for leader epoch v{v}"
        );
        assert_eq!(
            p[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
    }
}

fn alter(c: &mut Client, topic: &str, configs: &[(&str, &str)], validate_only: bool) -> i16 {
    alter_res(c, 2, topic, configs, validate_only)
}

fn alter_res(
    c: &mut Client,
    resource_type: i8,
    name: &str,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> i16 {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let req = AlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            )]);
    c.send(&req, 2).responses[0].error_code
}

fn incremental(c: &mut Client, topic: &str, ops: &[(&str, i8, Option<&str>)], version: i16) -> i16 {
    incremental_res(c, 2, topic, ops, version)
}

fn incremental_res(
    c: &mut Client,
    resource_type: i8,
    name: &str,
    ops: &[(&str, i8, Option<&str>)],
    version: i16,
) -> i16 {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(s(k))
                            .with_config_operation(*op)
                            .with_value(v.map(s))
                    })
                    .collect(),
            ),
    ]);
    c.send(&req, version).responses[0].error_code
}

fn describe_res(
    c: &mut Client,
    resource_type: i8,
    name: &str,
    key: &str,
) -> kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult {
    let req = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_include_documentation(true)
        .with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configuration_keys(Some(vec![s(key)]))]);
    let r = c.send(&req, 4);
    assert_eq!(r.results[0].error_code, 0);
    r.results[0].configs[0].clone()
}

fn topic_config(c: &mut Client, topic: &str, key: &str) -> (String, i8) {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configuration_keys(Some(vec![s(key)]))]);
    let r = c.send(&req, 4);
    let e = &r.results[0].configs[0];
    (e.value.as_ref().unwrap().to_string(), e.config_source)
}

#[test]
fn broker_configs_change_topic_defaults_cluster_wide_and_per_node() {
    let (d, mut n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "dflt", 1, &[]), 0);
    assert_eq!(create(&mut c, "own", 1, &[("retention.ms", "5000")]), 0);
    let big = batch(50, "0123456789", Compression::None);
    // The cluster-wide default ("") applies to every topic without its own.
    assert_eq!(
        alter_res(
            &mut c,
            4,
            "",
            &[("log.retention.ms", "1000"), ("message.max.bytes", "600")],
            false
        ),
        0
    );
    assert_eq!(
        topic_config(&mut c, "dflt", "retention.ms"),
        ("1000".into(), 3)
    );
    assert_eq!(
        topic_config(&mut c, "own", "retention.ms"),
        ("5000".into(), 1)
    );
    assert_eq!(
        produce(&mut c, "dflt", 0, big.clone(), 9).0,
        ResponseError::MessageTooLarge.code()
    );
    // A node's own dynamic config wins over the cluster's.
    assert_eq!(
        incremental_res(
            &mut c,
            4,
            "0",
            &[("message.max.bytes", 0, Some("100000"))],
            1
        ),
        0
    );
    assert_eq!(
        topic_config(&mut c, "dflt", "max.message.bytes"),
        ("100000".into(), 2)
    );
    assert_eq!(produce(&mut c, "dflt", 0, big.clone(), 9).0, 0);
    // DescribeConfigs: value, source and the synonym chain.
    let e = describe_res(&mut c, 4, "0", "message.max.bytes");
    assert_eq!(e.value.as_deref(), Some("100000"));
    assert!(!e.read_only);
    let chain: Vec<(String, i8)> = e
        .synonyms
        .iter()
        .map(|s| (s.value.as_deref().unwrap_or("").to_string(), s.source))
        .collect();
    assert_eq!(
        chain,
        vec![
            ("100000".into(), 2),
            ("600".into(), 3),
            ("1048588".into(), 5)
        ]
    );
    assert!(e.documentation.is_some());
    let e = describe_res(&mut c, 2, "dflt", "retention.ms");
    assert_eq!(e.synonyms[0].name.as_str(), "log.retention.ms");
    assert_eq!(e.synonyms[0].source, 3);
    let e = describe_res(&mut c, 4, "", "log.retention.ms");
    assert_eq!((e.value.as_deref(), e.config_source), (Some("1000"), 3));
    let e = describe_res(&mut c, 4, "0", "broker.id");
    assert!(e.read_only);
    // Bad input: nothing changes.
    for bad in [
        &[("log.retention.ms", "5"), ("broker.id", "7")][..],
        &[("log.retention.ms", "soon")],
        &[("no.such.config", "1")],
        &[("log.cleanup.policy", "shred")],
    ] {
        assert_eq!(
            alter_res(&mut c, 4, "", bad, false),
            ResponseError::InvalidConfig.code()
        );
    }
    assert_eq!(
        alter_res(&mut c, 4, "", &[("log.retention.ms", "7")], true),
        0
    );
    assert_eq!(
        alter_res(&mut c, 4, "zero", &[("log.retention.ms", "7")], false),
        ResponseError::InvalidRequest.code()
    );
    assert_eq!(
        topic_config(&mut c, "dflt", "retention.ms"),
        ("1000".into(), 3)
    );
    // Kept in the cluster's metadata: they survive a restart.
    n.restart();
    let mut c = n.client();
    assert_eq!(
        topic_config(&mut c, "dflt", "retention.ms"),
        ("1000".into(), 3)
    );
    // DELETE goes back to the static default.
    assert_eq!(
        incremental_res(&mut c, 4, "", &[("log.retention.ms", 1, None)], 1),
        0
    );
    assert_eq!(
        topic_config(&mut c, "dflt", "retention.ms"),
        ("604800000".into(), 5)
    );
    drop(d);
}

#[test]
fn topic_configs_change_at_once_and_all_or_nothing() {
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "cfg", 1, &[]), 0);
    let big = batch(50, "0123456789", Compression::None);
    assert_eq!(produce(&mut c, "cfg", 0, big.clone(), 9).0, 0);
    // Lowering max.message.bytes applies to the very next produce.
    assert_eq!(
        alter(&mut c, "cfg", &[("max.message.bytes", "500")], false),
        0
    );
    assert_eq!(
        produce(&mut c, "cfg", 0, big.clone(), 9).0,
        ResponseError::MessageTooLarge.code()
    );
    assert_eq!(
        topic_config(&mut c, "cfg", "max.message.bytes"),
        ("500".into(), 1)
    );
    // validate_only checks and changes nothing.
    assert_eq!(
        alter(&mut c, "cfg", &[("max.message.bytes", "100000")], true),
        0
    );
    assert_eq!(topic_config(&mut c, "cfg", "max.message.bytes").0, "500");
    // One bad key refuses the whole request.
    assert_eq!(
        alter(
            &mut c,
            "cfg",
            &[("retention.ms", "5"), ("bogus.key", "1")],
            false
        ),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        alter(&mut c, "cfg", &[("retention.ms", "soon")], false),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(topic_config(&mut c, "cfg", "max.message.bytes").0, "500");
    assert_eq!(
        topic_config(&mut c, "cfg", "retention.ms"),
        ("604800000".into(), 5)
    );
    // AlterConfigs replaces the set: unnamed keys go back to their defaults.
    assert_eq!(
        alter(
            &mut c,
            "cfg",
            &[("message.timestamp.type", "LogAppendTime")],
            false
        ),
        0
    );
    assert_eq!(
        topic_config(&mut c, "cfg", "max.message.bytes"),
        ("1048588".into(), 5)
    );
    assert_eq!(produce(&mut c, "cfg", 0, big.clone(), 9).0, 0);
    let r = c.send(
        &produce_req("cfg", 0, batch_at(1, "t", Compression::None, 5), -1),
        9,
    );
    assert!(
        r.responses[0].partition_responses[0].log_append_time_ms > 0,
        "LogAppendTime applies at once"
    );
    assert_eq!(
        alter(&mut c, "nope", &[], false),
        ResponseError::UnknownTopicOrPartition.code()
    );

    // IncrementalAlterConfigs: SET, DELETE, APPEND, SUBTRACT, at v0 and v1.
    for v in 0..=1 {
        assert_eq!(
            incremental(&mut c, "cfg", &[("retention.bytes", 0, Some("4096"))], v),
            0
        );
        assert_eq!(
            topic_config(&mut c, "cfg", "retention.bytes"),
            ("4096".into(), 1)
        );
        assert_eq!(
            topic_config(&mut c, "cfg", "message.timestamp.type").0,
            "LogAppendTime",
            "SET keeps the others"
        );
        assert_eq!(
            incremental(&mut c, "cfg", &[("retention.bytes", 1, None)], v),
            0
        );
        assert_eq!(
            topic_config(&mut c, "cfg", "retention.bytes"),
            ("-1".into(), 5)
        );
    }
    assert_eq!(
        incremental(
            &mut c,
            "cfg",
            &[
                ("cleanup.policy", 3, Some("delete")),
                ("cleanup.policy", 2, Some("delete"))
            ],
            1
        ),
        0
    );
    assert_eq!(topic_config(&mut c, "cfg", "cleanup.policy").0, "delete");
    assert_eq!(
        incremental(&mut c, "cfg", &[("retention.ms", 2, Some("5"))], 1),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        incremental(
            &mut c,
            "cfg",
            &[
                ("retention.ms", 0, Some("1")),
                ("unknown.key", 0, Some("1"))
            ],
            1
        ),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        topic_config(&mut c, "cfg", "retention.ms").0,
        "604800000",
        "nothing half-applied"
    );
    assert_eq!(
        incremental(&mut c, "cfg", &[("retention.ms", 9, Some("1"))], 1),
        ResponseError::InvalidRequest.code()
    );
}

#[test]
fn describe_log_dirs_and_producers() {
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    let (_d, n) = node();
    let mut c = n.client();
    assert_eq!(create(&mut c, "ld", 2, &[]), 0);
    let b = batch(10, "x", Compression::None);
    produce(&mut c, "ld", 0, b.clone(), 9);
    for v in 1..=4 {
        let req = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(tn("ld"))
                .with_partitions(vec![0, 1]),
        ]));
        let r = c.send(&req, v);
        let parts = &r.results[0].topics[0].partitions;
        assert_eq!(
            parts[0].partition_size,
            b.len() as i64,
            "describe log dirs v{v}"
        );
        assert_eq!(parts[1].partition_size, 0);
    }
    let pid = c
        .send(
            &InitProducerIdRequest::default().with_transactional_id(None),
            4,
        )
        .producer_id
        .0;
    produce(&mut c, "ld", 1, idempotent_batch(3, "i", pid, 0, 0), 9);
    let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(tn("ld"))
        .with_partition_indexes(vec![0, 1, 9])]);
    let r = c.send(&req, 0);
    let p = &r.topics[0].partitions;
    assert!(p[0].active_producers.is_empty());
    assert_eq!(p[1].active_producers[0].producer_id.0, pid);
    assert_eq!(p[1].active_producers[0].last_sequence, 2);
    assert_eq!(
        p[2].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[test]
fn the_offsets_topic_cannot_be_deleted_or_reshaped() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    let (_d, n) = node();
    let mut c = n.client();
    let t = "__consumer_offsets";
    let r = c.send(
        &DeleteTopicsRequest::default().with_topic_names(vec![tn(t)]),
        5,
    );
    assert_eq!(
        r.responses[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(tn(t))
            .with_count(60)]);
    assert_eq!(
        c.send(&req, 3).results[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    assert_eq!(
        alter(&mut c, t, &[("retention.ms", "1")], false),
        ResponseError::InvalidTopicException.code()
    );
    let req = DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default()
        .with_name(tn(t))
        .with_partitions(vec![DeleteRecordsPartition::default()
            .with_partition_index(0)
            .with_offset(-1)])]);
    assert_eq!(
        c.send(&req, 2).topics[0].partitions[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    let md = c.send(
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(tn(t)))
        ])),
        12,
    );
    assert_eq!(md.topics[0].partitions.len(), 50);
}
