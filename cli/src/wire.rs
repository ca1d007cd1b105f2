//! Single Kafka requests, encoded by `kafka-protocol`, for the admin calls
//! the `rdkafka` crate does not wrap: IncrementalAlterConfigs, and a
//! Metadata answer carrying racks and the controller. One connection per
//! call (TLS and a SASL login when the properties ask: [`crate::secure`]),
//! the version agreed through ApiVersions; nothing else of a client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use anyhow::{anyhow, bail, Context as _};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::connect::{with_port, Conn};
use crate::secure::{Sasl, Security};

/// The connection: plain, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Largest answer accepted, so a confused peer cannot make us allocate
/// without bound.
const MAX_RESPONSE: usize = 64 << 20;

/// A broker refused the login: final, whichever broker is asked.
#[derive(Debug)]
struct LoginRefused(String);

impl std::fmt::Display for LoginRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoginRefused {}

pub struct Wire {
    stream: Stream,
    correlation: i32,
    versions: ApiVersionsResponse,
    pub address: String,
}

impl Wire {
    /// Connects to the first bootstrap broker that answers.
    pub fn connect(conn: &Conn) -> anyhow::Result<Wire> {
        Wire::connect_any(conn, conn.brokers.split(','))
    }

    /// Connects to the first of `addresses` that answers ApiVersions.
    pub fn connect_any<'a>(
        conn: &Conn,
        addresses: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<Wire> {
        // Settings that cannot work fail here, not as an unreachable broker.
        let security = Security::from_properties(&conn.properties)?;
        let mut last = None;
        for b in addresses
            .into_iter()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            match Wire::open(conn, b, &security) {
                Ok(w) => return Ok(w),
                // Another broker would refuse the same login.
                Err(e) if e.is::<LoginRefused>() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no broker address given"))).with_context(|| {
            format!(
                "cannot reach a broker at {}; is it running? Set the address with -b/--brokers or SLUICE_BROKERS",
                conn.brokers
            )
        })
    }

    fn open(conn: &Conn, b: &str, security: &Security) -> anyhow::Result<Wire> {
        let mut last = anyhow!("{b}: no address");
        for a in with_port(b)
            .to_socket_addrs()
            .with_context(|| b.to_string())?
        {
            let stream = match TcpStream::connect_timeout(&a, conn.timeout) {
                Ok(s) => s,
                Err(e) => {
                    last = anyhow!("{b}: {e}");
                    continue;
                }
            };
            stream.set_read_timeout(Some(conn.timeout))?;
            stream.set_write_timeout(Some(conn.timeout))?;
            let stream = match &security.tls {
                None => Stream::Plain(stream),
                Some(config) => {
                    let host = with_port(b)
                        .rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                        .unwrap_or_default();
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .with_context(|| format!("{b}: not a host name for TLS"))?;
                    let tls = rustls::ClientConnection::new(config.clone(), name)?;
                    Stream::Tls(Box::new(rustls::StreamOwned::new(tls, stream)))
                }
            };
            let mut w = Wire {
                stream,
                correlation: 0,
                versions: ApiVersionsResponse::default(),
                address: b.to_string(),
            };
            // v0: every broker answers it, whatever it supports.
            w.versions = w.send_version(&ApiVersionsRequest::default(), 0)?;
            if w.versions.error_code != 0 {
                bail!("{b} refused ApiVersions (error {})", w.versions.error_code);
            }
            if let Some((mech, user, password)) = &security.sasl {
                w.login(*mech, user, password)?;
            }
            return Ok(w);
        }
        Err(last)
    }

    /// SaslHandshake v1, then SaslAuthenticate (PLAIN in one step, SCRAM
    /// in two, the broker's proof checked).
    fn login(&mut self, mech: Sasl, user: &str, password: &str) -> anyhow::Result<()> {
        let name = match mech {
            Sasl::Plain => "PLAIN",
            Sasl::Scram(m) => m.name(),
        };
        let peer = self.address.clone();
        let h = self.send_version(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name)),
            1,
        )?;
        if h.error_code != 0 {
            let offered: Vec<String> = h.mechanisms.iter().map(|m| m.to_string()).collect();
            bail!(
                "{peer} does not take {name} (it offers {})",
                offered.join(", ")
            );
        }
        let mut step = |bytes: Vec<u8>| -> anyhow::Result<Bytes> {
            let r = self.send_version(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)),
                1,
            )?;
            if r.error_code != 0 {
                return Err(LoginRefused(format!(
                    "{peer}: authentication failed: {}",
                    r.error_message.as_deref().unwrap_or("no reason given")
                ))
                .into());
            }
            Ok(r.auth_bytes)
        };
        match mech {
            Sasl::Plain => {
                step(format!("\0{user}\0{password}").into_bytes())?;
            }
            Sasl::Scram(m) => {
                let client = sluice_security::scram::ClientExchange::new(
                    m,
                    user,
                    password,
                    &sluice_security::scram::server_nonce(),
                );
                let first = step(client.first())?;
                let (last, expect) = client
                    .last(&first)
                    .map_err(|e| anyhow!("{peer}: SCRAM: {e}"))?;
                if step(last)?.as_ref() != expect.as_slice() {
                    bail!("{peer} did not prove it knows the credential");
                }
            }
        }
        Ok(())
    }

    /// The highest version of `R` both sides speak.
    pub fn version<R: Request>(&self) -> anyhow::Result<i16> {
        let ours = R::VERSIONS;
        let theirs = self
            .versions
            .api_keys
            .iter()
            .find(|k| k.api_key == R::KEY)
            .ok_or_else(|| anyhow!("{} does not support API key {}", self.address, R::KEY))?;
        let v = ours.max.min(theirs.max_version);
        if v < ours.min.max(theirs.min_version) {
            bail!(
                "{} speaks no version of API key {} this command knows",
                self.address,
                R::KEY
            );
        }
        Ok(v)
    }

    /// Sends `req` at the highest common version; returns it with the answer.
    pub fn send<R: Request>(&mut self, req: &R) -> anyhow::Result<(i16, R::Response)> {
        let v = self.version::<R>()?;
        Ok((v, self.send_version(req, v)?))
    }

    fn send_version<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<R::Response> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-cli")));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        let peer = self.address.clone();
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending a request to {peer}"))?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .with_context(|| format!("{peer} closed the connection or did not answer"))?;
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > MAX_RESPONSE {
            bail!("{peer} answered with a frame of {len} bytes");
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        let mut resp = Bytes::from(buf);
        let rh = ResponseHeader::decode(&mut resp, R::Response::header_version(version))?;
        if rh.correlation_id != self.correlation {
            bail!(
                "{peer} answered another request (correlation {})",
                rh.correlation_id
            );
        }
        let out = R::Response::decode(&mut resp, version)
            .with_context(|| format!("cannot read {peer}'s answer"))?;
        Ok(out)
    }
}
