//! TCP listener, framing and dispatch.
//!
//! A connection on a TLS listener is a rustls stream; on a SASL listener it
//! must authenticate (SaslHandshake, SaslAuthenticate) before anything but
//! ApiVersions. Each connection is served in order, one request at a time, as Kafka does:
//! responses go back in request order and a long-polling fetch holds back the
//! requests behind it on the same connection. A frame that cannot be a valid
//! request (over `socket.request.max.bytes`, truncated, unknown API key,
//! unsupported version other than ApiVersions, undecodable) closes that
//! connection only; everyone else is unaffected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use sluice_security::ANONYMOUS;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, TcpStream};

use super::limits::{Refused, Reservation};
use super::{
    admin, fetch, group, metadata, produce, security, str_bytes, txn, versions, Authz, Client,
    Services,
};
use crate::metrics::ApiLabels;
use crate::security::sasl::{Authenticator, Failed, Handshake, Outcome};
use crate::security::Protocol;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AlterPartitionReassignmentsResponse, DescribeLogDirsResponse,
    ElectLeadersResponse, EndTxnResponse, InitProducerIdResponse,
    ListPartitionReassignmentsResponse, ProducerId,
};
use sluice_security::{Operation, ResourceType};

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

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub protocol: Protocol,
}

pub async fn serve(services: Arc<Services>, listener: TcpListener, info: Arc<ListenerInfo>) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let services = services.clone();
                let admitted = match services.connections.admit(peer.ip().to_canonical()) {
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
                let info = info.clone();
                tokio::spawn(async move {
                    let metrics = services.broker.metrics.clone();
                    metrics.connections.inc();
                    metrics.connections_open.inc();
                    match accept(&services, sock, peer, info).await {
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

/// Sets a connection up as its listener says (TLS handshake, SASL state)
/// and serves it.
async fn accept(
    services: &Services,
    sock: TcpStream,
    peer: SocketAddr,
    info: Arc<ListenerInfo>,
) -> std::io::Result<Option<&'static str>> {
    sock.set_nodelay(true)?;
    let sasl = info
        .protocol
        .sasl()
        .then(|| Authenticator::new(services.security.sasl.clone()));
    if !info.protocol.tls() {
        let session = Session {
            listener: info,
            principal: ANONYMOUS.to_string(),
            sasl,
        };
        let (rd, wr) = sock.into_split();
        return connection(services, rd, wr, peer, session).await;
    }
    let Some(tls) = services.security.tls.as_ref() else {
        return Ok(Some("tls_unconfigured"));
    };
    let timeout = Duration::from_millis(services.broker.config.request_read_timeout_ms);
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(sock)).await {
        Err(_) => return Ok(Some("tls_handshake_timeout")),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return Ok(Some("tls_handshake"));
        }
        Ok(Ok(s)) => s,
    };
    // The client certificate (mutual TLS) names the principal.
    let principal = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::security::tls::principal_of)
        .unwrap_or_else(|| ANONYMOUS.to_string());
    let session = Session {
        listener: info,
        principal,
        sasl,
    };
    let (rd, wr) = tokio::io::split(stream);
    connection(services, rd, wr, peer, session).await
}

/// Who a connection acts as.
struct Session {
    listener: Arc<ListenerInfo>,
    /// `User:ANONYMOUS`, or the subject of the client's certificate.
    principal: String,
    /// On SASL listeners: the exchange and, once done, the principal.
    sasl: Option<Authenticator>,
}

