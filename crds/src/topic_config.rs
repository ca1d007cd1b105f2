//! Kafka topic configs: every key a topic may set, its type, range and
//! documentation, and the checks of a value (pure). The storage nodes
//! validate topic configs with it; the operator validates `Topic` objects
//! and the `Topic` CRD's schema names its keys.

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Long {
        min: i64,
    },
    Int {
        min: i64,
    },
    Double {
        min: f64,
        max: f64,
    },
    Bool,
    OneOf(&'static [&'static str]),
    /// A comma-separated, non-empty list of these words.
    List(&'static [&'static str]),
}

pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

/// Every topic config the node accepts. Keys outside this table are refused.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "cleanup.policy",
        kind: Kind::List(&["delete", "compact"]),
        doc: "What happens to old log data: `delete` removes batches past retention.ms / retention.bytes; `compact` keeps at least the latest record of every key (log compaction); `compact,delete` does both.",
    },
    Spec {
        name: "compression.type",
        kind: Kind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
        doc: "`producer` stores batches exactly as the producer sent them; a codec (or `uncompressed`) makes the node recompress every batch to it on append.",
    },
    Spec {
        name: "delete.retention.ms",
        kind: Kind::Long { min: 0 },
        doc: "How long a tombstone (a record with a null value) is kept on a compacted topic after the cleaner first made its part of the log clean, so consumers reading from the start see it.",
    },
    Spec {
        name: "max.compaction.lag.ms",
        kind: Kind::Long { min: 1 },
        doc: "Longest time a record stays uncompacted: a partition whose oldest dirty batch is older is cleaned whatever its dirty ratio.",
    },
    Spec {
        name: "max.message.bytes",
        kind: Kind::Int { min: 0 },
        doc: "Largest record batch size allowed, in bytes.",
    },
    Spec {
        name: "message.timestamp.type",
        kind: Kind::OneOf(&["CreateTime", "LogAppendTime"]),
        doc: "Whether record timestamps are the producer's (CreateTime) or the broker's append time (LogAppendTime).",
    },
    Spec {
        name: "min.cleanable.dirty.ratio",
        kind: Kind::Double { min: 0.0, max: 1.0 },
        doc: "A compacted partition is cleaned once its not yet compacted bytes are at least this share of the log.",
    },
    Spec {
        name: "min.compaction.lag.ms",
        kind: Kind::Long { min: 0 },
        doc: "Shortest time a record stays uncompacted: batches younger than this are never cleaned.",
    },
    Spec {
        name: "message.timestamp.difference.max.ms",
        kind: Kind::Long { min: 0 },
        doc: "Largest allowed difference between a CreateTime timestamp and the broker's clock.",
    },
    Spec {
        name: "min.insync.replicas",
        kind: Kind::Int { min: 1 },
        doc: "Minimum in-sync replicas for an acks=all produce to succeed.",
    },
    Spec {
        name: "retention.bytes",
        kind: Kind::Long { min: -1 },
        doc: "Largest size a partition may grow to before old batches are deleted; -1 for no limit.",
    },
    Spec {
        name: "retention.ms",
        kind: Kind::Long { min: -1 },
        doc: "Longest time a batch is kept, by its largest timestamp; -1 for no limit.",
    },
    Spec {
        name: "segment.bytes",
        kind: Kind::Int { min: 14 },
        doc: "Accepted for compatibility. Sluice has no segment files: every batch is its own deletion unit in RocksDB.",
    },
    Spec {
        name: "segment.ms",
        kind: Kind::Long { min: 1 },
        doc: "Accepted for compatibility. Sluice has no segment files: every batch is its own deletion unit in RocksDB.",
    },
    Spec {
        name: "unclean.leader.election.enable",
        kind: Kind::Bool,
        doc: "Whether a replica outside the ISR may be elected leader as a last resort.",
    },
];

pub fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == key)
}

pub fn check(spec: &Spec, value: &str) -> Result<(), String> {
    match spec.kind {
        Kind::Long { min } | Kind::Int { min } => {
            let v: i64 = value
                .trim()
                .parse()
                .map_err(|_| "not a whole number".to_string())?;
            if v < min {
                return Err(format!("must be at least {min}"));
            }
            if matches!(spec.kind, Kind::Int { .. }) && v > i64::from(i32::MAX) {
                return Err(format!("must be at most {}", i32::MAX));
            }
            Ok(())
        }
        Kind::Double { min, max } => {
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| "not a number".to_string())?;
            if !(min..=max).contains(&v) {
                return Err(format!("must be between {min} and {max}"));
            }
            Ok(())
        }
        Kind::List(allowed) => {
            let items: Vec<&str> = value.split(',').map(str::trim).collect();
            if items.iter().any(|i| !allowed.contains(i)) || items.iter().all(|i| i.is_empty()) {
                return Err(format!(
                    "must be a comma-separated list of {}",
                    allowed.join(", ")
                ));
            }
            Ok(())
        }
        Kind::Bool => match value {
            "true" | "false" => Ok(()),
            _ => Err("must be true or false".into()),
        },
        Kind::OneOf(allowed) => {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(format!("must be one of {}", allowed.join(", ")))
            }
        }
    }
}

/// Every accepted topic config key.
pub fn topic_config_keys() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name)
}

pub fn topic_config_doc(key: &str) -> Option<&'static str> {
    spec(key).map(|s| s.doc)
}

/// Kafka's DescribeConfigs type code of a topic config
/// (1 boolean, 2 string, 3 int, 5 long, 6 double, 7 list).
pub fn topic_config_type(key: &str) -> i8 {
    match spec(key).map(|s| s.kind) {
        Some(Kind::Bool) => 1,
        Some(Kind::OneOf(_)) => 2,
        Some(Kind::Int { .. }) => 3,
        Some(Kind::Long { .. }) => 5,
        Some(Kind::Double { .. }) => 6,
        Some(Kind::List(_)) => 7,
        None => 0,
    }
}

/// Whether a topic config holds a comma-separated list (the configs
/// IncrementalAlterConfigs' APPEND and SUBTRACT apply to).
pub fn is_list_config(key: &str) -> bool {
    matches!(spec(key).map(|s| s.kind), Some(Kind::List(_)))
}

/// Kafka's topic name rule: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}
