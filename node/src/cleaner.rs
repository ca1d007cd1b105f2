//! The log cleaner: a background task that compacts the partitions of
//! topics with `cleanup.policy=compact` (the rules live in
//! [`crate::log::compaction`], the rewriting in the partition log), paced to
//! `log.cleaner.io.max.bytes.per.second` and reported in `/metrics`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::{now_ms, Broker};
use crate::log::StoreError;

/// Bytes of original batches written per atomic chunk of a pass.
const CHUNK_BYTES: usize = 4 << 20;

/// Paces I/O to a byte rate: a caller reporting `n` bytes is held back
/// until the bytes so far fit the rate since the pass began.
pub struct Throttle {
    bytes_per_second: f64,
    started: Instant,
    bytes: f64,
}

impl Throttle {
    pub fn new(bytes_per_second: f64) -> Throttle {
        Throttle {
            bytes_per_second,
            started: Instant::now(),
            bytes: 0.0,
        }
    }

    /// How long to hold back after `n` more bytes.
    fn owed(&mut self, n: usize) -> Duration {
        self.bytes += n as f64;
        let due = Duration::from_secs_f64(self.bytes / self.bytes_per_second);
        due.saturating_sub(self.started.elapsed())
    }

    pub fn pace(&mut self, n: usize) {
        let wait = self.owed(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Partitions the cleaner gave up on: a pass failed on data it cannot read
/// (a corrupt batch). As in Kafka, they are left alone until the node
/// restarts, and counted in `/metrics`; every other partition is cleaned.
#[derive(Default)]
pub struct Uncleanable(HashSet<(uuid::Uuid, i32)>);

/// Checks every compacted partition once and cleans those that are due.
/// Returns how many passes ran.
pub fn clean_once(broker: &Broker, skip: &mut Uncleanable) -> usize {
    let m = &broker.metrics;
    let mut passes = 0;
    let mut max_ratio = 0.0f64;
    for topic in broker.topics() {
        if !topic.config.cleanup_compact {
            continue;
        }
        for p in &topic.partitions {
            let key = (topic.record.id, p.log.partition);
            if skip.0.contains(&key) {
                continue;
            }
            match clean_partition(broker, &topic, p) {
                Ok(ran) => passes += usize::from(ran),
                Err(e) => {
                    tracing::error!(topic = %topic.record.name, partition = p.log.partition, error = %e, "log cleaner gave up on this partition until the node restarts");
                    skip.0.insert(key);
                }
            }
            max_ratio = max_ratio.max(p.log.dirty_ratio());
        }
    }
    m.cleaner_max_dirty_ratio.set(max_ratio);
    m.cleaner_uncleanable_partitions.set(skip.0.len() as i64);
    passes
}

/// Cleans one partition if it is due; whether a pass ran.
fn clean_partition(
    broker: &Broker,
    topic: &crate::broker::Topic,
    p: &crate::broker::Partition,
) -> Result<bool, StoreError> {
    let cfg = &broker.config.cleaner;
    let m = &broker.metrics;
    let policy = topic.config.compaction;
    {
        {
            let now = now_ms();
            if let Some(due) = p.log.compaction_due(&policy, now)? {
                let started = Instant::now();
                let mut throttle = Throttle::new(cfg.io_max_bytes_per_second);
                let outcome = p.log.clean(
                    &policy,
                    now,
                    cfg.dedupe_buffer_size,
                    CHUNK_BYTES,
                    &mut |n| throttle.pace(n),
                )?;
                let secs = started.elapsed().as_secs_f64();
                m.cleaner_busy_seconds.inc_by(secs);
                if let Some(s) = outcome {
                    m.cleaner_passes.inc();
                    m.cleaner_records_read.inc_by(s.records_read);
                    m.cleaner_records_removed.inc_by(s.records_removed);
                    m.cleaner_bytes_read.inc_by(s.bytes_read);
                    m.cleaner_bytes_written.inc_by(s.bytes_written);
                    tracing::info!(
                        topic = %topic.record.name,
                        partition = p.log.partition,
                        ?due,
                        records = s.records_read,
                        removed = s.records_removed,
                        bytes_before = s.bytes_before,
                        bytes_after = s.bytes_after,
                        seconds = secs,
                        "log cleaner pass"
                    );
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Runs the cleaner until the process ends: again at once after a pass,
/// after `log.cleaner.backoff.ms` when nothing was due.
pub async fn run(broker: Arc<Broker>) {
    if !broker.config.cleaner.enable {
        return;
    }
    let backoff = Duration::from_millis(broker.config.cleaner.backoff_ms);
    let skip = Arc::new(std::sync::Mutex::new(Uncleanable::default()));
    loop {
        let b = broker.clone();
        let s = skip.clone();
        let ran = match tokio::task::spawn_blocking(move || {
            clean_once(&b, &mut s.lock().expect("cleaner lock"))
        })
        .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "log cleaner panicked");
                0
            }
        };
        if ran == 0 {
            tokio::time::sleep(backoff).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_owes_time_past_the_rate() {
        let mut t = Throttle::new(1_000.0);
        let owed = t.owed(2_000);
        assert!(owed > Duration::from_millis(1_900), "{owed:?}");
        let mut fast = Throttle::new(1e12);
        assert!(fast.owed(1_000).is_zero());
    }
}
