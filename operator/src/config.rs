//! The operator's settings: a YAML file (the ConfigMap the chart writes,
//! mounted at `--config`) with `--set key=value` on top (for tests and
//! quick changes). Every key has a default, so an empty file is a working
//! three-node cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How nodes tell clients where to reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Advertise {
    /// The pod's stable DNS name through the headless Service
    /// (`<pod>.<cluster>-nodes.<namespace>.svc`): survives rescheduling.
    #[default]
    Dns,
    /// The pod's IP: for clusters without DNS for pods (localkube).
    PodIp,
}

/// Where the nodes' certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum TlsSource {
    /// The operator's own CAs (Secrets `<cluster>-cluster-ca` and
    /// `<cluster>-clients-ca`), certificates renewed before they expire.
    #[default]
    Operator,
    /// cert-manager `Certificate`s from `certManagerIssuer`.
    CertManager,
    /// No TLS: the client listener and replication in the clear.
    None,
}

/// How Kafka clients authenticate on the client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Authentication {
    /// SASL SCRAM-SHA-512 (SASL_SSL with TLS, else SASL_PLAINTEXT).
    #[default]
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// Client certificates of the clients' CA (SSL, certificates required).
    #[serde(rename = "tls")]
    Tls,
    /// None: every client is `User:ANONYMOUS`.
    #[serde(rename = "none")]
    None,
}

/// A cert-manager issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default = "issuer_kind")]
    pub kind: String,
}

fn issuer_kind() -> String {
    "Issuer".into()
}

/// The cluster's security: TLS, authentication, authorization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Security {
    pub tls: TlsSource,
    /// The issuer of the nodes' and users' certificates with `tls:
    /// certManager`.
    pub cert_manager_issuer: Option<IssuerRef>,
    pub authentication: Authentication,
    /// Check every request against the ACLs (Users' `spec.acls`); what
    /// no ACL allows is denied.
    pub authorizer: bool,
    /// Principals every check lets through besides the operator's own
    /// (`User:admin`).
    pub super_users: Vec<String>,
    /// Lifetimes of the operator's CAs and of the certificates they sign;
    /// each is renewed two thirds into its life.
    pub ca_validity_days: i64,
    pub cert_validity_days: i64,
}

impl Default for Security {
    fn default() -> Security {
        Security {
            tls: TlsSource::Operator,
            cert_manager_issuer: None,
            authentication: Authentication::ScramSha512,
            authorizer: true,
            super_users: vec![],
            ca_validity_days: 1825,
            cert_validity_days: 90,
        }
    }
}

impl Security {
    /// Everything off: a cluster in the clear, as before security.
    pub fn off() -> Security {
        Security {
            tls: TlsSource::None,
            authentication: Authentication::None,
            authorizer: false,
            ..Security::default()
        }
    }

    pub fn tls(&self) -> bool {
        self.tls != TlsSource::None
    }

