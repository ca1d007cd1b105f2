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
mod security;
mod server;
mod txn;
pub mod versions;

pub(crate) use metadata::{advertised, advertised_for};
pub use server::{handle_frame, serve, Connection, FrameError, ListenerInfo, Response};

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
    /// TLS, SASL settings and the authorizer.
    pub security: Arc<crate::security::Security>,
}

impl Services {
    pub fn new(
        broker: Arc<Broker>,
        groups: Arc<Coordinator>,
        txns: Arc<crate::txn::Coordinator>,
        security: Arc<crate::security::Security>,
    ) -> Services {
        let c = &broker.config;
        Services {
            pool: limits::MemoryPool::new(c.queued_max_request_bytes),
            connections: limits::Connections::new(c.max_connections, c.max_connections_per_ip),
            broker,
            groups,
            txns,
            security,
        }
    }

    /// Asks `decide` with the authorizer, the stored ACLs and the client's
    /// host; always yes without an authorizer.
    fn decide(
        &self,
        client: &Client,
        decide: impl FnOnce(&sluice_security::Authorizer, &[sluice_security::AclBinding], &str) -> bool,
    ) -> bool {
        let Some(auth) = &self.security.authorizer else {
            return true;
        };
        let view = self.broker.view();
        let acls = view
            .security
            .as_ref()
            .map_or(&[][..], |s| &s.value.acls[..]);
        decide(auth, acls, client.host.trim_start_matches('/'))
    }

    /// Whether `client` may do `op` on the resource `name` of type
    /// `rtype`: always without an authorizer, else as the stored ACLs say.
    pub fn authorize(
        &self,
        client: &Client,
        op: sluice_security::Operation,
        rtype: sluice_security::ResourceType,
        name: &str,
    ) -> bool {
        self.decide(client, |auth, acls, host| {
            auth.allows(acls, &client.principal, host, op, rtype, name)
        })
    }

    pub fn authorize_topic(
        &self,
        client: &Client,
        op: sluice_security::Operation,
        name: &str,
    ) -> bool {
        self.authorize(client, op, sluice_security::ResourceType::Topic, name)
    }

    pub fn authorize_group(
        &self,
        client: &Client,
        op: sluice_security::Operation,
        name: &str,
    ) -> bool {
        self.authorize(client, op, sluice_security::ResourceType::Group, name)
    }

    pub fn authorize_txn(&self, client: &Client, op: sluice_security::Operation, id: &str) -> bool {
        self.authorize(
            client,
            op,
            sluice_security::ResourceType::TransactionalId,
            id,
        )
    }

    /// Whether `client` may do `op` on some resource of type `rtype`
    /// (an idempotent producer with WRITE on any topic, as Kafka allows).
    pub fn authorize_any(
        &self,
        client: &Client,
        op: sluice_security::Operation,
        rtype: sluice_security::ResourceType,
    ) -> bool {
        self.decide(client, |auth, acls, host| {
            auth.allows_some(acls, &client.principal, host, op, rtype)
        })
    }

    /// Kafka's authorized-operations bit field for one resource: `all`
    /// (what the type supports) without an authorizer, else the operations
    /// the principal may do on it.
    pub fn authorized_ops(
        &self,
        client: &Client,
        rtype: sluice_security::ResourceType,
        name: &str,
        all: i32,
    ) -> i32 {
        if self.security.authorizer.is_none() || all == ops::NOT_REQUESTED {
            return all;
        }
        (0..31)
            .filter(|bit| all & (1 << bit) != 0)
            .filter(|bit| {
                sluice_security::Operation::from_code(*bit as i8)
                    .is_some_and(|op| self.authorize(client, op, rtype, name))
            })
            .fold(0, |acc, bit| acc | (1 << bit))
    }

    pub fn authorize_cluster(&self, client: &Client, op: sluice_security::Operation) -> bool {
        self.authorize(
            client,
            op,
            sluice_security::ResourceType::Cluster,
            sluice_security::acl::CLUSTER_NAME,
        )
    }
}

/// One request's authorization questions, answered as Kafka's errors.
pub(crate) struct Authz<'a> {
    pub svc: &'a Services,
    pub client: &'a Client,
}

impl Authz<'_> {
    pub fn topic(
        &self,
        op: sluice_security::Operation,
        name: &str,
    ) -> Result<(), crate::broker::KafkaError> {
        if self.svc.authorize_topic(self.client, op, name) {
            Ok(())
        } else {
            Err(crate::broker::KafkaError::new(
                kafka_protocol::ResponseError::TopicAuthorizationFailed,
                format!("{op:?} on topic {name} is needed"),
            ))
        }
    }

    pub fn cluster(&self, op: sluice_security::Operation) -> Result<(), crate::broker::KafkaError> {
        if self.svc.authorize_cluster(self.client, op) {
            Ok(())
        } else {
            Err(crate::broker::KafkaError::new(
                kafka_protocol::ResponseError::ClusterAuthorizationFailed,
                format!("{op:?} on the cluster is needed"),
            ))
        }
    }

    /// CREATE on the cluster or on the topic, as Kafka asks of a creation.
    pub fn create_topic(&self, name: &str) -> Result<(), crate::broker::KafkaError> {
        self.cluster(sluice_security::Operation::Create)
            .or_else(|_| self.topic(sluice_security::Operation::Create, name))
    }
}

/// Who sent a request: the header's client id, the peer address in
/// Kafka's `/ip` form (as DescribeGroups reports it), the principal it acts
/// as and the listener it came in on.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: String,
    pub host: String,
    pub principal: String,
    pub listener: String,
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
