//! Fuzzing the real binary from outside, as a hostile client would: random
//! and mutated request bodies behind valid headers for every advertised API
//! version, and mutated record batches through produce and every reader.
//! The node must answer or close the offending connection, never crash.
//!
//! Seeded and reproducible: the seed is printed; `SLUICE_FUZZ_SEED=<n>`
//! replays a run, `SLUICE_FUZZ_REQUESTS` / `SLUICE_FUZZ_BATCHES` change its
//! length (100,000 and 10,000 by default), each bounded in time by
//! `SLUICE_FUZZ_SECONDS` (120 by default; a mutated CreatePartitions can make
//! a topic of 65,535 partitions, after which a debug build answers slowly),
//! and what was done is printed. When the node dies, the frames
//! that may have killed it are written to `target/fuzz-crashes/`; copy them
//! into `node/tests/fuzz-regressions/` and they are replayed by
//! `fuzz_regressions_stay_fixed` from then on.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;
use sluice_node::log::batch::{encode_v2, plain_record};
use sluice_node::protocol::versions::SUPPORTED;

/// SplitMix64: small, fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Between `min` and `min + spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
}

fn seed_from_env() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

/// A realistic request of each advertised API (naming the topic `fuzz` and
/// the group `g`), encoded at `version`: what the mutations start from.
fn seed_body(api: ApiKey, version: i16, records: &Bytes) -> Option<Vec<u8>> {
    fn enc<R: Encodable>(r: R, v: i16) -> Option<Vec<u8>> {
        let mut b = BytesMut::new();
        r.encode(&mut b, v).ok().map(|_| b.to_vec())
    }
    let g = || GroupId(s("g"));
    match api {
        ApiKey::Produce => {
            use produce_request::{PartitionProduceData, TopicProduceData};
            enc(
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(100)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(tn("fuzz"))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records.clone()))])]),
                version,
            )
        }
        ApiKey::Fetch => {
            use fetch_request::{FetchPartition, FetchTopic};
            enc(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(tn("fuzz"))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_partition_max_bytes(1 << 16),
                            FetchPartition::default()
                                .with_partition(1)
                                .with_partition_max_bytes(1 << 16),
                        ])]),
                version,
            )
        }
        ApiKey::ListOffsets => {
            use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
            enc(
                ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                    .with_name(tn("fuzz"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default().with_timestamp(1_000),
                        ListOffsetsPartition::default()
                            .with_partition_index(1)
                            .with_timestamp(-1),
                    ])]),
                version,
            )
        }
        ApiKey::Metadata => {
            use metadata_request::MetadataRequestTopic;
            enc(
                MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(tn("fuzz")))
                    ]))
                    .with_allow_auto_topic_creation(version < 4),
                version,
            )
        }
        ApiKey::OffsetCommit => {
            use offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
            enc(
                OffsetCommitRequest::default()
                    .with_group_id(g())
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(tn("fuzz"))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default().with_committed_offset(1)
                        ])]),
                version,
            )
        }
        ApiKey::OffsetFetch => {
            use offset_fetch_request::{
                OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
            };
            if version >= 8 {
                enc(
                    OffsetFetchRequest::default().with_groups(vec![
                        OffsetFetchRequestGroup::default()
                            .with_group_id(g())
                            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                                .with_name(tn("fuzz"))
                                .with_partition_indexes(vec![0, 1])])),
                    ]),
                    version,
                )
            } else {
                enc(
                    OffsetFetchRequest::default()
                        .with_group_id(g())
                        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                            .with_name(tn("fuzz"))
                            .with_partition_indexes(vec![0, 1])])),
                    version,
                )
            }
        }
        ApiKey::FindCoordinator => enc(
            if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
            } else {
                FindCoordinatorRequest::default().with_key(s("g"))
            },
            version,
        ),
        ApiKey::JoinGroup => {
            use join_group_request::JoinGroupRequestProtocol;
            enc(
                JoinGroupRequest::default()
                    .with_group_id(g())
                    .with_session_timeout_ms(6_000)
                    .with_rebalance_timeout_ms(100)
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::from_static(b"\x00\x01"))]),
                version,
            )
        }
        ApiKey::Heartbeat => enc(
            HeartbeatRequest::default()
                .with_group_id(g())
                .with_member_id(s("m")),
            version,
        ),
        ApiKey::LeaveGroup => {
            use leave_group_request::MemberIdentity;
            enc(
                if version >= 3 {
                    LeaveGroupRequest::default()
                        .with_group_id(g())
                        .with_members(vec![MemberIdentity::default().with_member_id(s("m"))])
                } else {
                    LeaveGroupRequest::default()
                        .with_group_id(g())
                        .with_member_id(s("m"))
                },
                version,
            )
        }
        ApiKey::SyncGroup => {
            use sync_group_request::SyncGroupRequestAssignment;
            enc(
                SyncGroupRequest::default()
                    .with_group_id(g())
                    .with_member_id(s("m"))
                    .with_assignments(vec![SyncGroupRequestAssignment::default()
                        .with_member_id(s("m"))
                        .with_assignment(Bytes::from_static(b"a"))]),
                version,
            )
        }
        ApiKey::DescribeGroups => enc(
            DescribeGroupsRequest::default().with_groups(vec![g()]),
            version,
        ),
        ApiKey::ListGroups => enc(ListGroupsRequest::default(), version),
        ApiKey::ApiVersions => enc(
            ApiVersionsRequest::default()
                .with_client_software_name(s("fuzz"))
                .with_client_software_version(s("1")),
            version,
        ),
        ApiKey::CreateTopics => {
            use create_topics_request::{CreatableTopic, CreatableTopicConfig};
            enc(
                CreateTopicsRequest::default()
                    .with_timeout_ms(100)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(tn("fz-new"))
                        .with_num_partitions(2)
                        .with_replication_factor(1)
                        .with_configs(vec![CreatableTopicConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("60000")))])]),
                version,
            )
        }
        ApiKey::DeleteTopics => {
            use delete_topics_request::DeleteTopicState;
            enc(
                if version >= 6 {
                    DeleteTopicsRequest::default().with_topics(vec![
                        DeleteTopicState::default().with_name(Some(tn("fz-new")))
                    ])
                } else {
                    DeleteTopicsRequest::default().with_topic_names(vec![tn("fz-new")])
                }
                .with_timeout_ms(100),
                version,
            )
        }
        ApiKey::DeleteRecords => {
            use delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
            enc(
                DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(tn("fuzz"))
                    .with_partitions(vec![DeleteRecordsPartition::default()
                        .with_partition_index(1)
                        .with_offset(0)])]),
                version,
            )
        }
        ApiKey::InitProducerId => enc(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            version,
        ),
        ApiKey::OffsetForLeaderEpoch => {
            use offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
            enc(
                OffsetForLeaderEpochRequest::default().with_topics(vec![
                    OffsetForLeaderTopic::default()
                        .with_topic(tn("fuzz"))
                        .with_partitions(vec![OffsetForLeaderPartition::default()
                            .with_current_leader_epoch(-1)
                            .with_leader_epoch(0)]),
                ]),
                version,
            )
        }
        ApiKey::DescribeConfigs => {
            use describe_configs_request::DescribeConfigsResource;
            enc(
                DescribeConfigsRequest::default()
                    .with_include_synonyms(true)
                    .with_resources(vec![
                        DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(s("fuzz")),
                        DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(s("0")),
                    ]),
                version,
            )
        }
        ApiKey::AlterConfigs => {
            use alter_configs_request::{AlterConfigsResource, AlterableConfig};
            enc(
                AlterConfigsRequest::default()
                    .with_validate_only(true)
                    .with_resources(vec![AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("fuzz"))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("86400000")))])]),
                version,
            )
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
            enc(
                IncrementalAlterConfigsRequest::default()
                    .with_validate_only(true)
                    .with_resources(vec![AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("fuzz"))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_config_operation(2)
                            .with_value(Some(s("compact")))])]),
                version,
            )
        }
        ApiKey::DescribeLogDirs => enc(DescribeLogDirsRequest::default(), version),
        ApiKey::CreatePartitions => {
            use create_partitions_request::CreatePartitionsTopic;
            enc(
                CreatePartitionsRequest::default()
                    .with_validate_only(true)
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(tn("fuzz"))
                        .with_count(4)]),
                version,
            )
        }
        ApiKey::DeleteGroups => enc(
            DeleteGroupsRequest::default().with_groups_names(vec![g()]),
            version,
        ),
        ApiKey::ElectLeaders => {
            use elect_leaders_request::TopicPartitions;
            enc(
                ElectLeadersRequest::default().with_topic_partitions(Some(vec![
                    TopicPartitions::default()
                        .with_topic(tn("fuzz"))
                        .with_partitions(vec![0]),
                ])),
                version,
            )
        }
        ApiKey::AlterPartitionReassignments => {
            use alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
            enc(
                AlterPartitionReassignmentsRequest::default().with_topics(vec![
                    ReassignableTopic::default()
                        .with_name(tn("fuzz"))
                        .with_partitions(vec![
                            ReassignablePartition::default().with_replicas(Some(vec![BrokerId(0)]))
                        ]),
                ]),
                version,
            )
        }
        ApiKey::ListPartitionReassignments => {
            enc(ListPartitionReassignmentsRequest::default(), version)
        }
        ApiKey::OffsetDelete => {
            use offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
            enc(
                OffsetDeleteRequest::default()
                    .with_group_id(g())
                    .with_topics(vec![OffsetDeleteRequestTopic::default()
                        .with_name(tn("fuzz"))
                        .with_partitions(vec![OffsetDeleteRequestPartition::default()])]),
                version,
            )
        }
        ApiKey::DescribeCluster => enc(DescribeClusterRequest::default(), version),
        ApiKey::DescribeProducers => {
            use describe_producers_request::TopicRequest;
            enc(
                DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
                    .with_name(tn("fuzz"))
                    .with_partition_indexes(vec![0, 1])]),
                version,
            )
        }
        ApiKey::DescribeTopicPartitions => {
            use describe_topic_partitions_request::TopicRequest;
            enc(
                DescribeTopicPartitionsRequest::default()
                    .with_response_partition_limit(10)
                    .with_topics(vec![TopicRequest::default().with_name(tn("fuzz"))]),
                version,
            )
        }
        ApiKey::AddPartitionsToTxn => {
            use add_partitions_to_txn_request::{
                AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
            };
            let topics = vec![AddPartitionsToTxnTopic::default()
                .with_name(tn("fuzz"))
                .with_partitions(vec![0, 1])];
            let req = if version >= 4 {
                AddPartitionsToTxnRequest::default().with_transactions(vec![
                    AddPartitionsToTxnTransaction::default()
                        .with_transactional_id(TransactionalId(s("t")))
                        .with_producer_id(ProducerId(1))
                        .with_topics(topics),
                ])
            } else {
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(TransactionalId(s("t")))
                    .with_v3_and_below_producer_id(ProducerId(1))
                    .with_v3_and_below_topics(topics)
            };
            enc(req, version)
        }
        ApiKey::AddOffsetsToTxn => enc(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s("t")))
                .with_producer_id(ProducerId(1))
                .with_group_id(g()),
            version,
        ),
        ApiKey::EndTxn => enc(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s("t")))
                .with_producer_id(ProducerId(1))
                .with_committed(true),
            version,
        ),
        ApiKey::TxnOffsetCommit => {
            use txn_offset_commit_request::{
                TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
            };
            enc(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(s("t")))
                    .with_group_id(g())
                    .with_producer_id(ProducerId(1))
                    .with_generation_id(-1)
                    .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                        .with_name(tn("fuzz"))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1)])]),
                version,
            )
        }
        ApiKey::DescribeTransactions => enc(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![TransactionalId(s("t"))]),
            version,
        ),
        ApiKey::ListTransactions => enc(
            ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing")]),
            version,
        ),
        ApiKey::SaslHandshake => enc(
            SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")),
            version,
        ),
        ApiKey::SaslAuthenticate => enc(
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"n,,n=a,r=x")),
            version,
        ),
        ApiKey::DescribeAcls => enc(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
            version,
        ),
        ApiKey::CreateAcls => enc(
            CreateAclsRequest::default().with_creations(vec![
                create_acls_request::AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(s("fuzz"))
                    .with_resource_pattern_type(3)
                    .with_principal(s("User:a"))
                    .with_host(s("*"))
                    .with_operation(3)
                    .with_permission_type(3),
            ]),
            version,
        ),
        ApiKey::DeleteAcls => enc(
            DeleteAclsRequest::default().with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(2)
                    .with_resource_name_filter(Some(s("fuzz")))
                    .with_pattern_type_filter(3)
                    .with_operation(1)
                    .with_permission_type(1),
            ]),
            version,
        ),
        ApiKey::DescribeUserScramCredentials => enc(
            DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                describe_user_scram_credentials_request::UserName::default().with_name(s("a")),
            ])),
            version,
        ),
        ApiKey::AlterUserScramCredentials => enc(
            AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(s("fuzz-user"))
                    .with_mechanism(2)
                    .with_iterations(4096)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from(vec![7u8; 64])),
            ]),
            version,
        ),
        _ => None,
    }
}

