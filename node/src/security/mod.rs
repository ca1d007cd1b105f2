//! The node's security room: named listeners and their protocols, TLS
//! (rustls; files read again when they change), SASL per connection (PLAIN
//! and SCRAM against the credentials stored in the cluster's metadata),
//! the principal every request acts as, and the authorizer that checks it
//! against the stored ACLs. The rules themselves (SCRAM, ACL matching) are
//! in the `sluice-security` crate, shared with the operator.

pub mod grpc;
pub mod listener;
pub mod sasl;
pub mod tls;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_security::{Mechanism, ScramCredential, SecurityRecord};

pub use listener::{Listener, Protocol};

/// Security settings of a node.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// The name and protocol of the primary listener (`kafka_listen`).
    pub listener_name: String,
    pub listener_protocol: Protocol,
    /// Further listeners, each with its own address and protocol.
    pub extra_listeners: Vec<Listener>,
    /// The certificate, key and client CA of every TLS listener.
    pub tls: Option<tls::TlsFiles>,
    /// `sasl.enabled.mechanisms`.
    pub sasl_mechanisms: Vec<sasl::Mech>,
    /// `connections.max.reauth.ms` (0: sessions do not expire).
    pub max_reauth_ms: u64,
    /// `connection.failed.authentication.delay.ms`.
    pub failed_authentication_delay_ms: u64,
    /// `super.users`: principals every ACL check lets through.
    pub super_users: BTreeSet<String>,
    /// Check every request against the stored ACLs.
    pub authorizer: bool,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_everyone_if_no_acl: bool,
    /// `name:password` lines: users whose SCRAM credentials the node makes
    /// sure exist at start (the first administrator, a dev setup).
    pub scram_users_file: Option<PathBuf>,
    /// Replication and transaction markers between nodes over mutual TLS
    /// (the same certificate and key).
    pub replication_tls: bool,
    /// The CA of the nodes' certificates, when it is not `--ssl-ca` (so a
    /// client certificate cannot pass for a node).
    pub replication_ca: Option<PathBuf>,
    /// The name every node's certificate is checked for between nodes,
    /// instead of the address connected to (pod addresses change; a name
    /// every node certificate carries does not).
    pub replication_server_name: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            listener_name: "PLAINTEXT".into(),
            listener_protocol: Protocol::Plaintext,
            extra_listeners: vec![],
            tls: None,
            sasl_mechanisms: vec![
                sasl::Mech::Scram(Mechanism::Sha256),
                sasl::Mech::Scram(Mechanism::Sha512),
                sasl::Mech::Plain,
            ],
            max_reauth_ms: 0,
            failed_authentication_delay_ms: 100,
            super_users: BTreeSet::new(),
            authorizer: false,
            allow_everyone_if_no_acl: false,
            scram_users_file: None,
            replication_tls: false,
            replication_ca: None,
            replication_server_name: None,
        }
    }
}

impl SecurityConfig {
    /// Whether some listener needs TLS.
    pub fn needs_tls(&self) -> bool {
        self.listener_protocol.tls() || self.extra_listeners.iter().any(|l| l.protocol.tls())
    }

    pub fn authorizer(&self) -> Option<sluice_security::Authorizer> {
        self.authorizer.then(|| sluice_security::Authorizer {
            super_users: self.super_users.clone(),
            allow_if_no_acl: self.allow_everyone_if_no_acl,
        })
    }
}

/// What the listeners share at run time.
pub struct Security {
    pub tls: Option<Arc<tls::Tls>>,
    /// Mutual TLS between nodes, when on.
    pub nodes: Option<Arc<grpc::NodeTls>>,
    pub sasl: Arc<sasl::SaslConfig>,
    pub authorizer: Option<sluice_security::Authorizer>,
}

impl Security {
    pub fn new(c: &SecurityConfig) -> anyhow::Result<Security> {
        let tls = match (&c.tls, c.needs_tls()) {
            (Some(files), true) => Some(tls::Tls::new(files.clone())?),
            (None, true) => anyhow::bail!(
                "an SSL or SASL_SSL listener needs a certificate and key (--ssl-cert, --ssl-key)"
            ),
            (_, false) => None,
        };
        let nodes = match (&c.tls, c.replication_tls) {
            (Some(files), true) => Some(grpc::NodeTls::new(
                files,
                c.replication_ca.as_ref(),
                c.replication_server_name.clone(),
            )?),
            (None, true) => anyhow::bail!(
                "--replication-tls needs a certificate, key and CA (--ssl-cert, --ssl-key, --ssl-ca)"
            ),
            (_, false) => None,
        };
        Ok(Security {
            tls,
            nodes,
            sasl: Arc::new(sasl::SaslConfig {
                mechanisms: c.sasl_mechanisms.clone(),
                max_reauth_ms: c.max_reauth_ms,
                failed_delay_ms: c.failed_authentication_delay_ms,
            }),
            authorizer: c.authorizer(),
        })
    }
}

/// The users of a `name:password` file, one per line (`#` comments).
pub fn parse_users_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((name, pw)) if !name.is_empty() && !pw.is_empty() => {
                out.push((name.to_string(), pw.to_string()))
            }
            _ => return Err(format!("line {}: expected name:password", i + 1)),
        }
    }
    Ok(out)
}

/// `record` with `password` as `user`'s credential for every SCRAM
/// mechanism, if the user has none yet: a user that exists keeps its
/// credentials (a password changed since through AlterUserScramCredentials
/// is not set back at the next start).
pub fn with_user(mut record: SecurityRecord, user: &str, password: &str) -> Option<SecurityRecord> {
    if record.users.get(user).is_some_and(|c| !c.is_empty()) {
        return None;
    }
    let creds = record.users.entry(user.to_string()).or_default();
    for m in Mechanism::ALL {
        creds.insert(
            m,
            ScramCredential::new(m, password, 4096).expect("4096 iterations are allowed"),
        );
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_parse_and_credentials_are_written_once() {
        let users = parse_users_file("# admin\nadmin:s3cr:et\n\n bob:pw \n").unwrap();
        assert_eq!(
            users,
            vec![
                ("admin".into(), "s3cr:et".into()),
                ("bob".into(), "pw".into())
            ]
        );
        assert!(parse_users_file("nopassword").is_err());
        let r = with_user(SecurityRecord::default(), "admin", "pw").unwrap();
        assert_eq!(r.users["admin"].len(), 2);
        assert!(with_user(r.clone(), "admin", "pw").is_none());
        assert!(
            with_user(r.clone(), "admin", "other").is_none(),
            "an existing user keeps its password"
        );
        assert!(with_user(r, "bob", "pw").is_some());
    }
}
