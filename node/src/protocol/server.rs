//! TCP listener, framing and dispatch.
//!
//! Each connection is served in order, one request at a time, as Kafka does:
//! responses go back in request order and a long-polling fetch holds back the
//! requests behind it on the same connection. A frame that cannot be a valid
//! request (over `socket.request.max.bytes`, truncated, unknown API key,
//! unsupported version other than ApiVersions, undecodable) closes that
//! connection only; everyone else is unaffected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use super::limits::{Refused, Reservation};
use super::{admin, fetch, group, metadata, produce, txn, versions, Client, Services};
use crate::metrics::ApiLabels;

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds socket.request.max.bytes ({1})")]
    TooLarge(i64, usize),
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{0:?} v{1} is not supported")]
    UnsupportedVersion(ApiKey, i16),
    #[error("malformed {0:?} v{1} request: {2}")]
    Malformed(ApiKey, i16, String),
    #[error("could not encode {0:?} v{1} response: {2}")]
    Encode(ApiKey, i16, String),
}

impl FrameError {
    fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge(..) => "too_large",
            FrameError::TooShort(_) => "too_short",
            FrameError::UnknownApi(_) => "unknown_api",
            FrameError::UnsupportedVersion(..) => "unsupported_version",
            FrameError::Malformed(..) => "malformed",
            FrameError::Encode(..) => "encode",
        }
    }
}

pub async fn serve(services: Arc<Services>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let services = services.clone();
                let admitted = match services.connections.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        // Accepted and closed at once, as Kafka does.
                        let reason = match why {
                            Refused::Total => "max_connections",
                            Refused::PerIp => "max_connections_per_ip",
                        };
                        services.broker.metrics.close_connection(reason);
                        tracing::warn!(%peer, ?why, "connection refused: too many connections");
                        drop(sock);
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let metrics = services.broker.metrics.clone();
                    metrics.connections.inc();
                    metrics.connections_open.inc();
                    match connection(&services, sock).await {
                        Ok(Some(reason)) => {
                            metrics.close_connection(reason);
                            tracing::info!(%peer, reason, "connection closed");
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an I/O error")
                        }
                    }
                    metrics.connections_open.dec();
                    drop(admitted);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the `len` bytes of a frame into a buffer of exactly that size,
/// without zeroing it first (the bytes are written once, by the read).
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> std::io::Result<BytesMut> {
    let mut frame = BytesMut::with_capacity(len);
    let mut rest = rd.take(len as u64);
    while frame.len() < len {
        if rest.read_buf(&mut frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(frame)
}

/// Serves one connection until the client closes it (`Ok(None)`) or the
/// node does (`Ok(Some(reason))`): idle for `connections.max.idle.ms`, a
/// frame not read whole within the request read timeout, or a frame that
/// cannot be a request.
async fn connection(services: &Services, sock: TcpStream) -> std::io::Result<Option<&'static str>> {
    sock.set_nodelay(true)?;
    let peer = sock.peer_addr()?;
    let host = format!("/{}", peer.ip());
    let broker = &services.broker;
    let (rd, wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    let max = broker.config.socket_request_max_bytes;
    let idle = Duration::from_millis(broker.config.connections_max_idle_ms);
    let read_timeout = Duration::from_millis(broker.config.request_read_timeout_ms);
    loop {
        // Idle until the first byte of the next frame.
        match tokio::time::timeout(idle, rd.fill_buf()).await {
            Err(_) => return Ok(Some("idle")),
            Ok(Ok([])) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        // From its first byte, a frame must arrive whole in time.
        let started = tokio::time::Instant::now() + read_timeout;
        let len = match tokio::time::timeout_at(started, rd.read_i32()).await {
            Err(_) => return Ok(Some("read_timeout")),
            Ok(Ok(n)) => i64::from(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Ok(Err(e)) => return Err(e),
        };
        // Refuse before allocating: the length prefix alone decides.
        if len < 0 || len as u64 > max as u64 {
            let e = FrameError::TooLarge(len, max);
            broker.metrics.reject_frame(e.reason());
            tracing::warn!(%peer, error = %e, "closing connection");
            return Ok(Some("bad_frame"));
        }
        // Room in the memory pool first: when it is full, this connection
        // waits (and stops reading) rather than allocating.
        let mut held = services.pool.reserve(len as usize).await;
        let frame = match tokio::time::timeout_at(started, read_frame(&mut rd, len as usize)).await
        {
            Err(_) => return Ok(Some("read_timeout")),
            Ok(r) => r?,
        };
        // A client that goes away mid-request (a long poll, a parked
        // JoinGroup) ends the request: nobody is left to answer.
        let handling = handle_frame(services, frame.freeze(), &host);
        tokio::pin!(handling);
        let mut watching = true;
        let handled = loop {
            tokio::select! {
                r = &mut handling => break r,
                closed = async { rd.fill_buf().await.map(|b| b.is_empty()) }, if watching => match closed {
                    Ok(false) => watching = false, // a pipelined request waits its turn
                    Ok(true) | Err(_) => return Ok(None),
                },
            }
        };
        match handled {
            Ok(Some(response)) => {
                if let Some(more) = response.held {
                    held.absorb(more);
                }
                // Flushed at once: a pipelined request behind this one may be
                // a long poll, and this answer must not wait for it.
                wr.write_all(&response.bytes).await?;
                wr.flush().await?;
            }
            Ok(None) => {}
            Err(e) => {
                broker.metrics.reject_frame(e.reason());
                tracing::warn!(%peer, error = %e, "closing connection");
                wr.flush().await?;
                return Ok(Some("bad_frame"));
            }
        }
        drop(held);
    }
}

/// An encoded answer, with the pool memory that built it (a fetch's),
/// held until it is written.
pub struct Response {
    pub bytes: Bytes,
    pub held: Option<Reservation>,
}

fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| FrameError::Encode(api, version, e.to_string()))?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes one request frame (without its length prefix), handles it and
/// returns the encoded response frame, `None` when the request wants no
/// response (acks=0 produce), or why the connection must close.
pub async fn handle_frame(
    services: &Services,
    mut frame: Bytes,
    host: &str,
) -> Result<Option<Response>, FrameError> {
    let broker = &services.broker;
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApi(key))?;
    let range = versions::supported(api);
    let in_range = range.is_some_and(|(min, max)| (min..=max).contains(&version));
    if !in_range {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer an ApiVersions we cannot parse in v0 form, with
            // the error and our ranges, so the client can retry with one.
            let body = ResponseKind::ApiVersions(api_versions_body(
                ResponseError::UnsupportedVersion.code(),
            ));
            return encode_response(api, 0, correlation_id, &body)
                .map(|bytes| Some(Response { bytes, held: None }));
        }
        return Err(FrameError::UnsupportedVersion(api, version));
    }
    let decoded = std::panic::catch_unwind(move || {
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))?;
        let request = RequestKind::decode(api, &mut frame, version)?;
        Ok::<_, anyhow::Error>((header, request))
    });
    let (header, request) = match decoded {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(FrameError::Malformed(api, version, e.to_string())),
        Err(_) => {
            return Err(FrameError::Malformed(
                api,
                version,
                "decoder panicked".into(),
            ))
        }
    };
    let labels = ApiLabels {
        api: format!("{api:?}"),
    };
    broker.metrics.requests.get_or_create(&labels).inc();
    let started = Instant::now();
    let client = Client {
        client_id: header
            .client_id
            .as_deref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        host: host.to_string(),
    };
    let mut held = None;
    let response = dispatch(services, &header, request, &client, &mut held).await;
    broker
        .metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match response {
        Some(body) => {
            let bytes = encode_response(api, version, header.correlation_id, &body)?;
            drop(body);
            // What stays held is the encoded answer (the records were
            // copied into it and are gone).
            if let Some(h) = held.as_mut() {
                h.shrink_to(bytes.len());
            }
            Ok(Some(Response { bytes, held }))
        }
        None => Ok(None),
    }
}

