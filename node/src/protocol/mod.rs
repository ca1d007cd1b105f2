//! The Kafka protocol room: framing, request decoding and response encoding
//! through the `kafka-protocol` crate, the advertised API versions, and one
//! handler per API that turns a request into calls on the [`Broker`].
//!
//! [`Broker`]: crate::broker::Broker

mod admin;
mod fetch;
mod metadata;
mod produce;
mod server;
pub mod versions;

pub use server::{handle_frame, serve, FrameError};

use kafka_protocol::protocol::StrBytes;

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
