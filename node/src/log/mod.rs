//! The partition log room: record batches in RocksDB, keyed by partition and
//! base offset, stored exactly as produced and served back without re-encoding;
//! and the log cleaner that compacts keyed partitions in place.

pub mod batch;
mod codec;
pub mod compaction;
mod partition;
pub mod producers;
mod store;
pub mod txn_index;
pub mod validate;
mod watch;

pub use partition::{
    AppendError, Appended, CleanStats, PartitionLog, Read, TimestampType, UNDEFINED_EPOCH,
};
pub use store::{Store, StoreError, StoreOptions, StoreStats, MIN_BLOB};
pub use watch::{seconds_since, Watch};
