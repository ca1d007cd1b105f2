//! The transaction room: Kafka's transactions, from the transactional id's
//! state machine ([`state`], pure) to the transaction coordinator
//! ([`coordinator`]: InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, timeouts, recovery after a
//! failover, its state in `__transaction_state`) and the markers it has
//! partition leaders write ([`markers`], in process or over the nodes'
//! gRPC). The per-partition side (open transactions, the last stable
//! offset, aborted ranges) is [`crate::log::txn_index`]; offsets committed
//! in a transaction wait in the group coordinator for their marker.

pub mod coordinator;
pub mod markers;
pub mod state;

pub use coordinator::Coordinator;

/// Transaction coordinator settings, named after Kafka's.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`.
    pub state_topic_partitions: i32,
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask.
    pub max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_check_interval_ms: u64,
    /// `transactional.id.expiration.ms`: a transactional id without a
    /// transaction for this long is forgotten.
    pub id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            state_topic_partitions: 50,
            max_timeout_ms: 900_000,
            abort_check_interval_ms: 10_000,
            id_expiration_ms: 604_800_000,
        }
    }
}
