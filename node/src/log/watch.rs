//! Waiting for partitions to change: wake-ups registered on a set of
//! partition logs (and on one more notifier, such as role changes) before
//! the caller looks at them, so no change between the look and the wait is
//! missed, and appends to other partitions wake nobody here.

use std::pin::Pin;

use tokio::sync::futures::Notified;

use super::PartitionLog;

pub struct Watch<'a>(Vec<Pin<Box<Notified<'a>>>>);

impl<'a> Watch<'a> {
    /// Registers at once (a `Notified` hears `notify_waiters` from the
    /// moment it is created).
    pub fn new(logs: impl IntoIterator<Item = &'a PartitionLog>, also: Notified<'a>) -> Self {
        let mut waits: Vec<Pin<Box<Notified<'a>>>> =
            logs.into_iter().map(|l| Box::pin(l.changed())).collect();
        waits.push(Box::pin(also));
        Watch(waits)
    }

    /// Resolves on the first change of any of them.
    pub async fn changed(self) {
        futures_util::future::select_all(self.0).await;
    }
}
