//! TLS for the Kafka listeners (rustls): the node's certificate and key,
//! and the CA its clients' certificates must chain to, read from PEM files
//! and read again when a file changes, so a rotated certificate is served
//! to the next connection without a restart. A client certificate's
//! subject is the connection's principal, as Kafka's default mapping makes
//! it (`User:CN=alice,OU=...`, RFC 2253 order).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for; a client without one connects as
    /// `User:ANONYMOUS`.
    Requested,
    /// A client without a certificate the CA signed cannot connect.
    Required,
}

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The node's certificate chain.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CAs for client certificates (needed unless client auth is `none`).
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// What identifies a file's content without reading it: a rename
/// (atomic rotation) changes the inode, a rewrite the time or size.
type Stamp = Vec<(u64, i64, i64, u64)>;

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => (m.ino(), m.mtime(), m.mtime_nsec(), m.size()),
            Err(_) => (0, 0, 0, 0),
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Builds the server configuration from the files as they are now.
pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key in {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (files.client_auth, &files.ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => anyhow::bail!("client authentication needs a CA file (--ssl-ca)"),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("a CA certificate in {}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if auth == ClientAuth::Requested {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().context("client certificate verifier")?)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .context("the certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// The TLS settings of every TLS listener, reloaded when the files change.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<(Stamp, Arc<ServerConfig>)>,
}

impl Tls {
    pub fn new(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let s = stamp(&files);
        let config = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: Mutex::new((s, config)),
        }))
    }

    /// The acceptor for the next connection: the files are read again if
    /// they changed since the last one. A half-written rotation (a key that
    /// does not match yet) keeps the previous certificate and is tried
    /// again on the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        let now = stamp(&self.files);
        let mut cur = self.current.lock().expect("tls lock");
        if cur.0 != now {
            match load(&self.files) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    *cur = (now, config);
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "TLS files changed but cannot be loaded yet; serving the previous ones"
                    )
                }
            }
        }
        TlsAcceptor::from(cur.1.clone())
    }
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The principal of a client certificate: `User:` and its subject as Java's
/// `X500Principal.getName()` writes it (last RDN first, no spaces).
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let subject: Vec<_> = c.subject().iter().collect();
    let rdns: Vec<String> = subject
        .into_iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let key = x509_parser::objects::oid2abbrev(atv.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| atv.attr_type().to_id_string());
                    let value = atv.as_str().map(escape).unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Some(format!("User:{}", rdns.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_as_rfc_2253() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(escape("plain"), "plain");
    }
}
