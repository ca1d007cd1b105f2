//! Certificates the operator issues, as pure functions of what it read:
//! the cluster's two CAs (one signs the nodes, one signs the users'
//! client certificates, so no client certificate passes for a node), the
//! nodes' certificate, and users' client certificates; and when each is
//! due for renewal (two thirds into its life, as cert-manager's default).
//!
//! A renewed CA keeps its name and key, so clients holding the old CA
//! certificate trust what the new one signs; its bundle keeps the old
//! certificate until it expires as well. The I/O (the Secrets) is in
//! [`crate::tls`].

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("the certificate cannot be read: {0}")]
    Parse(String),
}

/// A certificate (or a bundle, the current one first) and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// A storage node: a TLS server for Kafka clients and both ends of
    /// replication, valid for these DNS names.
    Node { dns_names: Vec<String> },
    /// A Kafka client whose principal is `User:CN=<name>`.
    Client { common_name: String },
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    // Positive, as RFC 5280 asks.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA named `common_name`, valid from `now` for `days`,
/// with `key` (PEM) when given: a renewed CA keeps its name and key, so
/// what trusted the old certificate trusts what the new one signs.
pub fn new_ca(
    common_name: &str,
    now: OffsetDateTime,
    days: i64,
    key: Option<&str>,
) -> Result<Pem, CertError> {
    let key = match key {
        Some(pem) => KeyPair::from_pem(pem)?,
        None => KeyPair::generate()?,
    };
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sluice");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A minute back: clocks of the nodes may be a little behind.
    p.not_before = now - Duration::minutes(1);
    p.not_after = now + Duration::days(days);
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A leaf certificate signed by `ca` (its first certificate and its key),
/// valid from `now` for `days`.
pub fn issue(ca: &Pem, leaf: &Leaf, now: OffsetDateTime, days: i64) -> Result<Pem, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let first = first_pem(&ca.cert)?;
    let issuer = Issuer::from_ca_cert_pem(&first, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    match leaf {
        Leaf::Node { dns_names } => {
            p = CertificateParams::new(dns_names.clone())?;
            dn.push(DnType::OrganizationName, "Sluice");
            dn.push(
                DnType::CommonName,
                dns_names.first().cloned().unwrap_or_default(),
            );
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        Leaf::Client { common_name } => {
            // The subject is the principal: `User:CN=<name>`, nothing more.
            dn.push(DnType::CommonName, common_name.as_str());
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - Duration::minutes(1);
    p.not_after = now + Duration::days(days);
    p.serial_number = Some(random_serial());
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The certificates of a PEM text, each as its own PEM block.
fn blocks(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn first_pem(text: &str) -> Result<String, CertError> {
    blocks(text)
        .into_iter()
        .next()
        .ok_or(CertError::NoCertificate)
}

/// What the operator needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
    /// The issuer's and the subject's names, RFC 4514.
    pub issuer: String,
    pub subject: String,
}

/// The facts of the first certificate of a PEM text.
pub fn facts(text: &str) -> Result<Facts, CertError> {
    let first = first_pem(text)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(first.as_bytes())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).map_err(|e| CertError::Parse(e.to_string()))
    };
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Facts {
        not_before: at(cert.validity().not_before.timestamp())?,
        not_after: at(cert.validity().not_after.timestamp())?,
        dns_names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    })
}

/// Whether a certificate should be replaced at `now`: unreadable, or two
/// thirds into its life.
pub fn renewal_due(cert: &str, now: OffsetDateTime) -> bool {
    match facts(cert) {
        Ok(f) => {
            let life = f.not_after - f.not_before;
            now >= f.not_before + life * 2 / 3
        }
        Err(_) => true,
    }
}

/// A renewed CA's bundle: the new certificate first, then those of `old`
/// still valid at `now` (certificates they signed stay trusted until they
/// are replaced too).
pub fn bundle(new_cert: &str, old: &str, now: OffsetDateTime) -> String {
    let mut out = new_cert.to_string();
    for b in blocks(old) {
        if facts(&b).is_ok_and(|f| f.not_after > now) && !out.contains(b.trim()) {
            out.push_str(&b);
        }
    }
    out
}

/// Whether `leaf` was signed by the CA whose certificate comes first in
/// `ca` (by name and signature).
pub fn signed_by(leaf: &str, ca: &str) -> bool {
    let (Ok(leaf), Ok(ca)) = (first_pem(leaf), first_pem(ca)) else {
        return false;
    };
    let (Ok((_, l)), Ok((_, c))) = (
        x509_parser::pem::parse_x509_pem(leaf.as_bytes()),
        x509_parser::pem::parse_x509_pem(ca.as_bytes()),
    ) else {
        return false;
    };
    let (Ok(l), Ok(c)) = (l.parse_x509(), c.parse_x509()) else {
        return false;
    };
    l.issuer() == c.subject() && l.verify_signature(Some(c.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn a_node_certificate_is_signed_by_its_ca_and_names_the_nodes() {
        let ca = new_ca("sluice cluster CA", now(), 1825, None).unwrap();
        let names = vec![
            "*.sluice-nodes.data.svc".to_string(),
            "sluice.data.svc".to_string(),
        ];
        let node = issue(
            &ca,
            &Leaf::Node {
                dns_names: names.clone(),
            },
            now(),
            90,
        )
        .unwrap();
        assert!(signed_by(&node.cert, &ca.cert));
        let f = facts(&node.cert).unwrap();
        assert_eq!(f.dns_names, names);
        assert_eq!(f.not_after - now(), Duration::days(90));
        assert!(f.issuer.contains("CN=sluice cluster CA"), "{}", f.issuer);
        // Another CA did not sign it.
        let other = new_ca("other", now(), 10, None).unwrap();
        assert!(!signed_by(&node.cert, &other.cert));
        assert!(!signed_by("not a certificate", &ca.cert));
    }

    #[test]
    fn a_client_certificate_has_the_principal_as_its_whole_subject() {
        let ca = new_ca("sluice clients CA", now(), 1825, None).unwrap();
        let alice = issue(
            &ca,
            &Leaf::Client {
                common_name: "alice".into(),
            },
            now(),
            90,
        )
        .unwrap();
        let f = facts(&alice.cert).unwrap();
        assert_eq!(f.subject, "CN=alice");
        assert!(f.dns_names.is_empty());
        assert!(alice.key.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_is_due_two_thirds_into_a_life_and_for_garbage() {
        let ca = new_ca("ca", now(), 90, None).unwrap();
        assert!(!renewal_due(&ca.cert, now()));
        assert!(!renewal_due(&ca.cert, now() + Duration::days(59)));
        assert!(renewal_due(&ca.cert, now() + Duration::days(61)));
        assert!(renewal_due("", now()));
        assert!(renewal_due(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            now()
        ));
    }

    #[test]
    fn a_renewed_ca_bundle_keeps_the_old_one_until_it_expires() {
        let old = new_ca("ca", now(), 90, None).unwrap();
        let later = now() + Duration::days(61);
        let new = new_ca("ca", later, 90, None).unwrap();
        let b = bundle(&new.cert, &old.cert, later);
        assert_eq!(blocks(&b).len(), 2);
        assert!(b.starts_with(&new.cert));
        // A leaf of the new CA verifies against the bundle's first.
        let leaf = issue(
            &Pem {
                cert: b.clone(),
                key: new.key.clone(),
            },
            &Leaf::Client {
                common_name: "bob".into(),
            },
            later,
            30,
        )
        .unwrap();
        assert!(signed_by(&leaf.cert, &b));
        // Renewed with the same key: a leaf of the new certificate verifies
        // against the old one too (clients need not reload their CA).
        let same = new_ca("ca", later, 90, Some(&old.key)).unwrap();
        let leaf2 = issue(
            &same,
            &Leaf::Client {
                common_name: "eve".into(),
            },
            later,
            30,
        )
        .unwrap();
        assert!(signed_by(&leaf2.cert, &old.cert));
        // Renewed again after the old one expired: it is dropped, and no
        // certificate appears twice.
        let much_later = now() + Duration::days(122);
        let newer = new_ca("ca", much_later, 90, None).unwrap();
        let b2 = bundle(&newer.cert, &b, much_later);
        assert_eq!(blocks(&b2).len(), 2, "{b2}");
        assert_eq!(blocks(&bundle(&b2, &b2, much_later)).len(), 2);
    }
}