impl Session {
    /// The principal requests act as; `None` while a SASL connection has
    /// not authenticated (or its session expired).
    fn principal(&self) -> Option<&str> {
        match &self.sasl {
            Some(a) => a.principal(),
            None => Some(&self.principal),
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
/// frame not read whole within the request read timeout, a frame that
/// cannot be a request, or authentication that failed or was skipped.
async fn connection<R, W>(
    services: &Services,
    rd: R,
    wr: W,
    peer: SocketAddr,
    mut session: Session,
) -> std::io::Result<Option<&'static str>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // An IPv4 client of a dual-stack listener is its IPv4 address, as
    // Kafka sees it (host ACLs name it so).
    let host = format!("/{}", peer.ip().to_canonical());
    let broker = &services.broker;
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
        // Refuse before allocating: the length prefix alone decides. Before
        // authentication, only what a SASL exchange needs.
        let limit = if session.principal().is_some() {
            max
        } else {
            max.min(MAX_UNAUTHENTICATED_FRAME)
        };
        if len < 0 || len as u64 > limit as u64 {
            let e = FrameError::TooLarge(len, limit);
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
            Ok(r) => r?.freeze(),
        };
        // SASL: the exchange's own frames, and nothing else before it is done.
        if let Some(auth) = session.sasl.as_mut() {
            if auth.raw() {
                // After a v0 handshake the tokens come bare.
                match authenticate(services, &mut session.sasl, &frame).await {
                    Ok((reply, _)) => {
                        wr.write_all(&(reply.len() as u32).to_be_bytes()).await?;
                        wr.write_all(&reply).await?;
                        wr.flush().await?;
                        continue;
                    }
                    Err(f) => {
                        tracing::info!(%peer, reason = %f.detail, "SASL authentication failed");
                        return Ok(Some("authentication_failed"));
                    }
                }
            }
        }
        let key = frame
            .get(..2)
            .map(|k| i16::from_be_bytes([k[0], k[1]]))
            .unwrap_or(-1);
        if key == ApiKey::SaslHandshake as i16 || key == ApiKey::SaslAuthenticate as i16 {
            let (bytes, close) = match sasl_request(services, &mut session, frame).await {
                Ok(r) => r,
                Err(e) => {
                    broker.metrics.reject_frame(e.reason());
                    tracing::warn!(%peer, error = %e, "closing connection");
                    return Ok(Some("bad_frame"));
                }
            };
            wr.write_all(&bytes).await?;
            wr.flush().await?;
            if let Some(reason) = close {
                tracing::info!(%peer, reason, "closing connection after SASL");
                return Ok(Some(reason));
            }
            continue;
        }
        let principal = match session.principal() {
            Some(p) => p.to_string(),
            None => {
                let exchanging = session.sasl.as_ref().is_some_and(|a| a.exchanging());
                if key == ApiKey::ApiVersions as i16 && !exchanging {
                    ANONYMOUS.to_string()
                } else {
                    // As Kafka: a request other than the exchange's before
                    // authentication (or after the session expired) closes
                    // the connection unanswered.
                    let api = ApiKey::try_from(key).map(|k| format!("{k:?}"));
                    tracing::info!(%peer, api = %api.unwrap_or_else(|_| key.to_string()), "request before SASL authentication; closing");
                    return Ok(Some("unauthenticated"));
                }
            }
        };
        let conn = Connection {
            host: &host,
            principal,
            listener: &session.listener.name,
        };
        // A client that goes away mid-request (a long poll, a parked
        // JoinGroup) ends the request: nobody is left to answer.
        let handling = handle_frame(services, frame, &conn);
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

/// The largest frame a connection may send before it has authenticated:
/// SASL messages are small, and an unauthenticated client must not make
/// the node hold megabytes.
const MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;

/// One SASL token through the connection's authenticator, off the async
/// workers (a PLAIN login runs PBKDF2). Returns the reply and, when the
/// exchange is done, the session's lifetime in ms.
async fn authenticate(
    services: &Services,
    slot: &mut Option<Authenticator>,
    token: &[u8],
) -> Result<(Vec<u8>, Option<i64>), Failed> {
    let mut auth = slot.take().expect("a SASL connection has an authenticator");
    let view = services.broker.view();
    let token = token.to_vec();
    let (auth, outcome) = tokio::task::spawn_blocking(move || {
        let security = view.security.as_ref().map(|s| &s.value);
        let outcome = auth.step(&token, security);
        (auth, outcome)
    })
    .await
    .expect("authentication does not panic");
    *slot = Some(auth);
    let metrics = &services.broker.metrics;
    match outcome {
        Ok(Outcome::Continue(reply)) => Ok((reply, None)),
        Ok(Outcome::Done { reply, lifetime_ms }) => {
            metrics.authentication("success");
            Ok((reply, Some(lifetime_ms)))
        }
        Err(f) => {
            metrics.authentication("failure");
            // Kafka's connection.failed.authentication.delay.ms: guesses
            // come slowly.
            let delay = services.security.sasl.failed_delay_ms;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Err(f)
        }
    }
}

/// SaslHandshake and SaslAuthenticate, which change the connection's
/// state: the encoded answer and, when the connection must close after it,
/// why.
async fn sasl_request(
    services: &Services,
    session: &mut Session,
    frame: Bytes,
) -> Result<(Bytes, Option<&'static str>), FrameError> {
    let d = match decode(frame)? {
        Decoded::Request(d) => d,
        Decoded::Answer(_) => unreachable!("only ApiVersions is answered before decoding"),
    };
    let (api, version, correlation_id) = (d.api, d.version, d.header.correlation_id);
    services
        .broker
        .metrics
        .requests
        .get_or_create(&ApiLabels {
            api: format!("{api:?}"),
        })
        .inc();
    let (body, close) = match d.request {
        RequestKind::SaslHandshake(r) => {
            let Some(auth) = session.sasl.as_mut() else {
                // Kafka answers a handshake on a listener without SASL so.
                let body = SaslHandshakeResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code());
                return encode_response(
                    api,
                    version,
                    correlation_id,
                    &ResponseKind::SaslHandshake(body),
                )
                .map(|b| (b, None));
            };
            let mechanisms = auth.mechanisms().into_iter().map(str_bytes).collect();
            let (code, close) = match auth.handshake(r.mechanism.as_str(), version) {
                Handshake::Accepted => (0, None),
                Handshake::Unsupported => (
                    ResponseError::UnsupportedSaslMechanism.code(),
                    Some("unsupported_sasl_mechanism"),
                ),
                Handshake::Illegal => (
                    ResponseError::IllegalSaslState.code(),
                    Some("illegal_sasl_state"),
                ),
            };
            let body = SaslHandshakeResponse::default()
                .with_error_code(code)
                .with_mechanisms(mechanisms);
            (ResponseKind::SaslHandshake(body), close)
        }
        RequestKind::SaslAuthenticate(r) => {
            let ready = session
                .sasl
                .as_ref()
                .is_some_and(|a| a.expects_token() && !a.raw());
            if !ready {
                let body = SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(str_bytes(
                        "SaslAuthenticate request received before a SaslHandshake",
                    )));
                let close = session.sasl.is_some().then_some("illegal_sasl_state");
                (ResponseKind::SaslAuthenticate(body), close)
            } else {
                match authenticate(services, &mut session.sasl, &r.auth_bytes).await {
                    Ok((reply, lifetime)) => {
                        let mut body =
                            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply));
                        if version >= 1 {
                            body.session_lifetime_ms = lifetime.unwrap_or(0);
                        }
                        (ResponseKind::SaslAuthenticate(body), None)
                    }
                    Err(f) => {
                        tracing::info!(reason = %f.detail, "SASL authentication failed");
                        let body = SaslAuthenticateResponse::default()
                            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                            .with_error_message(Some(str_bytes(f.message)));
                        (
                            ResponseKind::SaslAuthenticate(body),
                            Some("authentication_failed"),
                        )
                    }
                }
            }
        }
        _ => unreachable!("only SASL requests come here"),
    };
    encode_response(api, version, correlation_id, &body).map(|b| (b, close))
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

