//! Node-wide settings and the topic-level configs a topic may override.
//!
//! Topic configs are validated here, as pure functions: a create or alter
//! either yields a complete [`TopicConfig`] or names the first bad key, so
//! nothing is ever half-applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use kafka_protocol::records::Compression;

use crate::log::compaction::Policy;
use crate::log::TimestampType;
pub use sluice_api::topic_config::{
    check, is_list_config, spec, topic_config_doc, topic_config_keys, topic_config_type,
    validate_topic_name, Kind,
};

/// Settings of one storage node (`sluice serve` / `sluice dev`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: i32,
    pub kafka_listen: SocketAddr,
    /// Host clients are told to connect to (default: the listen address).
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to (default: the bound port).
    pub advertised_port: Option<u16>,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rack: Option<String>,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// `socket.request.max.bytes`: frames larger than this are refused
    /// before anything is allocated for them.
    pub socket_request_max_bytes: usize,
    /// `queued.max.request.bytes`: memory for request frames being read or
    /// handled and for fetch answers being built, across all connections. A
    /// connection waits for room before it reads a frame's body.
    pub queued_max_request_bytes: usize,
    /// `fetch.max.bytes`: the most one fetch answer carries, whatever the
    /// request asks (KIP-74 still lets one oversized batch through).
    pub fetch_max_bytes: usize,
    /// The most one record batch may decompress to (validation,
    /// recompression, timestamp lookups, the cleaner).
    pub max_decompressed_batch_bytes: usize,
    /// `connections.max.idle.ms`: a connection with no request for this
    /// long is closed.
    pub connections_max_idle_ms: u64,
    /// A request whose frame is not read whole within this long after its
    /// first byte closes its connection (a slow or stalled sender).
    pub request_read_timeout_ms: u64,
    /// `max.connections`: open client connections across the node.
    pub max_connections: usize,
    /// `max.connections.per.ip`: open client connections from one address.
    pub max_connections_per_ip: usize,
    /// Broker defaults for topic configs (`log.retention.ms`, ...).
    pub defaults: BrokerDefaults,
    /// How often retention is enforced (`log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// Bytes per second this node fetches for replicas a reassignment is
    /// adding here (`follower.replication.throttled.rate`); 0: unthrottled.
    pub reassignment_throttle_bytes_per_sec: u64,
    /// The log cleaner (compaction).
    pub cleaner: CleanerConfig,
    /// fsync every write to the RocksDB WAL (off by default, like Kafka).
    pub sync_writes: bool,
    /// Group coordinator settings.
    pub groups: crate::group::GroupConfig,
    /// Transaction coordinator settings.
    pub txns: crate::txn::TxnConfig,
    /// How long an idle idempotent producer's state is kept
    /// (`producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// Where followers fetch from this node (gRPC); port 0 picks one.
    pub replication_listen: SocketAddr,
    /// Host followers are told to connect to (default: the listen address).
    pub replication_advertised_host: Option<String>,
    /// How long a node lease lasts; renewed every fifth of it. A node stops
    /// leading when 60% of it passed without a successful renewal.
    pub lease_duration_ms: i64,
    /// A follower that has not caught up for this long leaves the ISR
    /// (`replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: i64,
    /// How long `acks=all` produces and commits wait for the ISR when the
    /// request sets no timeout.
    pub replication_timeout_ms: i64,
    /// The cluster's id, shared by its nodes; `None` keeps (or makes) one
    /// in the node's store.
    pub cluster_id: Option<String>,
    /// Print `sluice dev`'s start-up banner (addresses, data directory,
    /// how to stop, a first command) once ready.
    pub banner: bool,
    /// Listeners, TLS, SASL and the authorizer.
    pub security: crate::security::SecurityConfig,
}