fn header(api: ApiKey, version: i16, correlation: i32) -> Vec<u8> {
    let h = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(s("fuzzer")));
    let mut b = BytesMut::new();
    h.encode(&mut b, api.request_header_version(version))
        .unwrap();
    b.to_vec()
}

/// Numbers that break sizes and counts.
const INTERESTING_I32: [i32; 10] = [
    0,
    -1,
    1,
    i32::MAX,
    i32::MIN,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    1 << 24,
];

/// One mutation of `b` (bit flip, interesting integer, truncation, growth,
/// insertion, duplicated span).
fn mutate(r: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.extend(r.some_bytes(1, 16));
        return;
    }
    match r.below(8) {
        0 => {
            let i = r.below(b.len());
            b[i] ^= 1 << r.below(8);
        }
        1 => {
            let i = r.below(b.len());
            b[i] = [0u8, 0xff, 0x7f, 0x80, 0x01][r.below(5)];
        }
        2 | 3 => {
            let v = INTERESTING_I32[r.below(INTERESTING_I32.len())].to_be_bytes();
            let i = r.below(b.len());
            for (k, x) in v.iter().enumerate() {
                if let Some(slot) = b.get_mut(i + k) {
                    *slot = *x;
                }
            }
        }
        4 => b.truncate(r.below(b.len())),
        5 => {
            let extra = r.some_bytes(1, 64);
            b.extend(extra);
        }
        6 => {
            let i = r.below(b.len() + 1);
            let extra = r.some_bytes(1, 8);
            b.splice(i..i, extra);
        }
        _ => {
            let i = r.below(b.len());
            let n = 1 + r.below((b.len() - i).min(64));
            let span: Vec<u8> = b[i..i + n].to_vec();
            let at = r.below(b.len() + 1);
            b.splice(at..at, span);
        }
    }
}

