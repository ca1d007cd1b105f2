//! Sluice's shared cluster rules, as pure functions.
//!
//! Where replicas go ([`placement`]), who leads a partition ([`election`]),
//! who is in sync and how far consumers may read ([`isr`]). The same rules
//! run in the operator and in the in-memory controller of `sluice dev`, so
//! a laptop cluster and a Kubernetes cluster decide alike. Nothing here does
//! I/O or reads a clock: time comes in as arguments.
//!
//! The `Topic` and `ConsumerGroup` custom resource types join this crate with
//! the operator.

pub mod election;
pub mod isr;
pub mod placement;
pub mod reassign;
