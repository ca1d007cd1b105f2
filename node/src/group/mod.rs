//! The group coordinator room: the classic consumer group protocol (join,
//! sync, heartbeat, leave), committed offsets, and their persistence as
//! records in the internal topic `__consumer_offsets`.

pub mod coordinator;
pub mod state;

pub use coordinator::{Coordinator, GroupConfig, OFFSETS_TOPIC};
