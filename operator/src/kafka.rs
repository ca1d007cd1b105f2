//! The Kafka requests the operator makes of the nodes to look after
//! consumer groups: FindCoordinator, DescribeGroups, OffsetFetch,
//! ListOffsets, OffsetCommit and DeleteGroups, as `kafka-protocol` messages
//! over the Kafka port, the way `kafka-consumer-groups.sh` does. Which node
//! leads a partition and where the nodes listen come from the cluster's
//! metadata ([`View`]), so no Metadata requests are needed.
//!
//! Every call opens its own connection and has a deadline: a node that
//! does not answer costs one refresh, never a stuck reconciler. On a
//! secured cluster the connection is TLS (the cluster CA, the nodes'
//! shared name) and logs in first, SCRAM-SHA-512 as the operator's own
//! super user or with its client certificate ([`Login`], kept current by
//! [`crate::tls`]).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::{Arc, RwLock};

use kafka_protocol::messages::{
    consumer_protocol_assignment::ConsumerProtocolAssignment,
    delete_groups_request::DeleteGroupsRequest,
    describe_groups_request::DescribeGroupsRequest,
    find_coordinator_request::FindCoordinatorRequest,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic},
    offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    },
    offset_fetch_request::OffsetFetchRequest,
    sasl_authenticate_request::SaslAuthenticateRequest,
    sasl_handshake_request::SaslHandshakeRequest,
    BrokerId, GroupId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::ResponseError;
use rustls::pki_types::ServerName;
use sluice_coord::View;
use sluice_security::scram::{self, ClientExchange, Mechanism};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connection included.
const DEADLINE: Duration = Duration::from_secs(5);

/// Largest response accepted (a DescribeGroups of a very large group).
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("no node of the cluster is reachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Io(String),
    #[error("{api}: {error}")]
    Refused {
        api: &'static str,
        error: ResponseError,
    },
}

impl KafkaError {
    /// The Kafka error code, for a refusal.
    pub fn code(&self) -> Option<ResponseError> {
        match self {
            KafkaError::Refused { error, .. } => Some(*error),
            _ => None,
        }
    }
}

fn refused(api: &'static str, code: i16) -> Result<(), KafkaError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(KafkaError::Refused { api, error }),
    }
}

/// How the operator reaches the nodes: in the clear, or TLS and a login.
#[derive(Clone, Default)]
pub struct Login {
    /// TLS: the cluster CA (and the client certificate with `tls`
    /// authentication), and the name the nodes' certificate is checked for.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// SASL SCRAM-SHA-512: user name and password.
    pub scram: Option<(String, String)>,
}

/// The operator's Kafka client: the calls below, each on a new connection
/// made as [`Login`] says.
#[derive(Clone, Default)]
pub struct Kafka {
    login: Arc<RwLock<Login>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One request and its response on `stream`.
async fn exchange<R: Request>(
    stream: &mut dyn Io,
    addr: &str,
    req: &R,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, KafkaError> {
    let io = |e: std::io::Error| KafkaError::Io(format!("{addr}: {e}"));
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-operator")));
    let mut body = BytesMut::new();
    let encode = |e: anyhow::Error| KafkaError::Io(format!("encoding a request: {e}"));
    header
        .encode(&mut body, R::header_version(version))
        .map_err(encode)?;
    req.encode(&mut body, version).map_err(encode)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    stream.write_all(&frame).await.map_err(io)?;
    let len = stream.read_i32().await.map_err(io)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|n| *n <= MAX_RESPONSE)
        .ok_or_else(|| KafkaError::Io(format!("{addr}: a response of {len} bytes")))?;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let mut buf = Bytes::from(buf);
    let decode = |e: anyhow::Error| KafkaError::Io(format!("{addr}: an unreadable response: {e}"));
    ResponseHeader::decode(&mut buf, R::Response::header_version(version)).map_err(decode)?;
    R::Response::decode(&mut buf, version).map_err(decode)
}

/// Logs in on `stream` with SCRAM-SHA-512 (SaslHandshake v1, then
/// SaslAuthenticate v2 twice), checking the node's proof too.
async fn scram_login(
    stream: &mut dyn Io,
    addr: &str,
    user: &str,
    password: &str,
) -> Result<(), KafkaError> {
    let m = Mechanism::Sha512;
    let h = exchange(
        stream,
        addr,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(m.name())),
        1,
        1,
    )
    .await?;
    refused("SaslHandshake", h.error_code)?;
    let client = ClientExchange::new(m, user, password, &scram::server_nonce());
    let first = exchange(
        stream,
        addr,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(client.first())),
        2,
        2,
    )
    .await?;
    refused("SaslAuthenticate", first.error_code)?;
    let (last, expect) = client
        .last(&first.auth_bytes)
        .map_err(|e| KafkaError::Io(format!("{addr}: SCRAM: {e}")))?;
    let fin = exchange(
        stream,
        addr,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(last)),
        2,
        3,
    )
    .await?;
    refused("SaslAuthenticate", fin.error_code)?;
    if fin.auth_bytes.as_ref() != expect.as_slice() {
        return Err(KafkaError::Io(format!(
            "{addr}: the node did not prove it knows the credential"
        )));
    }
    Ok(())
}

