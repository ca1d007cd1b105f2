//! The replication room: followers pull record batches from leaders over
//! gRPC (tonic), one fetch session per follower and leader node carrying all
//! the partitions it follows there, as Kafka's replica fetchers do.
//!
//! - [`leader`]: the gRPC service answering followers' fetches from the
//!   leader's logs, checking leader epochs and detecting divergent tails;
//! - [`follower`]: the fetch session a follower runs against one leader,
//!   appending what it receives, truncating where the leader says its log
//!   diverged, and taking the high watermark the leader reports;
//! - [`replica`]: one partition's role on this node and, while it leads, its
//!   followers' progress, the ISR and the high watermark;
//! - [`throttle`]: the byte rate for replicas catching up as a
//!   reassignment's new home.
//!
//! Neither side decides who leads: they are told, through the traits here,
//! by whoever reads the cluster metadata.

pub mod follower;
pub mod leader;
pub mod replica;
pub mod throttle;

use std::sync::Arc;

use crate::log::PartitionLog;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("sluice.replication.v1");
}

pub use proto::FetchError;

/// What the leader side needs from its node.
pub trait LeaderLogs: Send + Sync + 'static {
    /// The log of a partition this node leads, if the follower's epoch is
    /// the current one.
    fn leader_log(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
    ) -> Result<Arc<PartitionLog>, FetchError>;

    /// A follower fetched this partition from `fetch_offset` (its log end).
    /// The leader updates what it knows of the follower, and the ISR and high
    /// watermark with it.
    fn follower_fetched(&self, topic: &str, partition: i32, follower: i32, fetch_offset: i64);

    /// Resolves when roles may have changed, so a parked fetch re-checks
    /// its partitions' leadership; appends and high watermark moves wake
    /// it through each log's `PartitionLog::changed`.
    fn roles_changed(&self) -> tokio::sync::futures::Notified<'_>;

    /// A parked follower fetch answered `seconds` after the partition
    /// change that woke it (for metrics).
    fn woke_after(&self, _seconds: f64) {}
}

/// What a follower needs to know about one partition it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub log: Arc<PartitionLog>,
    /// The replica's role on this node, when there is one: answers arriving
    /// after it stopped following this leader epoch are dropped.
    pub replica: Option<Arc<replica::Replica>>,
    /// A reassignment is adding this replica: its fetches go through the
    /// node's [`throttle::Throttle`].
    pub throttled: bool,
}

impl Following {
    /// Runs `f` (a change to the log) only while this node follows the
    /// partition at this epoch, holding the role so it cannot change
    /// meanwhile. `None` when it moved on.
    pub fn while_current<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match &self.replica {
            Some(r) => r.with_following(self.leader_epoch, f),
            None => Some(f()),
        }
    }
}

impl std::fmt::Debug for replica::Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica({:?})", self.role())
    }
}

impl PartialEq for replica::Replica {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for replica::Replica {}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartitionLog({})", self.partition)
    }
}

impl PartialEq for PartitionLog {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for PartitionLog {}
