//! The security room's rules, shared by the storage nodes and the operator,
//! with no I/O: SCRAM credentials (salted and hashed, RFC 5802/7677) and the
//! server side of the SCRAM and PLAIN exchanges, principals, and Kafka's ACL
//! model with the authorizer that decides a request from the stored ACLs.
//!
//! What is stored in the cluster's metadata is [`SecurityRecord`]: every
//! user's SCRAM credentials and every ACL, one record, changed by
//! compare-and-swap like the rest of the metadata.

pub mod acl;
pub mod plain;
pub mod scram;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use acl::{
    AclBinding, AclFilter, Authorizer, Operation, PatternType, Permission, ResourceType,
};
pub use scram::{Mechanism, ScramCredential};

/// The principal of a client that did not authenticate (a PLAINTEXT or SSL
/// listener without a client certificate), as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// The principal Kafka gives a user name (`User:<name>`).
pub fn user_principal(name: &str) -> String {
    format!("User:{name}")
}

/// Users' SCRAM credentials and the ACLs: what every node enforces alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityRecord {
    /// By user name, the user's credential per mechanism.
    #[serde(default)]
    pub users: BTreeMap<String, BTreeMap<Mechanism, ScramCredential>>,
    #[serde(default)]
    pub acls: Vec<AclBinding>,
}

impl SecurityRecord {
    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism)
    }
}
