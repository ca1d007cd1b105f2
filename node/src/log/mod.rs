//! The partition log room: record batches in RocksDB, keyed by partition and
//! base offset, stored exactly as produced and served back without re-encoding.

pub mod batch;
mod partition;
mod store;

pub use partition::{Appended, PartitionLog, Read, TimestampType};
pub use store::{Store, StoreError};