    /// The client listener's security protocol.
    pub fn protocol(&self) -> &'static str {
        match (self.tls(), self.authentication) {
            (true, Authentication::ScramSha512) => "SASL_SSL",
            (true, _) => "SSL",
            (false, Authentication::ScramSha512) => "SASL_PLAINTEXT",
            (false, _) => "PLAINTEXT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Settings {
    /// The cluster's name: prefixes every object the operator owns and the
    /// Leases of its metadata.
    pub cluster_name: String,
    /// The storage nodes' image (`sluice serve` is its entrypoint).
    pub node_image: String,
    pub image_pull_policy: String,
    /// The StatefulSet has clamp(max(minNodes, largest replicationFactor
    /// among Topics), maxNodes) replicas.
    pub min_nodes: i32,
    pub max_nodes: i32,
    /// Each node's volume (one PVC per node, kept when pods go).
    pub storage_size: String,
    pub storage_class: Option<String>,
    /// Container resources, as Kubernetes quantities (`cpu: "1"`,
    /// `memory: 2Gi`).
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    /// A node label (e.g. `topology.kubernetes.io/zone`): nodes spread over
    /// its values, one replica of a partition per value where possible.
    pub rack_topology_key: Option<String>,
    /// With a rackTopologyKey, the operator applies the nodes' ClusterRole
    /// for reading Node objects itself. The chart renders it instead
    /// (false), so the operator needs no cluster-wide RBAC rights.
    pub apply_rack_rbac: bool,
    pub kafka_port: u16,
    pub replication_port: u16,
    pub admin_port: u16,
    pub advertise: Advertise,
    /// Defaults of new topics, under Kafka's broker config names (one of
    /// [`TOPIC_DEFAULTS`]), passed to the nodes as their flags.
    pub topic_defaults: BTreeMap<String, String>,
    /// How long a node's lease lasts (ms): a dead leader is replaced within
    /// about this long. Nodes renew every fifth of it: 5 s is one API write
    /// per node per second in steady state.
    pub node_lease_ms: i64,
    /// How long the controller lock lasts (ms): a dead operator replica is
    /// replaced within about this long.
    pub controller_lease_ms: i64,
    /// How often every Topic's status is refreshed (ms), besides on changes.
    pub status_interval_ms: u64,
    /// How often every ConsumerGroup's status (state, members, lag) is
    /// read from the group's coordinator (ms), besides on spec changes.
    pub group_status_interval_ms: u64,
    /// Most partitions moving at once when the cluster rebalances (scaling
    /// up or down, a replication factor changed).
    pub max_concurrent_moves: usize,
    /// Bytes per second each node may fetch for replicas it is catching up
    /// as a reassignment's new home (Kafka's
    /// `follower.replication.throttled.rate`), so moves leave clients their
    /// share of disk and network. 0: unthrottled.
    pub reassignment_throttle_bytes_per_sec: u64,
    /// TLS, authentication and authorization (defaults: TLS from the
    /// operator's CAs, SCRAM-SHA-512, the authorizer on).
    pub security: Security,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            cluster_name: "sluice".into(),
            node_image: format!(
                "ghcr.io/sluice-streaming/sluice:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".into(),
            min_nodes: 3,
            max_nodes: 9,
            storage_size: "10Gi".into(),
            storage_class: None,
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
            rack_topology_key: None,
            apply_rack_rbac: true,
            kafka_port: 9092,
            replication_port: 9095,
            admin_port: 9644,
            advertise: Advertise::Dns,
            topic_defaults: BTreeMap::new(),
            node_lease_ms: 5_000,
            controller_lease_ms: 6_000,
            status_interval_ms: 2_000,
            group_status_interval_ms: 10_000,
            max_concurrent_moves: 10,
            // About half of a general-purpose cloud SSD's baseline (gp3:
            // 125 MiB/s), the rest left to producers and consumers.
            reassignment_throttle_bytes_per_sec: 64 << 20,
            security: Security::default(),
        }
    }
}