impl Kafka {
    /// How the next connections are made.
    pub fn set_login(&self, login: Login) {
        *self.login.write().expect("login lock") = login;
    }

    /// One request and its response on a new connection to `addr`.
    async fn call<R: Request>(
        &self,
        addr: &str,
        req: &R,
        version: i16,
    ) -> Result<R::Response, KafkaError> {
        let login = self.login.read().expect("login lock").clone();
        let io = |e: std::io::Error| KafkaError::Io(format!("{addr}: {e}"));
        let run = async {
            let tcp = TcpStream::connect(addr).await.map_err(io)?;
            let _ = tcp.set_nodelay(true);
            let mut stream: Box<dyn Io> = match &login.tls {
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(io)?,
                ),
                None => Box::new(tcp),
            };
            if let Some((user, password)) = &login.scram {
                scram_login(stream.as_mut(), addr, user, password).await?;
            }
            exchange(stream.as_mut(), addr, req, version, 4).await
        };
        tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap_or_else(|_| {
                Err(KafkaError::Io(format!(
                    "{addr}: no answer within {DEADLINE:?}"
                )))
            })
    }
}

fn address(view: &View, node: i32) -> Option<String> {
    view.node(node)
        .map(|n| format!("{}:{}", n.info.kafka_host, n.info.kafka_port))
}

/// A group as its coordinator describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupReport {
    /// Kafka's group state; `Dead` for a group that does not exist.
    pub state: String,
    pub members: Vec<Member>,
    /// Committed offsets, by topic and partition.
    pub committed: BTreeMap<(String, i32), i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// Assigned partitions (for consumer-protocol groups).
    pub partitions: Vec<(String, i32)>,
}

impl Kafka {
    /// The address of `group`'s coordinator, asked of the live nodes in turn.
    pub async fn coordinator(&self, view: &View, group: &str) -> Result<String, KafkaError> {
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let mut last = String::from("no live nodes");
        for n in view.nodes.iter().filter(|n| view.alive(n.info.id)) {
            let addr = format!("{}:{}", n.info.kafka_host, n.info.kafka_port);
            match self.call(&addr, &req, 3).await {
                Ok(r) => match refused("FindCoordinator", r.error_code) {
                    Ok(()) => return Ok(format!("{}:{}", r.host.as_str(), r.port)),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(KafkaError::Unreachable(last))
    }
}

impl Kafka {
    /// State, members and committed offsets of `group`.
    pub async fn describe(&self, view: &View, group: &str) -> Result<GroupReport, KafkaError> {
        let at = self.coordinator(view, group).await?;
        let id = GroupId(StrBytes::from_string(group.to_string()));
        let d = self
            .call(
                &at,
                &DescribeGroupsRequest::default().with_groups(vec![id.clone()]),
                5,
            )
            .await?;
        let Some(g) = d.groups.into_iter().next() else {
            return Err(KafkaError::Io(format!(
                "{at}: DescribeGroups answered no group"
            )));
        };
        match refused("DescribeGroups", g.error_code) {
            Err(e) if e.code() == Some(ResponseError::GroupIdNotFound) => {
                return Ok(GroupReport {
                    state: "Dead".into(),
                    ..GroupReport::default()
                })
            }
            other => other?,
        }
        let consumer = g.protocol_type.as_str() == "consumer";
        let members = g
            .members
            .into_iter()
            .map(|m| Member {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                partitions: if consumer {
                    assigned(m.member_assignment)
                } else {
                    vec![]
                },
            })
            .collect();
        // No topics: every partition the group has offsets for.
        let f = self
            .call(
                &at,
                &OffsetFetchRequest::default()
                    .with_group_id(id)
                    .with_topics(None),
                7,
            )
            .await?;
        refused("OffsetFetch", f.error_code)?;
        let mut committed = BTreeMap::new();
        for t in f.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    committed.insert((t.name.to_string(), p.partition_index), p.committed_offset);
                }
            }
        }
        Ok(GroupReport {
            state: g.group_state.to_string(),
            members,
            committed,
        })
    }
}

