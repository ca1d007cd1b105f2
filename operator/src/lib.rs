//! The operator's room: Kubernetes glue around the shared controller.
//!
//! One replica at a time leads, elected through the `<cluster>-controller`
//! lock (a Lease; [`sluice_coord::elector`]). The leader runs the cluster's
//! controller ([`sluice_coord::controller`]: leaders, ISR, placement,
//! reassignment, topics declared with kubectl), keeps the storage nodes'
//! StatefulSet and its companions as [`cluster`] describes them, and writes
//! each `Topic`'s status ([`status`]); it also looks after
//! `ConsumerGroup`s ([`groups`], over the Kafka protocol: [`kafka`]) and
//! rolls the nodes onto a new template one at a time ([`roll`]) and scales
//! them, shrinking only once the nodes that go are drained ([`scale`]).
//! Nothing here decides what a node decides for itself; the rules live in
//! `sluice-api` and `sluice-coord`.

pub mod certs;
pub mod cluster;
pub mod config;
#[cfg(test)]
mod fixtures;
pub mod groups;
pub mod kafka;
pub mod metrics;
pub mod roll;
pub mod run;
pub mod scale;
pub mod status;
pub mod tls;
pub mod users;
