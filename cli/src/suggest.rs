//! "Did you mean": the valid names closest to a mistyped one.

/// Kafka's topic-level config names (the protocol's vocabulary, the same on
/// every Kafka-compatible broker), for suggestions when no broker lists them.
pub const TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.downconversion.enable",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// Up to three names from `valid` close to `name`, best first.
pub fn closest<'a>(name: &str, valid: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(f64, &str)> = valid
        .into_iter()
        .map(|v| (strsim::jaro_winkler(name, v), v))
        .filter(|(s, _)| *s >= 0.85)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, v)| v).collect()
}

/// "; did you mean a, b?" or nothing.
pub fn did_you_mean<'a>(name: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    let c = closest(name, valid);
    if c.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", c.join(" or "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_are_suggested_and_strangers_are_not() {
        assert_eq!(
            closest("retention.msx", TOPIC_CONFIGS.iter().copied())[0],
            "retention.ms"
        );
        assert_eq!(
            closest("cleanup.polcy", TOPIC_CONFIGS.iter().copied())[0],
            "cleanup.policy"
        );
        assert!(closest("zzz", TOPIC_CONFIGS.iter().copied()).is_empty());
        assert_eq!(did_you_mean("zzz", ["a"]), "");
    }
}