/// Where a request comes from.
pub struct Connection<'a> {
    /// The peer in Kafka's `/ip` form.
    pub host: &'a str,
    /// `User:...`: authenticated, from a client certificate, or anonymous.
    pub principal: String,
    /// The listener the connection came in on.
    pub listener: &'a str,
}

/// A decoded request.
struct Request {
    api: ApiKey,
    version: i16,
    header: RequestHeader,
    request: RequestKind,
}

enum Decoded {
    /// Answered without decoding (ApiVersions at a version we lack).
    Answer(Response),
    Request(Box<Request>),
}

/// Decodes one request frame (without its length prefix).
fn decode(mut frame: Bytes) -> Result<Decoded, FrameError> {
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
                .map(|bytes| Decoded::Answer(Response { bytes, held: None }));
        }
        return Err(FrameError::UnsupportedVersion(api, version));
    }
    let decoded = std::panic::catch_unwind(move || {
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))?;
        let request = RequestKind::decode(api, &mut frame, version)?;
        Ok::<_, anyhow::Error>((header, request))
    });
    match decoded {
        Ok(Ok((header, request))) => Ok(Decoded::Request(Box::new(Request {
            api,
            version,
            header,
            request,
        }))),
        Ok(Err(e)) => Err(FrameError::Malformed(api, version, e.to_string())),
        Err(_) => Err(FrameError::Malformed(
            api,
            version,
            "decoder panicked".into(),
        )),
    }
}

