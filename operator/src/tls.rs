//! The cluster's certificates and the operator's own login, kept in
//! Secrets: the two CAs (`<cluster>-cluster-ca` signs the nodes,
//! `<cluster>-clients-ca` the users), the nodes' certificate
//! (`<cluster>-node-tls`, with both CAs' bundles), each replaced two
//! thirds into its life ([`certs`]); or, with `tls: certManager`,
//! cert-manager `Certificate`s that make the same Secrets. And the
//! operator's own Kafka user (`<cluster>-operator-user`): a generated
//! SCRAM password whose credential it stores, or a client certificate.
//!
//! Every Secret is owned by the operator's ConfigMap, so `helm uninstall`
//! removes them with the rest; replacing one carries the resourceVersion
//! read, so two operator replicas never both write a new CA.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_coord::Coordination;
use sluice_security::{Mechanism, ScramCredential};
use time::OffsetDateTime;

use crate::certs::{self, Leaf, Pem};
use crate::cluster::{self, Names, OPERATOR_USER};
use crate::config::{Authentication, Settings, TlsSource};
use crate::kafka::Login;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificates: {0}")]
    Cert(#[from] certs::CertError),
    #[error("the cluster's metadata: {0}")]
    Metadata(#[from] sluice_coord::CoordError),
    #[error("{0}")]
    Waiting(String),
    #[error("TLS client: {0}")]
    Client(String),
}

/// SCRAM iterations of the credentials the operator stores (Kafka's
/// minimum for SCRAM-SHA-512 is 4096).
pub const SCRAM_ITERATIONS: i64 = 4096;

/// The labels of every Secret the operator writes.
pub fn labels(s: &Settings) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "sluice"),
        ("app.kubernetes.io/instance", s.cluster_name.as_str()),
        ("app.kubernetes.io/managed-by", cluster::MANAGER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A Secret's value as text.
pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// Every entry of a Secret, as text.
pub fn texts(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Writes `data` to the Secret `name`: created when `existing` is `None`,
/// else replaced at the resourceVersion read (a concurrent change makes
/// this fail, and the next pass decides again).
pub async fn put_secret(
    api: &Api<Secret>,
    name: &str,
    data: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    owner: &OwnerReference,
    existing: Option<&Secret>,
) -> Result<Secret, kube::Error> {
    let mut secret = existing.cloned().unwrap_or_default();
    secret.metadata.name = Some(name.to_string());
    secret
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels);
    secret.metadata.owner_references = Some(vec![owner.clone()]);
    secret.type_ = Some("Opaque".into());
    secret.data = Some(
        data.into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect(),
    );
    secret.string_data = None;
    match existing {
        None => api.create(&PostParams::default(), &secret).await,
        Some(_) => api.replace(name, &PostParams::default(), &secret).await,
    }
}

/// The CA in Secret `name` (its bundle, current certificate first, and
/// key), made when missing and renewed when due.
async fn ensure_ca(
    api: &Api<Secret>,
    s: &Settings,
    owner: &OwnerReference,
    name: &str,
    common_name: &str,
    now: OffsetDateTime,
) -> Result<Pem, TlsError> {
    let existing = api.get_opt(name).await?;
    let current = existing.as_ref().and_then(|sec| {
        Some(Pem {
            cert: text(sec, "ca.crt")?,
            key: text(sec, "ca.key")?,
        })
    });
    if let Some(ca) = &current {
        if !certs::renewal_due(&ca.cert, now) {
            return Ok(ca.clone());
        }
    }
    // Renewed with the same key: what trusted the old certificate keeps
    // trusting what the new one signs.
    let fresh = certs::new_ca(
        common_name,
        now,
        s.security.ca_validity_days,
        current.as_ref().map(|c| c.key.as_str()),
    )?;
    let bundle = match &current {
        Some(old) => certs::bundle(&fresh.cert, &old.cert, now),
        None => fresh.cert.clone(),
    };
    tracing::info!(secret = name, renewed = current.is_some(), "CA written");
    let data = BTreeMap::from([
        ("ca.crt".to_string(), bundle.clone()),
        ("ca.key".to_string(), fresh.key.clone()),
    ]);
    put_secret(api, name, data, labels(s), owner, existing.as_ref()).await?;
    Ok(Pem {
        cert: bundle,
        key: fresh.key,
    })
}

/// What a leaf Secret should hold besides its certificate and key.
pub struct LeafSecret<'a> {
    pub name: &'a str,
    pub cert_key: &'a str,
    pub key_key: &'a str,
    pub leaf: Leaf,
    /// Other entries (the CA bundles), written as given.
    pub extra: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
}

