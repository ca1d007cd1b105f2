//! Sluice's custom resources and shared cluster rules.
//!
//! [`v1alpha1`]: the `Topic` and `ConsumerGroup` custom resources (the YAML
//! in `crds/` is generated from them). [`topic_config`]: every topic config
//! and its checks.
//!
//! Where replicas go ([`placement`]) and how they move ([`reassign`],
//! [`rebalance`]), who leads a partition ([`election`]),
//! who is in sync and how far consumers may read ([`isr`]). The same rules
//! run in the operator and in the in-memory controller of `sluice dev`, so
//! a laptop cluster and a Kubernetes cluster decide alike. Nothing here does
//! I/O or reads a clock: time comes in as arguments.
//!

pub mod election;
pub mod isr;
pub mod placement;
pub mod reassign;
pub mod rebalance;
pub mod topic_config;
pub mod v1alpha1;

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic holding the transaction coordinators' state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
