//! Sluice storage node.
//!
//! One process per StatefulSet pod (`sluice serve`), or the whole cluster on a
//! laptop (`sluice dev`). It speaks the Kafka wire protocol to clients and keeps
//! partition logs in RocksDB. The rooms:
//! - [`protocol`]: framing, decoding and encoding with `kafka-protocol`, one
//!   handler per API, the advertised versions;
//! - [`broker`]: topics and partitions, what the handlers call;
//! - [`log`]: the partition log on RocksDB (record batches stored as produced)
//!   and the compaction rules; [`cleaner`]: the task that compacts;
//! - [`replication`]: followers pulling from leaders over gRPC;
//! - [`coord`] (crate `sluice-coord`, shared with the operator): cluster
//!   metadata (node leases, topics, partition records) behind one trait,
//!   its backends, and the controller that elects leaders;
//! - [`cluster`]: the node's lease and self-fencing, applying the metadata
//!   (topics, replica roles, follower sessions, ISR changes);
//! - [`group`]: the group coordinator and committed offsets;
//! - [`txn`]: transactions: the transaction state machine (pure), and the
//!   coordinator built on it;
//! - [`config`]: node settings and topic config validation (pure);
//! - [`metrics`] and [`http`]: Prometheus metrics and health on the admin port.

pub mod broker;
pub mod cleaner;
pub mod cluster;
pub mod config;
/// Cluster coordination (the metadata store, its view, the controller),
/// shared with the operator: crate `sluice-coord`.
pub use sluice_coord as coord;
pub mod group;
pub mod http;
pub mod log;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod replication;
pub mod security;
pub mod txn;
