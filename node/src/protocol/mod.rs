//! The Kafka protocol room: framing, request decoding and response encoding
//! through the `kafka-protocol` crate, the advertised API versions, and one
//! handler per API that turns a request into calls on the [`Broker`].
//!
//! [`Broker`]: crate::broker::Broker

mod admin;
mod fetch;
mod group;
mod metadata;
mod produce;
mod server;
pub mod versions;

pub(crate) use metadata::advertised;
pub use server::{handle_frame, serve, FrameError};

use std::sync::Arc;

use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::group::Coordinator;

/// What the protocol handlers act on.
pub struct Services {
    pub broker: Arc<Broker>,
    pub groups: Arc<Coordinator>,
}

/// Who sent a request: the header's client id and the peer address in
/// Kafka's `/ip` form (as DescribeGroups reports it).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: String,
    pub host: String,
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