/// Whether the certificate in `existing` must be issued again: missing,
/// due, naming other hosts, or signed by another CA than `ca`'s current.
pub fn reissue_needed(existing: Option<&str>, ca: &Pem, leaf: &Leaf, now: OffsetDateTime) -> bool {
    let Some(cert) = existing else {
        return true;
    };
    if certs::renewal_due(cert, now) || !certs::signed_by(cert, &ca.cert) {
        return true;
    }
    match (leaf, certs::facts(cert)) {
        (Leaf::Node { dns_names }, Ok(f)) => f.dns_names != *dns_names,
        (Leaf::Client { common_name }, Ok(f)) => f.subject != format!("CN={common_name}"),
        (_, Err(_)) => true,
    }
}

/// Keeps a leaf certificate signed by `ca` in its Secret.
pub async fn ensure_leaf(
    api: &Api<Secret>,
    ca: &Pem,
    want: LeafSecret<'_>,
    validity_days: i64,
    now: OffsetDateTime,
) -> Result<Secret, TlsError> {
    let existing = api.get_opt(want.name).await?;
    let cert = existing.as_ref().and_then(|s| text(s, want.cert_key));
    let key = existing.as_ref().and_then(|s| text(s, want.key_key));
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) if !reissue_needed(Some(&c), ca, &want.leaf, now) => (c, k),
        _ => {
            let issued = certs::issue(ca, &want.leaf, now, validity_days)?;
            tracing::info!(secret = want.name, "certificate issued");
            (issued.cert, issued.key)
        }
    };
    let mut data = want.extra.clone();
    data.insert(want.cert_key.to_string(), cert);
    data.insert(want.key_key.to_string(), key);
    if let Some(sec) = existing.as_ref().filter(|sec| texts(sec) == data) {
        return Ok(sec.clone());
    }
    Ok(put_secret(
        api,
        want.name,
        data,
        want.labels,
        &want.owner,
        existing.as_ref(),
    )
    .await?)
}

/// The cert-manager `Certificate` making Secret `name`.
pub fn certificate(
    s: &Settings,
    namespace: &str,
    name: &str,
    leaf: &Leaf,
    owner: &OwnerReference,
    secret_labels: &BTreeMap<String, String>,
) -> serde_json::Value {
    let issuer = s
        .security
        .cert_manager_issuer
        .clone()
        .expect("checked when the settings load");
    let days = s.security.cert_validity_days;
    let mut spec = serde_json::json!({
        "secretName": name,
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": "cert-manager.io"},
        "duration": format!("{}h", days * 24),
        "renewBefore": format!("{}h", days * 8),
        // PKCS#8: what Java clients read as well.
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always",
                       "encoding": "PKCS8"},
        "secretTemplate": {"labels": secret_labels},
    });
    match leaf {
        Leaf::Node { dns_names } => {
            // The names alone: a common name holds at most 64 characters.
            spec["dnsNames"] = serde_json::json!(dns_names);
            spec["usages"] = serde_json::json!([
                "server auth",
                "client auth",
                "digital signature",
                "key encipherment"
            ]);
        }
        Leaf::Client { common_name } => {
            spec["commonName"] = serde_json::json!(common_name);
            spec["usages"] =
                serde_json::json!(["client auth", "digital signature", "key encipherment"]);
        }
    }
    serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(s),
                     "ownerReferences": [owner]},
        "spec": spec,
    })
}