/// The broker configs `topicDefaults` may set.
pub const TOPIC_DEFAULTS: &[&str] = &[
    "num.partitions",
    "default.replication.factor",
    "min.insync.replicas",
    "auto.create.topics.enable",
    "log.retention.ms",
    "log.retention.bytes",
    "message.max.bytes",
    "log.message.timestamp.type",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Settings {
    /// Settings from a YAML document (absent keys take their defaults) and
    /// `key=value` overrides, each value read as YAML (`minNodes=5`,
    /// `advertise=podIp`, `topicDefaults={num.partitions: "6"}`).
    pub fn load(yaml: Option<&str>, overrides: &[String]) -> Result<Settings, SettingsError> {
        let mut doc: serde_json::Value = match yaml {
            Some(y) if !y.trim().is_empty() => serde_yaml::from_str(y)
                .map_err(|e| SettingsError::Invalid("the settings file".into(), e.to_string()))?,
            _ => serde_json::json!({}),
        };
        if !doc.is_object() {
            return Err(SettingsError::Invalid(
                "the settings file".into(),
                "must be a mapping of settings".into(),
            ));
        }
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| {
                SettingsError::Invalid(format!("--set {o}"), "expected key=value".into())
            })?;
            let value: serde_json::Value = serde_yaml::from_str(v)
                .map_err(|e| SettingsError::Invalid(format!("--set {o}"), e.to_string()))?;
            doc[k] = value;
        }
        let s: Settings = serde_json::from_value(doc)
            .map_err(|e| SettingsError::Invalid("settings".into(), e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let bad = |k: &str, why: String| Err(SettingsError::Invalid(k.into(), why));
        if self.min_nodes < 1 {
            return bad("minNodes", format!("{} is below 1", self.min_nodes));
        }
        if self.max_nodes < self.min_nodes {
            return bad(
                "maxNodes",
                format!("{} is below minNodes ({})", self.max_nodes, self.min_nodes),
            );
        }
        if self.max_concurrent_moves < 1 {
            return bad("maxConcurrentMoves", "must be at least 1".into());
        }
        if self.node_lease_ms < 1_000 || self.controller_lease_ms < 1_000 {
            return bad("nodeLeaseMs/controllerLeaseMs", "below 1000 ms".into());
        }
        if let Some(k) = self
            .topic_defaults
            .keys()
            .find(|k| !TOPIC_DEFAULTS.contains(&k.as_str()))
        {
            return bad(
                "topicDefaults",
                format!("{k} is not one of {}", TOPIC_DEFAULTS.join(", ")),
            );
        }
        let sec = &self.security;
        if sec.tls == TlsSource::None && sec.authentication == Authentication::Tls {
            return bad(
                "security.authentication",
                "tls (client certificates) needs security.tls".into(),
            );
        }
        if sec.authorizer && sec.authentication == Authentication::None {
            return bad(
                "security.authorizer",
                "needs security.authentication: without it every client is User:ANONYMOUS".into(),
            );
        }
        if sec.tls == TlsSource::CertManager && sec.cert_manager_issuer.is_none() {
            return bad(
                "security.certManagerIssuer",
                "tls: certManager needs an issuer ({name, kind})".into(),
            );
        }
        if sec.ca_validity_days < 2 || sec.cert_validity_days < 1 {
            return bad(
                "security.caValidityDays/certValidityDays",
                "too short".into(),
            );
        }
        if sec.cert_validity_days >= sec.ca_validity_days {
            return bad(
                "security.certValidityDays",
                "must be shorter than caValidityDays".into(),
            );
        }
        if let Some(u) = sec.super_users.iter().find(|u| !u.contains(':')) {
            return bad(
                "security.superUsers",
                format!("{u:?} is not of the form User:name"),
            );
        }
        if self.cluster_name.is_empty()
            || self.cluster_name.len() > 40
            || !self
                .cluster_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad(
                "clusterName",
                format!(
                    "{:?} must be 1-40 lowercase letters, digits and '-'",
                    self.cluster_name
                ),
            );
        }
        Ok(())
    }

    /// The StatefulSet's replicas when Topics need `needed` nodes (see
    /// [`Settings::nodes_needed`]).
    pub fn node_count(&self, needed: i32) -> i32 {
        self.min_nodes.max(needed).min(self.max_nodes)
    }

    /// The nodes a topic needs: its replicas, and at least its
    /// min.insync.replicas (its own, else the cluster default), or acks=all
    /// could never succeed.
    pub fn nodes_needed(&self, replication_factor: i32, configs: &BTreeMap<String, String>) -> i32 {
        let min_insync = configs
            .get("min.insync.replicas")
            .or_else(|| self.topic_defaults.get("min.insync.replicas"))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(1);
        replication_factor.max(min_insync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_and_overrides_win() {
        assert_eq!(Settings::load(None, &[]).unwrap(), Settings::default());
        let s = Settings::load(
            Some("minNodes: 1\nadvertise: podIp\ntopicDefaults: {num.partitions: '6'}\n"),
            &["maxNodes=4".into(), "nodeImage=sluice:dev".into()],
        )
        .unwrap();
        assert_eq!((s.min_nodes, s.max_nodes), (1, 4));
        assert_eq!(s.advertise, Advertise::PodIp);
        assert_eq!(s.node_image, "sluice:dev");
        assert_eq!(s.topic_defaults["num.partitions"], "6");
    }

    #[test]
    fn wrong_settings_are_named() {
        let e = Settings::load(Some("minNodes: 0\n"), &[]).unwrap_err();
        assert!(e.to_string().starts_with("minNodes:"), "{e}");
        let e = Settings::load(Some("minNode: 3\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown field `minNode`"), "{e}");
        let e = Settings::load(None, &["maxNodes=2".into()]).unwrap_err();
        assert!(e.to_string().starts_with("maxNodes:"), "{e}");
        let e = Settings::load(None, &["oops".into()]).unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        let e = Settings::load(None, &["security={tls: none, authentication: tls}".into()])
            .unwrap_err();
        assert!(e.to_string().starts_with("security.authentication:"), "{e}");
        let e = Settings::load(None, &["security={authentication: none}".into()]).unwrap_err();
        assert!(e.to_string().starts_with("security.authorizer:"), "{e}");
        let e = Settings::load(None, &["security={tls: certManager}".into()]).unwrap_err();
        assert!(
            e.to_string().starts_with("security.certManagerIssuer:"),
            "{e}"
        );
        let e = Settings::load(None, &["security={superUsers: [admin]}".into()]).unwrap_err();
        assert!(e.to_string().starts_with("security.superUsers:"), "{e}");
        let s = Settings::load(
            None,
            &["security={tls: certManager, certManagerIssuer: {name: ca}}".into()],
        )
        .unwrap();
        assert_eq!(s.security.cert_manager_issuer.unwrap().kind, "Issuer");
        assert_eq!(s.security.authentication, Authentication::ScramSha512);
    }

    #[test]
    fn the_node_count_follows_the_largest_replication_factor_within_bounds() {
        let s = Settings::default();
        assert_eq!(s.node_count(1), 3);
        assert_eq!(s.node_count(5), 5);
        assert_eq!(s.node_count(64), 9);
        let none = BTreeMap::new();
        assert_eq!(s.nodes_needed(3, &none), 3);
        let four: BTreeMap<String, String> =
            [("min.insync.replicas".to_string(), "4".to_string())].into();
        assert_eq!(s.nodes_needed(3, &four), 4);
    }
}