/// A connection the fuzzer sends on; answers time out quickly (a mutated
/// long poll is not worth waiting for).
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    /// Sends one frame; whether the node answered (false: it closed the
    /// connection or took too long, and a new one is made next time).
    fn send(&mut self, frame: &[u8]) -> bool {
        if self.stream.is_none() {
            let Ok(s) = TcpStream::connect(self.addr) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_millis(250)))
                .unwrap();
            s.set_nodelay(true).unwrap();
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().unwrap();
        let ok = s.write_all(frame).is_ok() && {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).is_ok() && {
                let n = i32::from_be_bytes(len).max(0) as usize;
                let mut body = vec![0u8; n];
                s.read_exact(&mut body).is_ok()
            }
        };
        if !ok {
            self.stream = None;
        }
        ok
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 4);
    f.extend_from_slice(&(body.len() as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Where frames that may have killed a node are written.
fn crash_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Fails the test if the node has died, keeping the recent frames.
fn check_alive(node: &mut Node, seed: u64, recent: &VecDeque<Vec<u8>>, done: usize) {
    let status = node.exit_status().map(|s| s.to_string()).or_else(|| {
        node.log()
            .contains("panicked at")
            .then(|| "a thread panicked".to_string())
    });
    if let Some(status) = status {
        let dir = crash_dir();
        for (i, f) in recent.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{seed}-case-{done}-{i}.bin")), f).unwrap();
        }
        panic!(
            "the node died ({status}) after {done} fuzzed requests (seed {seed}); \
             the last {} frames are in {}",
            recent.len(),
            dir.display()
        );
    }
}

fn fuzz_node() -> (tempfile::TempDir, Node) {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(
        d.path(),
        &[
            "--num-partitions",
            "2",
            "--log-cleaner-backoff-ms",
            "50",
            "--queued-max-request-bytes",
            "67108864",
        ],
    );
    (d, n)
}

#[test]
fn fuzzed_requests_never_take_a_node_down() {
    let seed = seed_from_env();
    let total = count_from_env("SLUICE_FUZZ_REQUESTS", 100_000);
    println!("fuzzing {total} requests, SLUICE_FUZZ_SEED={seed}");
    let (_d, mut node) = fuzz_node();
    let mut c = node.client();
    assert_eq!(create_topic(&mut c, "fuzz", 2, 1, &[]), 0);
    let records = batch(3, "seed-", Compression::None);
    let seeds: Vec<(ApiKey, i16, Vec<u8>)> = SUPPORTED
        .iter()
        .flat_map(|&(api, min, max)| (min..=max).map(move |v| (api, v)))
        .map(|(api, v)| (api, v, seed_body(api, v, &records).unwrap_or_default()))
        .collect();
    // Every seed is sound: answered, not refused (JoinGroup and SyncGroup
    // may park, waiting for other members: they are let be).
    let mut conn = Conn::new(node.kafka);
    for (api, v, body) in &seeds {
        if matches!(api, ApiKey::JoinGroup | ApiKey::SyncGroup) {
            continue;
        }
        let mut f = header(*api, *v, 1);
        f.extend_from_slice(body);
        assert!(conn.send(&framed(&f)), "seed {api:?} v{v} was not answered");
    }
    let mut r = Rng(seed);
    let mut recent: VecDeque<Vec<u8>> = VecDeque::new();
    let (mut answered, mut closed) = (0usize, 0usize);
    let started = Instant::now();
    let budget = budget();
    let mut done = 0;
    for i in 0..total {
        if started.elapsed() > budget {
            break;
        }
        done += 1;
        let (api, v, body) = &seeds[r.below(seeds.len())];
        let mut body = if r.chance(15) {
            // A random body behind a valid header.
            let n = r.below(256);
            r.bytes(n)
        } else {
            body.clone()
        };
        for _ in 0..1 + r.below(4) {
            mutate(&mut r, &mut body);
        }
        let mut f = header(*api, *v, i as i32);
        f.extend_from_slice(&body);
        let frame = framed(&f);
        if conn.send(&frame) {
            answered += 1;
        } else {
            closed += 1;
        }
        recent.push_back(frame);
        if recent.len() > 32 {
            recent.pop_front();
        }
        if i % 256 == 0 {
            check_alive(&mut node, seed, &recent, i);
        }
    }
    check_alive(&mut node, seed, &recent, done);
    node.assert_no_panics();
    // Still serving: a sound request is answered.
    let mut c = node.client();
    let md = c.send(&MetadataRequest::default().with_topics(None), 12);
    assert!(md.topics.iter().any(|t| t.name == Some(tn("fuzz"))));
    println!(
        "{done} fuzzed requests in {:.1} s: {answered} answered, {closed} connections closed or timed out",
        started.elapsed().as_secs_f64()
    );
}

/// How long each fuzz test may run.
fn budget() -> Duration {
    Duration::from_secs(count_from_env("SLUICE_FUZZ_SECONDS", 120) as u64)
}

/// A batch of 1-20 records with random keys (some missing), values,
/// headers and timestamps, in a random codec.
fn random_batch(r: &mut Rng) -> Bytes {
    use kafka_protocol::records::Record;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let n = 1 + r.below(20);
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let headers = (0..r.below(3))
                .map(|h| (s(&format!("h{h}")), Some(Bytes::from(r.some_bytes(0, 8)))))
                .collect();
            let timestamp = now - r.below(1_000) as i64;
            let key = (!r.chance(10)).then(|| Bytes::from(format!("k{}", r.below(50))));
            let value = (!r.chance(5)).then(|| Bytes::from(r.some_bytes(0, 100)));
            Record {
                headers,
                ..plain_record(i as i64, timestamp, key, value)
            }
        })
        .collect();
    let compression = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ][r.below(5)];
    encode_v2(&records, compression).unwrap()
}