impl NodeConfig {
    pub fn dev(data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            node_id: 0,
            kafka_listen: "127.0.0.1:9092".parse().expect("static address"),
            advertised_host: None,
            advertised_port: None,
            admin_listen: "127.0.0.1:9644".parse().expect("static address"),
            data_dir,
            rack: None,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            socket_request_max_bytes: 104_857_600,
            queued_max_request_bytes: 256 << 20,
            fetch_max_bytes: 57_671_680,
            max_decompressed_batch_bytes: 64 << 20,
            connections_max_idle_ms: 600_000,
            request_read_timeout_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            defaults: BrokerDefaults::default(),
            retention_check_interval_ms: 300_000,
            reassignment_throttle_bytes_per_sec: 64 << 20,
            cleaner: CleanerConfig::default(),
            sync_writes: false,
            groups: crate::group::GroupConfig::default(),
            txns: crate::txn::TxnConfig::default(),
            producer_id_expiration_ms: 86_400_000,
            replication_listen: "127.0.0.1:0".parse().expect("static address"),
            replication_advertised_host: None,
            lease_duration_ms: 10_000,
            replica_lag_time_max_ms: 30_000,
            replication_timeout_ms: 30_000,
            cluster_id: None,
            banner: false,
            security: Default::default(),
        }
    }
}

/// Settings of the log cleaner, under Kafka's `log.cleaner.*` names.
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// `log.cleaner.enable`.
    pub enable: bool,
    /// `log.cleaner.backoff.ms`: the wait when no partition is due.
    pub backoff_ms: u64,
    /// `log.cleaner.io.max.bytes.per.second`: read plus written.
    pub io_max_bytes_per_second: f64,
    /// `log.cleaner.dedupe.buffer.size`: memory for one pass's key map.
    pub dedupe_buffer_size: usize,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            enable: true,
            backoff_ms: 15_000,
            io_max_bytes_per_second: 104_857_600.0,
            dedupe_buffer_size: 128 << 20,
        }
    }
}

/// Broker-level defaults that topics inherit unless they override them.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerDefaults {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i32,
    pub message_timestamp_type: TimestampType,
    pub min_insync_replicas: i32,
    /// Dynamic broker configs in force, by the topic config they default:
    /// value and where it comes from (this node's, or the cluster's).
    pub dynamic: BTreeMap<String, (String, ConfigSource)>,
}

impl Default for BrokerDefaults {
    fn default() -> Self {
        BrokerDefaults {
            retention_ms: 7 * 24 * 3_600_000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            min_insync_replicas: 1,
            dynamic: BTreeMap::new(),
        }
    }
}

/// The effective configuration of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i32,
    pub message_timestamp_type: TimestampType,
    pub message_timestamp_difference_max_ms: i64,
    pub min_insync_replicas: i32,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub unclean_leader_election: bool,
    /// `cleanup.policy` holds `delete`: retention removes old batches.
    pub cleanup_delete: bool,
    /// `cleanup.policy` holds `compact`: the log cleaner compacts the topic.
    pub cleanup_compact: bool,
    /// `min.cleanable.dirty.ratio`, `min.compaction.lag.ms`,
    /// `max.compaction.lag.ms`, `delete.retention.ms`.
    pub compaction: Policy,
    /// `compression.type`: `None` keeps batches as the producer sent them
    /// (`producer`); a codec makes the node recompress to it.
    pub compression: Option<Compression>,
}

/// Where a described config value comes from (Kafka's ConfigSource codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

