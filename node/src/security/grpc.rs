//! Mutual TLS between nodes (`--replication-tls`): the replication and
//! transaction-marker gRPC services accept only clients whose certificate
//! the CA signed, and each node connects to the others presenting its own
//! certificate and checking theirs. The same PEM files as the Kafka
//! listeners, read again when they change.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use super::tls::{ClientAuth, Tls, TlsFiles};

/// The TLS settings between nodes.
pub struct NodeTls {
    server: Arc<Tls>,
    files: TlsFiles,
    /// Checked on the peers' certificates instead of their host.
    server_name: Option<String>,
}

impl NodeTls {
    /// `ca`: the nodes' own CA, else the listeners' (`--ssl-ca`).
    /// `server_name`: the name peers' certificates must carry, when not
    /// the host connected to.
    pub fn new(
        files: &TlsFiles,
        ca: Option<&std::path::PathBuf>,
        server_name: Option<String>,
    ) -> anyhow::Result<Arc<NodeTls>> {
        let ca = ca.or(files.ca.as_ref()).cloned();
        anyhow::ensure!(
            ca.is_some(),
            "--replication-tls needs the CA of the nodes' certificates (--replication-ssl-ca or --ssl-ca)"
        );
        let files = TlsFiles {
            client_auth: ClientAuth::Required,
            ca,
            ..files.clone()
        };
        Ok(Arc::new(NodeTls {
            server: Tls::new(files.clone())?,
            files,
            server_name,
        }))
    }

    /// The client side, from the files as they are now.
    fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let ca = self.files.ca.as_ref().expect("checked at start");
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(c.context("a CA certificate")?)?;
        }
        let chain = CertificateDer::pem_file_iter(&self.files.cert)?
            .collect::<Result<Vec<_>, _>>()
            .context("the node's certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.files.key).context("the node's key")?;
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// Accepts connections on `listener`, each through a TLS handshake
    /// (in its own task, so a slow peer holds up only itself), as the
    /// stream tonic serves.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<TlsIo>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let acceptor = me.server.acceptor();
                let tx = tx.clone();
                let server_name = me.server_name.clone();
                let peer_addr = peer;
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
                    {
                        Ok(Ok(s)) => {
                            if let Some(name) = &server_name {
                                // Only a node: a client certificate of the
                                // same CA does not carry the nodes' name.
                                let peer =
                                    s.get_ref().1.peer_certificates().and_then(|c| c.first());
                                if !peer.is_some_and(|c| names_dns(c.as_ref(), name)) {
                                    tracing::warn!(%peer_addr, %name, "replication peer refused: its certificate does not name the nodes");
                                    return;
                                }
                            }
                            let _ = tx.send(Ok(TlsIo(s))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "replication TLS handshake failed")
                        }
                        Err(_) => tracing::warn!(%peer, "replication TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// A channel to the node at `host:port` over mutual TLS, its
    /// certificate checked for `host` (or the configured server name).
    pub async fn connect(
        self: &Arc<Self>,
        endpoint: Endpoint,
        addr: &str,
    ) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
        let config = self.client_config()?;
        let addr = addr.to_string();
        let (host, _) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr} has no port"))?;
        let name = match &self.server_name {
            Some(n) => ServerName::try_from(n.clone())?,
            None => ServerName::try_from(host.trim_matches(['[', ']']).to_string())?,
        };
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let (config, addr, name) = (config.clone(), addr.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector(connector).await?)
    }
}

/// Whether the DER certificate carries `name` among its DNS names.
fn names_dns(der: &[u8], name: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| {
        matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name))
    })
}

/// A channel to another node at `addr` (`host:port`): over mutual TLS
/// when `tls` is set, else plain.
pub async fn channel(
    tls: Option<&Arc<NodeTls>>,
    endpoint: Endpoint,
    addr: &str,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    match tls {
        Some(t) => t.connect(endpoint, addr).await,
        None => Ok(endpoint.connect().await?),
    }
}

/// A node's TLS connection, as tonic serves it.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