/// The partitions a consumer-protocol assignment names (empty when it
/// cannot be read: a member between rebalances has none).
fn assigned(mut bytes: Bytes) -> Vec<(String, i32)> {
    if bytes.remaining() < 2 {
        return vec![];
    }
    let version = bytes.get_i16();
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)) else {
        return vec![];
    };
    a.assigned_partitions
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic.to_string();
            t.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect()
}

/// Kafka's special ListOffsets timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

impl Kafka {
    /// The offset each partition has at `timestamp` (or [`LATEST`],
    /// [`EARLIEST`]), asked of each partition's leader. A partition whose
    /// leader is unknown or does not answer is left out. Asked as a
    /// read_committed client (the default of librdkafka and the Java client):
    /// the latest offset is the last stable offset, so lag counts what such a
    /// consumer can read, not records of transactions still open.
    pub async fn offsets_at(
        &self,
        view: &View,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> BTreeMap<(String, i32), i64> {
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, p) in partitions {
            if let Some(leader) = view.record(topic, *p).and_then(|r| r.value.leader) {
                by_leader
                    .entry(leader)
                    .or_default()
                    .entry(topic.clone())
                    .or_default()
                    .push(*p);
            }
        }
        let mut out = BTreeMap::new();
        for (leader, topics) in by_leader {
            let Some(addr) = address(view, leader) else {
                continue;
            };
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(1)
                .with_topics(
                    topics
                        .iter()
                        .map(|(t, ps)| {
                            ListOffsetsTopic::default()
                                .with_name(TopicName(StrBytes::from_string(t.clone())))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(*p)
                                                .with_current_leader_epoch(-1)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            match self.call(&addr, &req, 6).await {
                Ok(r) => {
                    for t in r.topics {
                        for p in t.partitions {
                            if p.error_code == 0 {
                                out.insert((t.name.to_string(), p.partition_index), p.offset);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(node = leader, error = %e, "ListOffsets failed"),
            }
        }
        out
    }
}

impl Kafka {
    /// Commits `offsets` for `group` as a client outside the group does
    /// (generation -1, no member id): the coordinator takes it only while the
    /// group has no members.
    pub async fn commit(
        &self,
        view: &View,
        group: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), KafkaError> {
        let at = self.coordinator(view, group).await?;
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((t, p), o) in offsets {
            topics.entry(t).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*o)
                    .with_committed_leader_epoch(-1),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let r = self.call(&at, &req, 8).await?;
        for t in r.topics {
            for p in t.partitions {
                refused("OffsetCommit", p.error_code)?;
            }
        }
        Ok(())
    }
}

impl Kafka {
    /// Deletes `group` (its committed offsets); a group that does not exist
    /// is gone already.
    pub async fn delete(&self, view: &View, group: &str) -> Result<(), KafkaError> {
        let at = self.coordinator(view, group).await?;
        let req = DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_string()))]);
        let r = self.call(&at, &req, 2).await?;
        for g in r.results {
            match refused("DeleteGroups", g.error_code) {
                Err(e) if e.code() == Some(ResponseError::GroupIdNotFound) => {}
                other => other?,
            }
        }
        Ok(())
    }
}
