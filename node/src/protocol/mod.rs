//! The Kafka protocol room: framing, request decoding and response encoding
//! through the `kafka-protocol` crate, the advertised API versions, and one
//! handler per API that turns a request into calls on the [`Broker`].
//!
//! [`Broker`]: crate::broker::Broker

mod admin;
mod fetch;
mod group;
pub mod limits;
mod metadata;
mod produce;
mod server;
mod txn;
pub mod versions;

pub(crate) use metadata::advertised;
pub use server::{handle_frame, serve, FrameError, Response};

use std::sync::Arc;

use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::group::Coordinator;

/// What the protocol handlers act on.
pub struct Services {
    pub broker: Arc<Broker>,
    pub groups: Arc<Coordinator>,
    pub txns: Arc<crate::txn::Coordinator>,
    /// Memory for requests in flight and fetch answers.
    pub pool: limits::MemoryPool,
    pub connections: Arc<limits::Connections>,
}

impl Services {
    pub fn new(
        broker: Arc<Broker>,
        groups: Arc<Coordinator>,
        txns: Arc<crate::txn::Coordinator>,
    ) -> Services {
        let c = &broker.config;
        Services {
            pool: limits::MemoryPool::new(c.queued_max_request_bytes),
            connections: limits::Connections::new(c.max_connections, c.max_connections_per_ip),
            broker,
            groups,
            txns,
        }
    }
}

/// Who sent a request: the header's client id and the peer address in
/// Kafka's `/ip` form (as DescribeGroups reports it).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: String,
    pub host: String,
}

/// Authorized operations as Kafka reports them without an authorizer:
/// every operation the resource type supports, as a bit field of ACL
/// operation codes; `i32::MIN` when the client did not ask.
pub(crate) mod ops {
    pub const NOT_REQUESTED: i32 = i32::MIN;
    /// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
    pub const TOPIC: i32 = 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 10 | 1 << 11;
    /// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS,
    /// ALTER_CONFIGS, IDEMPOTENT_WRITE.
    pub const CLUSTER: i32 = 1 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12;
    /// READ, DELETE, DESCRIBE.
    pub const GROUP: i32 = 1 << 3 | 1 << 6 | 1 << 8;

    pub fn when(asked: bool, all: i32) -> i32 {
        if asked {
            all
        } else {
            NOT_REQUESTED
        }
    }
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