/// Decodes one request frame (without its length prefix), handles it and
/// returns the encoded response frame, `None` when the request wants no
/// response (acks=0 produce), or why the connection must close.
pub async fn handle_frame(
    services: &Services,
    frame: Bytes,
    conn: &Connection<'_>,
) -> Result<Option<Response>, FrameError> {
    let broker = &services.broker;
    let Request {
        api,
        version,
        header,
        request,
    } = match decode(frame)? {
        Decoded::Answer(r) => return Ok(Some(r)),
        Decoded::Request(r) => *r,
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
        host: conn.host.to_string(),
        principal: conn.principal.clone(),
        listener: conn.listener.to_string(),
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
    let authz = Authz { svc, client };
    Some(match request {
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(group::find_coordinator(svc, r, v, client))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(group::join_group(svc, r, v, client).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(group::sync_group(svc, r, v, client).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(group::heartbeat(svc, r, v, client)),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(group::leave_group(svc, r, v, client))
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(group::offset_commit(svc, r, v, client).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(group::offset_fetch(svc, r, v, client))
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(group::describe_groups(svc, r, v, client))
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(group::list_groups(svc, r, v, client))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(group::delete_groups(svc, r, v, client).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(group::offset_delete(svc, r, v, client).await)
        }
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions_body(0)),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::metadata(svc, r, v, client).await)
        }
        RequestKind::DescribeCluster(r) => ResponseKind::DescribeCluster(
            metadata::describe_cluster(broker, r, v, &client.listener),
        ),
        RequestKind::DescribeTopicPartitions(r) => ResponseKind::DescribeTopicPartitions(
            metadata::describe_topic_partitions(svc, r, v, client),
        ),
        RequestKind::Produce(r) => {
            ResponseKind::Produce(produce::produce(svc, r, v, client).await?)
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(admin::alter_configs(broker, r, v, &authz).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            admin::incremental_alter_configs(broker, r, v, &authz).await,
        ),
        RequestKind::DescribeLogDirs(r) => {
            if authz.cluster(Operation::Describe).is_err() {
                ResponseKind::DescribeLogDirs(
                    DescribeLogDirsResponse::default()
                        .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
                )
            } else {
                ResponseKind::DescribeLogDirs(admin::describe_log_dirs(broker, r, v))
            }
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(admin::describe_producers(broker, r, v, &authz))
        }
        RequestKind::DeleteRecords(r) => {
            // Store writes and the compaction of the deleted range, off the
            // async workers.
            let broker = broker.clone();
            let denied: Vec<String> = r
                .topics
                .iter()
                .map(|t| t.name.to_string())
                .filter(|n| authz.topic(Operation::Delete, n).is_err())
                .collect();
            ResponseKind::DeleteRecords(
                tokio::task::spawn_blocking(move || admin::delete_records(&broker, r, v, &denied))
                    .await
                    .expect("DeleteRecords does not panic"),
            )
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(fetch::offset_for_leader_epoch(svc, r, v, client))
        }
        RequestKind::InitProducerId(r) => {
            // WRITE on the transactional id; an idempotent producer needs
            // IDEMPOTENT_WRITE on the cluster or WRITE on some topic.
            let denied = match r.transactional_id.as_deref() {
                Some(id) if !id.is_empty() => (!svc.authorize_txn(client, Operation::Write, id))
                    .then_some(ResponseError::TransactionalIdAuthorizationFailed),
                _ => (!svc.authorize_cluster(client, Operation::IdempotentWrite)
                    && !svc.authorize_any(client, Operation::Write, ResourceType::Topic))
                .then_some(ResponseError::ClusterAuthorizationFailed),
            };
            match denied {
                Some(e) => ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(e.code())
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ),
                None => ResponseKind::InitProducerId(txn::init_producer_id(svc, r, v).await),
            }
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(txn::add_partitions_to_txn(svc, r, v, &authz).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            let denied = if !svc.authorize_txn(client, Operation::Write, &r.transactional_id) {
                Some(ResponseError::TransactionalIdAuthorizationFailed)
            } else if !svc.authorize_group(client, Operation::Read, &r.group_id) {
                Some(ResponseError::GroupAuthorizationFailed)
            } else {
                None
            };
            match denied {
                Some(e) => ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(e.code()),
                ),
                None => ResponseKind::AddOffsetsToTxn(txn::add_offsets_to_txn(svc, r, v).await),
            }
        }
        RequestKind::EndTxn(r)
            if !svc.authorize_txn(client, Operation::Write, &r.transactional_id) =>
        {
            ResponseKind::EndTxn(
                EndTxnResponse::default()
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end_txn(svc, r, v).await),
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn::txn_offset_commit(svc, r, v, &authz).await)
        }
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(txn::describe_transactions(svc, r, v, client))
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(txn::list_transactions(svc, r, v, client))
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(svc, r, v, held, client).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(fetch::list_offsets(svc, r, v, client))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(broker, r, v, &authz).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(broker, r, v, &authz).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(broker, r, v, &authz).await)
        }
        RequestKind::AlterPartitionReassignments(_) if authz.cluster(Operation::Alter).is_err() => {
            ResponseKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::default()
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
            )
        }
        RequestKind::ListPartitionReassignments(_)
            if authz.cluster(Operation::Describe).is_err() =>
        {
            ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default()
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
            )
        }
        RequestKind::ElectLeaders(_) if authz.cluster(Operation::Alter).is_err() => {
            ResponseKind::ElectLeaders(
                ElectLeadersResponse::default()
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
            )
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
        RequestKind::DescribeUserScramCredentials(r) => ResponseKind::DescribeUserScramCredentials(
            security::describe_user_scram_credentials(svc, r, client).await,
        ),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            security::alter_user_scram_credentials(svc, r, client).await,
        ),
        RequestKind::CreateAcls(r) => {
            ResponseKind::CreateAcls(security::create_acls(svc, r, client).await)
        }
        RequestKind::DescribeAcls(r) => {
            ResponseKind::DescribeAcls(security::describe_acls(svc, r, client).await)
        }
        RequestKind::DeleteAcls(r) => {
            ResponseKind::DeleteAcls(security::delete_acls(svc, r, client).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(broker, r, v, &authz))
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