pub(crate) fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            versions::SUPPORTED
                .iter()
                .map(|&(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

async fn dispatch(
    svc: &Services,
    header: &RequestHeader,
    request: RequestKind,
    client: &Client,
    held: &mut Option<Reservation>,
) -> Option<ResponseKind> {
    let v = header.request_api_version;
    let broker = &svc.broker;
    Some(match request {
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(group::find_coordinator(svc, r, v))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(group::join_group(svc, r, v, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(group::sync_group(svc, r, v).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(group::heartbeat(svc, r, v)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(group::leave_group(svc, r, v)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(group::offset_commit(svc, r, v).await)
        }
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(group::offset_fetch(svc, r, v)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(group::describe_groups(svc, r, v))
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(group::list_groups(svc, r, v)),
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(group::delete_groups(svc, r, v).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(group::offset_delete(svc, r, v).await)
        }
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions_body(0)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(broker, r, v).await),
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(broker, r, v))
        }
        RequestKind::DescribeTopicPartitions(r) => {
            ResponseKind::DescribeTopicPartitions(metadata::describe_topic_partitions(broker, r, v))
        }
        RequestKind::Produce(r) => ResponseKind::Produce(produce::produce(svc, r, v).await?),
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(admin::alter_configs(broker, r, v).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            admin::incremental_alter_configs(broker, r, v).await,
        ),
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(admin::describe_log_dirs(broker, r, v))
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(admin::describe_producers(broker, r, v))
        }
        RequestKind::DeleteRecords(r) => {
            // Store writes and the compaction of the deleted range, off the
            // async workers.
            let broker = broker.clone();
            ResponseKind::DeleteRecords(
                tokio::task::spawn_blocking(move || admin::delete_records(&broker, r, v))
                    .await
                    .expect("DeleteRecords does not panic"),
            )
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(fetch::offset_for_leader_epoch(broker, r, v))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(txn::init_producer_id(svc, r, v).await)
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(txn::add_partitions_to_txn(svc, r, v).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(txn::add_offsets_to_txn(svc, r, v).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end_txn(svc, r, v).await),
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn::txn_offset_commit(svc, r, v).await)
        }
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(txn::describe_transactions(svc, r, v))
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(txn::list_transactions(svc, r, v))
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(svc, r, v, held).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(fetch::list_offsets(broker, r, v)),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(broker, r, v).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(broker, r, v).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(broker, r, v).await)
        }
        RequestKind::AlterPartitionReassignments(r) => ResponseKind::AlterPartitionReassignments(
            admin::alter_partition_reassignments(broker, r, v).await,
        ),
        RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
            admin::list_partition_reassignments(broker, r, v).await,
        ),
        RequestKind::ElectLeaders(r) => {
            ResponseKind::ElectLeaders(admin::elect_leaders(broker, r, v).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(broker, r, v))
        }
        other => {
            // versions::supported() admits only the APIs above.
            tracing::error!(request = ?other, "advertised API without a handler");
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_errors_have_distinct_reasons() {
        let all = [
            FrameError::TooLarge(1, 0),
            FrameError::TooShort(0),
            FrameError::UnknownApi(999),
            FrameError::UnsupportedVersion(ApiKey::Produce, 0),
            FrameError::Malformed(ApiKey::Produce, 3, String::new()),
            FrameError::Encode(ApiKey::Produce, 3, String::new()),
        ];
        let mut reasons: Vec<_> = all.iter().map(|e| e.reason()).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }
}
