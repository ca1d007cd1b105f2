//! The partition log room: record batches in RocksDB, keyed by partition and
//! base offset, stored exactly as produced and served back without re-encoding.

pub mod batch;
mod partition;
pub mod producers;
mod store;

pub use partition::{AppendError, Appended, PartitionLog, Read, TimestampType, UNDEFINED_EPOCH};
pub use store::{Store, StoreError};