/// Rewrites a batch's length and CRC after its bytes changed, so only the
/// record checks can catch what is wrong.
fn reframe(b: &mut [u8]) {
    if b.len() < 61 {
        return;
    }
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A produce request (v9: record errors come back) for one partition.
fn produce_frame(topic: &str, partition: i32, records: Bytes, correlation: i32) -> Vec<u8> {
    use produce_request::{PartitionProduceData, TopicProduceData};
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let mut f = header(ApiKey::Produce, 9, correlation);
    let mut b = BytesMut::new();
    req.encode(&mut b, 9).unwrap();
    f.extend_from_slice(&b);
    framed(&f)
}

#[test]
fn fuzzed_batches_never_take_a_node_down() {
    let seed = seed_from_env();
    let total = count_from_env("SLUICE_FUZZ_BATCHES", 10_000);
    println!("fuzzing {total} batches, SLUICE_FUZZ_SEED={seed}");
    let (_d, mut node) = fuzz_node();
    let mut c = node.client();
    // Every path a batch can take on append: as sent, compacted,
    // LogAppendTime, recompressed.
    let topics = [
        ("plain", vec![]),
        (
            "compacted",
            vec![
                ("cleanup.policy", "compact"),
                ("min.cleanable.dirty.ratio", "0.01"),
            ],
        ),
        (
            "appendtime",
            vec![("message.timestamp.type", "LogAppendTime")],
        ),
        ("recompressed", vec![("compression.type", "zstd")]),
    ];
    for (t, cfg) in &topics {
        assert_eq!(create_topic(&mut c, t, 2, 1, cfg), 0, "{t}");
    }
    let mut r = Rng(seed);
    let mut conn = Conn::new(node.kafka);
    let mut recent: VecDeque<Vec<u8>> = VecDeque::new();
    let mut accepted = 0usize;
    let started = Instant::now();
    let budget = budget();
    let mut done = 0;
    for i in 0..total {
        if started.elapsed() > budget {
            break;
        }
        done += 1;
        let mut b = random_batch(&mut r).to_vec();
        for _ in 0..r.below(4) {
            mutate(&mut r, &mut b);
        }
        if r.chance(30) {
            // Header fields that size things: count, last offset delta,
            // timestamps, attributes (codec, control), producer fields.
            let at = [57usize, 23, 27, 35, 21, 43, 53][r.below(7)];
            let v = INTERESTING_I32[r.below(INTERESTING_I32.len())].to_be_bytes();
            for (k, x) in v.iter().enumerate() {
                if let Some(slot) = b.get_mut(at + k) {
                    *slot = *x;
                }
            }
        }
        if r.chance(85) {
            reframe(&mut b);
        }
        let (t, _) = &topics[r.below(topics.len())];
        let frame = produce_frame(t, r.below(2) as i32, Bytes::from(b), i as i32);
        let mut ok = false;
        if conn.send(&frame) {
            ok = true;
        }
        accepted += usize::from(ok);
        recent.push_back(frame);
        if recent.len() > 32 {
            recent.pop_front();
        }
        if i % 128 == 0 {
            check_alive(&mut node, seed, &recent, i);
        }
    }
    check_alive(&mut node, seed, &recent, done);
    // Every reader over whatever was stored: fetch everything, look up
    // offsets by time and the max timestamp; the cleaner runs meanwhile.
    let mut c = node.client();
    for (t, _) in &topics {
        for p in 0..2 {
            let end = list_offsets(&mut c, t, p, -1);
            let mut offset = 0;
            while offset < end {
                let recs = fetch_records(&mut c, t, p, offset);
                let Some(last) = last_offset(&recs) else {
                    break;
                };
                offset = last + 1;
            }
            for ts in [0i64, 1_000, i64::MAX / 2] {
                list_offsets(&mut c, t, p, ts);
            }
            list_offsets(&mut c, t, p, -3);
        }
    }
    // Give the cleaner a moment over the compacted topic, then check once more.
    wait_for(Duration::from_secs(30), || {
        let (_, body) = node.http_get("/metrics");
        body.lines()
            .any(|l| l.starts_with("sluice_log_cleaner_passes_total") && !l.ends_with(" 0"))
            .then_some(())
    });
    check_alive(&mut node, seed, &recent, done);
    node.assert_no_panics();
    println!("{done} fuzzed batches: {accepted} produce answers");
}

fn list_offsets(c: &mut Client, topic: &str, partition: i32, ts: i64) -> i64 {
    use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let r = c.send(
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(ts)])]),
        7,
    );
    r.topics[0].partitions[0].offset
}