/// Applies a cert-manager `Certificate` (server-side apply).
pub async fn apply_certificate(
    client: &Client,
    namespace: &str,
    cert: &serde_json::Value,
) -> Result<(), kube::Error> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let name = cert["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(cluster::MANAGER).force(),
        &Patch::Apply(cert),
    )
    .await?;
    Ok(())
}

/// Keeps the cluster's certificates and the operator's own credential, and
/// returns how the operator's Kafka client logs in.
pub async fn ensure(
    client: &Client,
    coord: &Arc<dyn Coordination>,
    s: &Settings,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<Login, TlsError> {
    let names = Names(&s.cluster_name);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = OffsetDateTime::now_utc();
    let node = Leaf::Node {
        dns_names: names.node_dns_names(namespace),
    };
    let me = Leaf::Client {
        common_name: OPERATOR_USER.into(),
    };
    let days = s.security.cert_validity_days;
    // The CA bundle the operator trusts, and its own certificate.
    let (trust, own): (Option<String>, Option<Secret>) = match s.security.tls {
        TlsSource::None => (None, None),
        TlsSource::Operator => {
            let cluster_ca = ensure_ca(
                &api,
                s,
                owner,
                &names.cluster_ca(),
                &format!("{} cluster CA", s.cluster_name),
                now,
            )
            .await?;
            let clients_ca = ensure_ca(
                &api,
                s,
                owner,
                &names.clients_ca(),
                &format!("{} clients CA", s.cluster_name),
                now,
            )
            .await?;
            ensure_leaf(
                &api,
                &cluster_ca,
                LeafSecret {
                    name: &names.node_tls(),
                    cert_key: "tls.crt",
                    key_key: "tls.key",
                    leaf: node,
                    extra: BTreeMap::from([
                        ("ca.crt".to_string(), cluster_ca.cert.clone()),
                        ("clients-ca.crt".to_string(), clients_ca.cert.clone()),
                    ]),
                    labels: labels(s),
                    owner: owner.clone(),
                },
                days,
                now,
            )
            .await?;
            let own = match s.security.authentication {
                Authentication::Tls => Some(
                    ensure_leaf(
                        &api,
                        &clients_ca,
                        LeafSecret {
                            name: &names.operator_user(),
                            cert_key: "user.crt",
                            key_key: "user.key",
                            leaf: me,
                            extra: BTreeMap::from([(
                                "ca.crt".to_string(),
                                cluster_ca.cert.clone(),
                            )]),
                            labels: labels(s),
                            owner: owner.clone(),
                        },
                        days,
                        now,
                    )
                    .await?,
                ),
                _ => None,
            };
            (Some(cluster_ca.cert), own)
        }
        TlsSource::CertManager => {
            apply_certificate(
                client,
                namespace,
                &certificate(s, namespace, &names.node_tls(), &node, owner, &labels(s)),
            )
            .await?;
            let own = match s.security.authentication {
                Authentication::Tls => {
                    apply_certificate(
                        client,
                        namespace,
                        &certificate(s, namespace, &names.operator_user(), &me, owner, &labels(s)),
                    )
                    .await?;
                    api.get_opt(&names.operator_user()).await?
                }
                _ => None,
            };
            let node_secret = api.get_opt(&names.node_tls()).await?;
            let trust = node_secret.as_ref().and_then(|sec| text(sec, "ca.crt"));
            if trust.is_none() {
                return Err(TlsError::Waiting(format!(
                    "cert-manager has not written Secret {} yet",
                    names.node_tls()
                )));
            }
            (trust, own)
        }
    };
    let scram = match s.security.authentication {
        Authentication::ScramSha512 => Some((
            OPERATOR_USER.to_string(),
            ensure_operator_password(&api, coord, s, owner).await?,
        )),
        _ => None,
    };
    let tls = match trust {
        None => None,
        Some(ca) => {
            let client_cert = match (s.security.authentication, &own) {
                (Authentication::Tls, Some(sec)) => {
                    let (cert_key, key_key) = if s.security.tls == TlsSource::CertManager {
                        ("tls.crt", "tls.key")
                    } else {
                        ("user.crt", "user.key")
                    };
                    Some((
                        text(sec, cert_key).unwrap_or_default(),
                        text(sec, key_key).unwrap_or_default(),
                    ))
                }
                (Authentication::Tls, None) => {
                    return Err(TlsError::Waiting(format!(
                        "cert-manager has not written Secret {} yet",
                        names.operator_user()
                    )))
                }
                _ => None,
            };
            let name = ServerName::try_from(names.node_server_name(namespace))
                .map_err(|e| TlsError::Client(e.to_string()))?;
            Some((client_config(&ca, client_cert)?, name))
        }
    };
    Ok(Login { tls, scram })
}

/// A rustls client trusting `ca` (PEM bundle), presenting `client` (PEM
/// certificate and key) when given.
pub fn client_config(
    ca: &str,
    client: Option<(String, String)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::Client(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Client("no CA certificate to trust".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| bad(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(&e))?
        }
    };
    Ok(Arc::new(config))
}

/// A new random password: 32 bytes, base64 without padding.
pub fn new_password() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Stores `user`'s SCRAM-SHA-512 credential for `password` unless the
/// stored one already matches it.
pub async fn ensure_credential(
    coord: &dyn Coordination,
    user: &str,
    password: &str,
) -> Result<(), TlsError> {
    let m = Mechanism::Sha512;
    let stored = coord.security().await?;
    if stored
        .as_ref()
        .and_then(|r| r.value.credential(user, m))
        .is_some_and(|c| c.verify_password(m, password))
    {
        return Ok(());
    }
    let cred = ScramCredential::new(m, password, SCRAM_ITERATIONS)
        .map_err(|e| TlsError::Client(e.to_string()))?;
    sluice_coord::update_security::<TlsError>(coord, |mut r| {
        if r.credential(user, m) == Some(&cred) {
            return Ok(None);
        }
        r.users
            .entry(user.to_string())
            .or_default()
            .insert(m, cred.clone());
        Ok(Some(r))
    })
    .await?;
    tracing::info!(user, "SCRAM credential stored");
    Ok(())
}

/// The operator's own password (Secret `<cluster>-operator-user`, made
/// once), its credential stored.
async fn ensure_operator_password(
    api: &Api<Secret>,
    coord: &Arc<dyn Coordination>,
    s: &Settings,
    owner: &OwnerReference,
) -> Result<String, TlsError> {
    let name = Names(&s.cluster_name).operator_user();
    let existing = api.get_opt(&name).await?;
    if let Some(sec) = &existing {
        if !sec
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner.uid)
        {
            return Err(TlsError::Waiting(format!(
                "Secret {name} exists and is not the operator's: the operator's own password is not taken from it"
            )));
        }
    }
    let password = match existing.as_ref().and_then(|sec| text(sec, "password")) {
        Some(p) => p,
        None => {
            let p = new_password();
            let data = BTreeMap::from([("password".to_string(), p.clone())]);
            put_secret(api, &name, data, labels(s), owner, existing.as_ref()).await?;
            p
        }
    };
    ensure_credential(coord.as_ref(), OPERATOR_USER, &password).await?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn a_leaf_is_issued_again_when_due_renamed_or_its_ca_changed() {
        let ca = certs::new_ca("ca", now(), 1000, None).unwrap();
        let leaf = Leaf::Node {
            dns_names: vec!["a.svc".into()],
        };
        assert!(reissue_needed(None, &ca, &leaf, now()));
        let issued = certs::issue(&ca, &leaf, now(), 90).unwrap();
        assert!(!reissue_needed(Some(&issued.cert), &ca, &leaf, now()));
        assert!(reissue_needed(
            Some(&issued.cert),
            &ca,
            &leaf,
            now() + time::Duration::days(61)
        ));
        let renamed = Leaf::Node {
            dns_names: vec!["a.svc".into(), "b.svc".into()],
        };
        assert!(reissue_needed(Some(&issued.cert), &ca, &renamed, now()));
        let other = certs::new_ca("ca", now(), 1000, None).unwrap();
        assert!(reissue_needed(Some(&issued.cert), &other, &leaf, now()));
        let client = Leaf::Client {
            common_name: "alice".into(),
        };
        let alice = certs::issue(&ca, &client, now(), 90).unwrap();
        assert!(!reissue_needed(Some(&alice.cert), &ca, &client, now()));
        let bob = Leaf::Client {
            common_name: "bob".into(),
        };
        assert!(reissue_needed(Some(&alice.cert), &ca, &bob, now()));
    }

    #[test]
    fn a_client_config_reads_the_bundle_and_the_client_certificate() {
        let ca = certs::new_ca("ca", OffsetDateTime::now_utc(), 10, None).unwrap();
        assert!(client_config(&ca.cert, None).is_ok());
        let me = certs::issue(
            &ca,
            &Leaf::Client {
                common_name: "op".into(),
            },
            OffsetDateTime::now_utc(),
            5,
        )
        .unwrap();
        assert!(client_config(&ca.cert, Some((me.cert, me.key))).is_ok());
        assert!(client_config("garbage", None).is_err());
        assert!(client_config(&ca.cert, Some(("x".into(), "y".into()))).is_err());
    }

    #[tokio::test]
    async fn a_credential_is_stored_once_and_replaced_when_the_password_changes() {
        let coord = sluice_coord::InMemory::new();
        ensure_credential(&coord, "op", "one").await.unwrap();
        let v1 = coord.security().await.unwrap().unwrap();
        ensure_credential(&coord, "op", "one").await.unwrap();
        assert_eq!(coord.security().await.unwrap().unwrap().version, v1.version);
        ensure_credential(&coord, "op", "two").await.unwrap();
        let v2 = coord.security().await.unwrap().unwrap();
        assert!(v2
            .value
            .credential("op", Mechanism::Sha512)
            .unwrap()
            .verify_password(Mechanism::Sha512, "two"));
    }

    #[test]
    fn cert_manager_certificates_name_the_issuer_the_secret_and_the_use() {
        let mut s = Settings::default();
        s.security.tls = TlsSource::CertManager;
        s.security.cert_manager_issuer = Some(crate::config::IssuerRef {
            name: "sluice-ca".into(),
            kind: "ClusterIssuer".into(),
        });
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "sluice-operator".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        let node = Leaf::Node {
            dns_names: Names("sluice").node_dns_names("data"),
        };
        let c = certificate(&s, "data", "sluice-node-tls", &node, &owner, &labels(&s));
        assert_eq!(c["kind"], "Certificate");
        assert_eq!(c["spec"]["secretName"], "sluice-node-tls");
        assert_eq!(c["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(c["spec"]["duration"], "2160h");
        assert_eq!(c["spec"]["renewBefore"], "720h");
        assert_eq!(c["spec"]["dnsNames"][0], "sluice-nodes.data.svc");
        assert!(c["spec"].get("commonName").is_none());
        assert_eq!(c["spec"]["usages"][1], "client auth");
        assert_eq!(c["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let user = Leaf::Client {
            common_name: "carol".into(),
        };
        let mut l = labels(&s);
        l.insert("sluice.dev/user".into(), "carol".into());
        let c = certificate(&s, "data", "carol", &user, &owner, &l);
        assert_eq!(c["spec"]["commonName"], "carol");
        assert_eq!(
            c["spec"]["secretTemplate"]["labels"]["sluice.dev/user"],
            "carol"
        );
        assert_eq!(c["spec"]["usages"][0], "client auth");
    }
}
