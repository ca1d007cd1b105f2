//! TLS and SASL for the CLI's single requests ([`crate::wire`]), from the
//! same librdkafka properties the other commands pass to librdkafka
//! (`security.protocol`, `ssl.ca.location`, `ssl.certificate.location`,
//! `ssl.key.location`, `ssl.endpoint.identification.algorithm`,
//! `sasl.mechanisms`, `sasl.username`, `sasl.password`), so one profile
//! serves every command. TLS through rustls; SCRAM's client side from
//! `sluice-security`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sluice_security::Mechanism;

/// A SASL mechanism the CLI's single requests speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sasl {
    Plain,
    Scram(Mechanism),
}

/// How a connection is made and who logs in.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Mechanism, user name, password.
    pub sasl: Option<(Sasl, String, String)>,
}

fn get<'a>(props: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    props.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

impl Security {
    /// What the properties ask for; a protocol or mechanism the single
    /// requests do not speak is an error naming it.
    pub fn from_properties(props: &BTreeMap<String, String>) -> anyhow::Result<Security> {
        let protocol = get(props, "security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => bail!("security.protocol {other:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
        };
        let sasl = if sasl {
            let mech = get(props, "sasl.mechanisms")
                .or_else(|| get(props, "sasl.mechanism"))
                .unwrap_or("GSSAPI");
            let mech = match mech.to_ascii_uppercase().as_str() {
                "PLAIN" => Sasl::Plain,
                "SCRAM-SHA-256" => Sasl::Scram(Mechanism::Sha256),
                "SCRAM-SHA-512" => Sasl::Scram(Mechanism::Sha512),
                other => bail!(
                    "sasl.mechanisms {other} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                ),
            };
            let user =
                get(props, "sasl.username").ok_or_else(|| anyhow!("SASL needs sasl.username"))?;
            let password =
                get(props, "sasl.password").ok_or_else(|| anyhow!("SASL needs sasl.password"))?;
            Some((mech, user.to_string(), password.to_string()))
        } else {
            None
        };
        let tls = if tls {
            Some(client_config(props)?)
        } else {
            None
        };
        Ok(Security { tls, sasl })
    }
}

/// Whether a librdkafka boolean property is set false.
fn is_false(props: &BTreeMap<String, String>, key: &str) -> bool {
    get(props, key).is_some_and(|v| v.eq_ignore_ascii_case("false") || v == "0")
}

/// The CA certificates to trust: `ssl.ca.pem`, `ssl.ca.location` (a file,
/// a directory of PEM files, or `probe`), else the system's store, as
/// librdkafka.
fn roots(props: &BTreeMap<String, String>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let mut pems: Vec<(String, Vec<u8>)> = vec![];
    if let Some(pem) = get(props, "ssl.ca.pem") {
        pems.push(("ssl.ca.pem".into(), pem.as_bytes().to_vec()));
    }
    match get(props, "ssl.ca.location") {
        Some("probe") | None if pems.is_empty() => {
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                bail!("no CA certificate in the system's trust store: set ssl.ca.location");
            }
            return Ok(roots);
        }
        Some("probe") | None => {}
        Some(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("reading ssl.ca.location {path}"))?;
            let files: Vec<std::path::PathBuf> = if meta.is_dir() {
                std::fs::read_dir(path)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect()
            } else {
                vec![path.into()]
            };
            for f in files {
                if let Ok(bytes) = std::fs::read(&f) {
                    pems.push((f.display().to_string(), bytes));
                }
            }
        }
    }
    for (from, bytes) in pems {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 && get(props, "ssl.ca.location").is_some_and(|l| l == from) {
            bail!("no CA certificate in {from}");
        }
    }
    if roots.is_empty() {
        bail!("no CA certificate in ssl.ca.location / ssl.ca.pem");
    }
    Ok(roots)
}

fn client_config(props: &BTreeMap<String, String>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    for unsupported in ["ssl.keystore.location", "ssl.key.password"] {
        if get(props, unsupported).is_some() {
            bail!("{unsupported} is not supported by cluster info and config set: give the client certificate as PEM (ssl.certificate.location and an unencrypted ssl.key.location)");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let names = get(props, "ssl.endpoint.identification.algorithm").unwrap_or("https");
    let builder = if is_false(props, "enable.ssl.certificate.verification") {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
    } else if names.eq_ignore_ascii_case("none") {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(props)?), provider)
            .build()?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
    } else if names.eq_ignore_ascii_case("https") {
        builder.with_root_certificates(roots(props)?)
    } else {
        bail!("ssl.endpoint.identification.algorithm {names:?} is not one of none, https");
    };
    let cert = match (
        get(props, "ssl.certificate.pem"),
        get(props, "ssl.certificate.location"),
    ) {
        (Some(pem), _) => Some(pem.as_bytes().to_vec()),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading ssl.certificate.location {path}"))?,
        ),
        (None, None) => None,
    };
    let key = match (get(props, "ssl.key.pem"), get(props, "ssl.key.location")) {
        (Some(pem), _) => Some(pem.as_bytes().to_vec()),
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("reading ssl.key.location {path}"))?)
        }
        (None, None) => None,
    };
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(&key).context("the client certificate's key")?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("a client certificate needs both its certificate and its key (ssl.certificate.* and ssl.key.*)"),
    };
    Ok(Arc::new(config))
}

/// `enable.ssl.certificate.verification=false`: any certificate, as
/// librdkafka then takes (the handshake's signatures are still checked).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `ssl.endpoint.identification.algorithm=none`: the chain is checked
/// against the CA as always, the host name is not (as librdkafka does).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_properties_say_how_to_connect_and_refuse_what_is_not_spoken() {
        let s = Security::from_properties(&props(&[])).unwrap();
        assert!(s.tls.is_none() && s.sasl.is_none());
        let s = Security::from_properties(&props(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
            ("sasl.password", "pw"),
        ]))
        .unwrap();
        assert!(s.tls.is_none());
        assert_eq!(
            s.sasl,
            Some((Sasl::Scram(Mechanism::Sha512), "alice".into(), "pw".into()))
        );
        let e = |kv: &[(&str, &str)]| {
            Security::from_properties(&props(kv))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(e(&[("security.protocol", "tls")]).contains("security.protocol"));
        assert!(e(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "GSSAPI")
        ])
        .contains("GSSAPI"));
        assert!(e(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "PLAIN")
        ])
        .contains("sasl.username"));
        assert!(e(&[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", "/nonexistent/ca.pem")
        ])
        .contains("ssl.ca.location"));
        assert!(e(&[
            ("security.protocol", "ssl"),
            ("ssl.keystore.location", "/k.p12")
        ])
        .contains("ssl.keystore.location"));
        assert!(e(&[
            ("security.protocol", "ssl"),
            ("ssl.endpoint.identification.algorithm", "dns")
        ])
        .contains("none, https"));
        // Verification off needs no CA, as librdkafka.
        let s = Security::from_properties(&props(&[
            ("security.protocol", "SSL"),
            ("enable.ssl.certificate.verification", "False"),
        ]))
        .unwrap();
        assert!(s.tls.is_some());
    }
}