fn fetch_records(c: &mut Client, topic: &str, partition: i32, offset: i64) -> Bytes {
    use fetch_request::{FetchPartition, FetchTopic};
    let r = c.send(
        &FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]),
        12,
    );
    r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default()
}

/// The last offset covered by the batches of a fetch answer.
fn last_offset(records: &Bytes) -> Option<i64> {
    let mut pos = 0;
    let mut last = None;
    while pos + 61 <= records.len() {
        let base = i64::from_be_bytes(records[pos..pos + 8].try_into().unwrap());
        let len = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let delta = i32::from_be_bytes(records[pos + 23..pos + 27].try_into().unwrap());
        last = Some(base + i64::from(delta));
        pos += 12 + len;
    }
    last
}

/// Frames that once took a node down (`node/tests/fuzz-regressions/*.bin`,
/// each a length-prefixed request frame) are sent again: the node answers or
/// closes the connection, and lives.
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no regressions in {}", dir.display());
    let (_d, mut node) = fuzz_node();
    let mut c = node.client();
    assert_eq!(create_topic(&mut c, "fuzz", 2, 1, &[]), 0);
    let mut conn = Conn::new(node.kafka);
    for f in &files {
        let frame = std::fs::read(f).unwrap();
        conn.send(&frame);
        assert!(
            node.exit_status().is_none(),
            "{} took the node down",
            f.display()
        );
    }
    let md = node
        .client()
        .send(&MetadataRequest::default().with_topics(None), 12);
    assert!(md.topics.iter().any(|t| t.name == Some(tn("fuzz"))));
    node.assert_no_panics();
}
