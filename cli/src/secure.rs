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

fn client_config(props: &BTreeMap<String, String>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match get(props, "ssl.ca.location") {
        Some(path) => {
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading ssl.ca.location {path}"))?
            {
                roots.add(c.with_context(|| format!("a certificate in {path}"))?)?;
            }
        }
        // As librdkafka: the system's trust store.
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        bail!("no CA certificate to trust: set ssl.ca.location");
    }
    let roots = Arc::new(roots);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match get(props, "ssl.endpoint.identification.algorithm") {
        Some("none") => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider).build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
        }
        _ => builder.with_root_certificates(roots),
    };
    let config = match (
        get(props, "ssl.certificate.location"),
        get(props, "ssl.key.location"),
    ) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading ssl.certificate.location {cert}"))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading ssl.key.location {key}"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("ssl.certificate.location and ssl.key.location go together"),
    };
    Ok(Arc::new(config))
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
    }
}