/// Broker configs that may change while the cluster runs (AlterConfigs on a
/// broker resource), each the default of a topic config. Everything else a
/// node is configured with is static: its command line.
pub const DYNAMIC_BROKER_CONFIGS: &[(&str, &str)] = &[
    ("compression.type", "compression.type"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    ("log.cleaner.max.compaction.lag.ms", "max.compaction.lag.ms"),
    (
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
    ),
    ("log.cleaner.min.compaction.lag.ms", "min.compaction.lag.ms"),
    ("log.cleanup.policy", "cleanup.policy"),
    (
        "log.message.timestamp.difference.max.ms",
        "message.timestamp.difference.max.ms",
    ),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.retention.ms", "retention.ms"),
    ("log.roll.ms", "segment.ms"),
    ("log.segment.bytes", "segment.bytes"),
    ("message.max.bytes", "max.message.bytes"),
    ("min.insync.replicas", "min.insync.replicas"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The topic config a dynamic broker config is the default of.
pub fn topic_key_of_broker_config(broker_key: &str) -> Option<&'static str> {
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .find(|(b, _)| *b == broker_key)
        .map(|(_, t)| *t)
}

/// Validates a set of dynamic broker configs: every key must be dynamic and
/// every value valid for the topic config it defaults.
pub fn validate_broker_configs(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (k, v) in configs {
        let err = |reason: String| ConfigError {
            key: k.clone(),
            value: v.clone(),
            reason,
        };
        let topic_key = topic_key_of_broker_config(k).ok_or_else(|| {
            err("not a broker config that can change while the node runs; dynamic ones are the defaults of topic configs (log.retention.ms, min.insync.replicas, ...)".into())
        })?;
        check(spec(topic_key).expect("mapped keys are topic configs"), v).map_err(err)?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for config {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl NodeConfig {
    /// The node's static settings under their Kafka broker config names,
    /// with DescribeConfigs type codes, for `DescribeConfigs` on a broker.
    pub fn broker_configs(&self) -> Vec<(&'static str, String, i8)> {
        let d = &self.defaults;
        vec![
            (
                "auto.create.topics.enable",
                self.auto_create_topics.to_string(),
                1,
            ),
            ("broker.id", self.node_id.to_string(), 3),
            (
                "default.replication.factor",
                self.default_replication_factor.to_string(),
                3,
            ),
            (
                "log.message.timestamp.type",
                match d.message_timestamp_type {
                    TimestampType::CreateTime => "CreateTime".to_string(),
                    TimestampType::LogAppendTime => "LogAppendTime".to_string(),
                },
                2,
            ),
            ("log.retention.bytes", d.retention_bytes.to_string(), 5),
            (
                "log.retention.check.interval.ms",
                self.retention_check_interval_ms.to_string(),
                5,
            ),
            ("log.retention.ms", d.retention_ms.to_string(), 5),
            ("log.cleaner.enable", self.cleaner.enable.to_string(), 1),
            (
                "log.cleaner.backoff.ms",
                self.cleaner.backoff_ms.to_string(),
                5,
            ),
            (
                "log.cleaner.io.max.bytes.per.second",
                self.cleaner.io_max_bytes_per_second.to_string(),
                6,
            ),
            (
                "log.cleaner.dedupe.buffer.size",
                self.cleaner.dedupe_buffer_size.to_string(),
                5,
            ),
            ("message.max.bytes", d.max_message_bytes.to_string(), 3),
            ("min.insync.replicas", d.min_insync_replicas.to_string(), 3),
            ("node.id", self.node_id.to_string(), 3),
            (
                "follower.replication.throttled.rate",
                self.reassignment_throttle_bytes_per_sec.to_string(),
                5,
            ),
            ("num.partitions", self.num_partitions.to_string(), 3),
            (
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
                3,
            ),
        ]
    }
}

impl BrokerDefaults {
    /// These defaults under dynamic broker configs: the cluster-wide set,
    /// then this node's (Kafka's precedence). Both must be valid.
    pub fn with_dynamic(
        &self,
        cluster: Option<&BTreeMap<String, String>>,
        node: Option<&BTreeMap<String, String>>,
    ) -> BrokerDefaults {
        let mut out = self.clone();
        out.dynamic.clear();
        for (set, source) in [
            (cluster, ConfigSource::DynamicDefaultBroker),
            (node, ConfigSource::DynamicBroker),
        ] {
            for (k, v) in set.into_iter().flatten() {
                if let Some(t) = topic_key_of_broker_config(k) {
                    if check(spec(t).expect("mapped"), v).is_ok() {
                        out.dynamic.insert(t.to_string(), (v.clone(), source));
                    }
                }
            }
        }
        out
    }

    /// The default value of a topic config as a string, and where it comes
    /// from: a dynamic broker config, the node's static configuration, or
    /// the built-in default.
    pub fn default_value(&self, key: &str) -> Option<(String, ConfigSource)> {
        if let Some(v) = self.dynamic.get(key) {
            return Some(v.clone());
        }
        self.static_default(key)
    }

    /// [`default_value`](Self::default_value) without dynamic configs.
    pub fn static_default(&self, key: &str) -> Option<(String, ConfigSource)> {
        let d = BrokerDefaults::default();
        let (v, is_builtin) = match key {
            "cleanup.policy" => ("delete".to_string(), true),
            "compression.type" => ("producer".to_string(), true),
            "delete.retention.ms" => ("86400000".to_string(), true),
            "max.compaction.lag.ms" => (i64::MAX.to_string(), true),
            "min.cleanable.dirty.ratio" => ("0.5".to_string(), true),
            "min.compaction.lag.ms" => ("0".to_string(), true),
            "max.message.bytes" => (
                self.max_message_bytes.to_string(),
                self.max_message_bytes == d.max_message_bytes,
            ),
            "message.timestamp.type" => (
                match self.message_timestamp_type {
                    TimestampType::CreateTime => "CreateTime".to_string(),
                    TimestampType::LogAppendTime => "LogAppendTime".to_string(),
                },
                self.message_timestamp_type == d.message_timestamp_type,
            ),
            "message.timestamp.difference.max.ms" => (i64::MAX.to_string(), true),
            "min.insync.replicas" => (
                self.min_insync_replicas.to_string(),
                self.min_insync_replicas == d.min_insync_replicas,
            ),
            "retention.bytes" => (
                self.retention_bytes.to_string(),
                self.retention_bytes == d.retention_bytes,
            ),
            "retention.ms" => (
                self.retention_ms.to_string(),
                self.retention_ms == d.retention_ms,
            ),
            "segment.bytes" => ("1073741824".to_string(), true),
            "segment.ms" => ("604800000".to_string(), true),
            "unclean.leader.election.enable" => ("false".to_string(), true),
            _ => return None,
        };
        let source = if is_builtin {
            ConfigSource::Default
        } else {
            ConfigSource::StaticBroker
        };
        Some((v, source))
    }

    /// Validates a topic's overrides and resolves the effective config.
    pub fn resolve(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        for (k, v) in overrides {
            let err = |reason: String| ConfigError {
                key: k.clone(),
                value: v.clone(),
                reason,
            };
            let s = spec(k).ok_or_else(|| err("unknown topic config".into()))?;
            check(s, v).map_err(err)?;
        }
        let get = |k: &str| -> String {
            overrides
                .get(k)
                .cloned()
                .unwrap_or_else(|| self.default_value(k).expect("every spec has a default").0)
        };
        let num = |k: &str| -> i64 { get(k).trim().parse().expect("validated above") };
        Ok(TopicConfig {
            retention_ms: num("retention.ms"),
            retention_bytes: num("retention.bytes"),
            max_message_bytes: num("max.message.bytes") as i32,
            message_timestamp_type: if get("message.timestamp.type") == "LogAppendTime" {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            message_timestamp_difference_max_ms: num("message.timestamp.difference.max.ms"),
            min_insync_replicas: num("min.insync.replicas") as i32,
            segment_bytes: num("segment.bytes"),
            segment_ms: num("segment.ms"),
            unclean_leader_election: get("unclean.leader.election.enable") == "true",
            cleanup_delete: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "delete"),
            cleanup_compact: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "compact"),
            compaction: Policy {
                min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                    .trim()
                    .parse()
                    .expect("validated above"),
                min_compaction_lag_ms: num("min.compaction.lag.ms"),
                max_compaction_lag_ms: num("max.compaction.lag.ms"),
                delete_retention_ms: num("delete.retention.ms"),
            },
            compression: match get("compression.type").as_str() {
                "uncompressed" => Some(Compression::None),
                "gzip" => Some(Compression::Gzip),
                "snappy" => Some(Compression::Snappy),
                "lz4" => Some(Compression::Lz4),
                "zstd" => Some(Compression::Zstd),
                _ => None,
            },
        })
    }

    /// [`resolve`](Self::resolve) for a named topic: the internal topics
    /// are compacted unless their configs say otherwise (they hold one live
    /// record per group, committed partition and transactional id).
    pub fn resolve_topic(
        &self,
        name: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        let internal =
            name == sluice_api::OFFSETS_TOPIC || name == sluice_api::TRANSACTION_STATE_TOPIC;
        if internal && !overrides.contains_key("cleanup.policy") {
            let mut o = overrides.clone();
            o.insert("cleanup.policy".into(), "compact".into());
            return self.resolve(&o);
        }
        self.resolve(overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_resolve() {
        let c = BrokerDefaults::default().resolve(&BTreeMap::new()).unwrap();
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.retention_bytes, -1);
        assert_eq!(c.message_timestamp_type, TimestampType::CreateTime);
    }

    #[test]
    fn overrides_apply() {
        let c = BrokerDefaults::default()
            .resolve(&map(&[
                ("retention.ms", "1000"),
                ("message.timestamp.type", "LogAppendTime"),
                ("max.message.bytes", "512"),
            ]))
            .unwrap();
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.max_message_bytes, 512);
        assert_eq!(c.message_timestamp_type, TimestampType::LogAppendTime);
        assert!(c.cleanup_delete && !c.cleanup_compact);
        assert_eq!(c.compression, None);
    }

    #[test]
    fn compaction_configs_resolve() {
        let d = BrokerDefaults::default();
        let c = d
            .resolve(&map(&[
                ("cleanup.policy", "compact, delete"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("delete.retention.ms", "100"),
                ("compression.type", "zstd"),
            ]))
            .unwrap();
        assert!(c.cleanup_compact && c.cleanup_delete);
        assert_eq!(c.compaction.min_cleanable_dirty_ratio, 0.01);
        assert_eq!(c.compaction.delete_retention_ms, 100);
        assert_eq!(c.compaction.max_compaction_lag_ms, i64::MAX);
        assert_eq!(c.compression, Some(Compression::Zstd));
        let offsets = d
            .resolve_topic("__consumer_offsets", &BTreeMap::new())
            .unwrap();
        assert!(offsets.cleanup_compact && !offsets.cleanup_delete);
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = BrokerDefaults::default();
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("max.message.bytes", "99999999999"),
            ("cleanup.policy", "compact,shred"),
            ("cleanup.policy", ""),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("compression.type", "brotli"),
            ("message.timestamp.type", "Now"),
            ("no.such.key", "1"),
            ("unclean.leader.election.enable", "yes"),
        ] {
            let e = d.resolve(&map(&[(k, v)])).unwrap_err();
            assert_eq!(e.key, k);
        }
    }

    #[test]
    fn dynamic_broker_configs_default_topics_node_over_cluster() {
        let d = BrokerDefaults::default();
        let cluster = map(&[("log.retention.ms", "1000"), ("min.insync.replicas", "2")]);
        let node = map(&[("log.retention.ms", "2000")]);
        let eff = d.with_dynamic(Some(&cluster), Some(&node));
        let c = eff.resolve(&BTreeMap::new()).unwrap();
        assert_eq!((c.retention_ms, c.min_insync_replicas), (2000, 2));
        assert_eq!(
            eff.default_value("retention.ms"),
            Some(("2000".into(), ConfigSource::DynamicBroker))
        );
        assert_eq!(
            eff.default_value("min.insync.replicas").unwrap().1,
            ConfigSource::DynamicDefaultBroker
        );
        // A topic's own config still wins.
        let t = eff.resolve(&map(&[("retention.ms", "5")])).unwrap();
        assert_eq!(t.retention_ms, 5);
        assert!(validate_broker_configs(&cluster).is_ok());
        for (k, v) in [
            ("log.retention.ms", "soon"),
            ("broker.id", "7"),
            ("no.such.config", "1"),
            ("log.cleanup.policy", "shred"),
        ] {
            let e = validate_broker_configs(&map(&[(k, v)])).unwrap_err();
            assert_eq!(e.key, k);
        }
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("golang-test").is_ok());
        assert!(validate_topic_name("a.b_c-1").is_ok());
        for bad in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
