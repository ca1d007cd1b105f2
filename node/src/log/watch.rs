//! Waiting for partitions to change: wake-ups registered on a set of
//! partition logs (and on one more notifier, such as role changes) before
//! the caller looks at them, so no change between the look and the wait is
//! missed, and appends to other partitions wake nobody here.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Instant;

use tokio::sync::futures::Notified;

use super::PartitionLog;

pub struct Watch<'a> {
    waits: Vec<Pin<Box<Notified<'a>>>>,
    logs: Vec<&'a PartitionLog>,
}

impl<'a> Watch<'a> {
    /// Registers at once (a `Notified` hears `notify_waiters` from the
    /// moment it is created).
    pub fn new(logs: impl IntoIterator<Item = &'a PartitionLog>, also: Notified<'a>) -> Self {
        let logs: Vec<&'a PartitionLog> = logs.into_iter().collect();
        let mut waits: Vec<Pin<Box<Notified<'a>>>> =
            logs.iter().map(|l| Box::pin(l.changed())).collect();
        waits.push(Box::pin(also));
        Watch { waits, logs }
    }

    /// Resolves on the first change of any of them: with the time
    /// (`clock_nanos`) the partition that woke it changed, or `None` when
    /// the other notifier did.
    pub async fn changed(self) -> Option<u64> {
        let (_, i, _) = futures_util::future::select_all(self.waits).await;
        self.logs.get(i).map(|l| l.changed_at())
    }
}

/// Nanoseconds on a monotonic clock that starts with the process (never 0
/// once read, so 0 can stand for "never").
pub fn clock_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    (start.elapsed().as_nanos() as u64).saturating_add(1)
}

/// Seconds from `since` (`clock_nanos`) to now.
pub fn seconds_since(since: u64) -> f64 {
    clock_nanos().saturating_sub(since) as f64 / 1e9
}
