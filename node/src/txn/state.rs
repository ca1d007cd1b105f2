//! Kafka's transaction state machine for one transactional id, as pure
//! logic: what InitProducerId, AddPartitionsToTxn, EndTxn, a finished
//! marker round and the timeout do to a transaction's metadata, and what
//! the coordinator must do next. Time comes in as milliseconds; nothing
//! here does I/O.
//!
//! States follow Kafka: Empty -> Ongoing (a partition was added) ->
//! PrepareCommit | PrepareAbort (EndTxn, or the timeout, which aborts) ->
//! CompleteCommit | CompleteAbort (every marker written) -> Ongoing again
//! with the next transaction. A producer that calls InitProducerId gets a
//! bumped epoch, which fences any older instance; an open transaction is
//! aborted first.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
}

impl TxnState {
    pub fn name(&self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
        }
    }

    /// Markers are being written: nothing else may change the transaction.
    pub fn preparing(&self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's metadata, as kept in `__transaction_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions written in the current transaction (including the
    /// `__consumer_offsets` partition of a group whose offsets it commits).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the current transaction began (its first partition), in ms.
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The epoch before the last bump (-1 if none): a KIP-360 client that
    /// retries InitProducerId with it (the answer was lost, or the
    /// coordinator aborted its transaction) gets the current epoch.
    #[serde(default = "no_epoch")]
    pub last_epoch: i16,
}

fn no_epoch() -> i16 {
    -1
}

/// Why a transactional request is refused, as Kafka answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Markers of the previous transaction are still being written: retry.
    #[error("a previous transaction is still completing")]
    ConcurrentTransactions,
    /// A newer producer with the same transactional id took over.
    #[error("a newer producer with this transactional id fenced this one")]
    ProducerFenced,
    /// The producer id is not the one the transactional id has.
    #[error("the producer id does not belong to this transactional id")]
    InvalidProducerIdMapping,
    /// The request does not fit the transaction's state.
    #[error("the request is not valid in the transaction's current state")]
    InvalidTxnState,
    /// transaction.timeout.ms is not positive or above the broker's maximum.
    #[error("the transaction timeout is not positive or above the maximum")]
    InvalidTransactionTimeout,
}

impl TxnError {
    pub fn code(&self) -> ResponseError {
        match self {
            TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
            TxnError::ProducerFenced => ResponseError::ProducerFenced,
            TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
            TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
            TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
        }
    }
}

/// Markers to write: one control batch per partition, then the
/// transaction completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    pub commit: bool,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<(String, i32)>,
}

/// What InitProducerId leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Persist this metadata, then answer with its producer id and epoch.
    Ready(TxnMetadata),
    /// An open transaction must be aborted first (its producer is fenced
    /// by the bumped epoch): persist, write the markers, and answer
    /// CONCURRENT_TRANSACTIONS so the client retries.
    AbortFirst(TxnMetadata, Markers),
}

/// What EndTxn leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Persist the Prepare state, write the markers, then complete.
    Prepare(TxnMetadata, Markers),
    /// Nothing was written in the transaction: persist the completed state.
    Complete(TxnMetadata),
    /// A retry of an EndTxn that already completed: answer success.
    AlreadyDone,
}

/// The epoch after `epoch`, or a fresh producer id when it is exhausted.
fn bump(producer_id: i64, epoch: i16, new_producer_id: impl FnOnce() -> i64) -> (i64, i16) {
    if epoch >= i16::MAX - 1 {
        (new_producer_id(), 0)
    } else {
        (producer_id, epoch + 1)
    }
}

fn markers(m: &TxnMetadata, commit: bool) -> Markers {
    Markers {
        commit,
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        partitions: m.partitions.iter().cloned().collect(),
    }
}

/// InitProducerId with a transactional id. `expected` is the producer id
/// and epoch a client that already had one sends (KIP-360): it must be the
/// current one, or the client was fenced.
pub fn init(
    existing: Option<&TxnMetadata>,
    transactional_id: &str,
    timeout_ms: i32,
    max_timeout_ms: i32,
    expected: Option<(i64, i16)>,
    now: i64,
    new_producer_id: impl FnOnce() -> i64,
) -> Result<Init, TxnError> {
    if timeout_ms <= 0 || timeout_ms > max_timeout_ms {
        return Err(TxnError::InvalidTransactionTimeout);
    }
    let Some(m) = existing.filter(|m| m.state != TxnState::Dead) else {
        return Ok(Init::Ready(TxnMetadata {
            transactional_id: transactional_id.to_string(),
            producer_id: new_producer_id(),
            producer_epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
            updated_ms: now,
            last_epoch: -1,
        }));
    };
    if let Some((pid, epoch)) = expected {
        let retry = pid == m.producer_id && epoch == m.last_epoch && m.last_epoch >= 0;
        let settled = matches!(
            m.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        );
        if retry && settled {
            // A retry of an InitProducerId that already bumped the epoch
            // (or a client whose transaction the coordinator aborted): the
            // current epoch, unchanged.
            return Ok(Init::Ready(m.clone()));
        }
        if pid != m.producer_id || (epoch != m.producer_epoch && !retry) {
            return Err(TxnError::ProducerFenced);
        }
    }
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        TxnState::Ongoing => {
            let (next, mk) = fence_and_abort(m, now);
            Ok(Init::AbortFirst(next, mk))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort | TxnState::Dead => {
            let (producer_id, producer_epoch) =
                bump(m.producer_id, m.producer_epoch, new_producer_id);
            Ok(Init::Ready(TxnMetadata {
                producer_id,
                producer_epoch,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                started_ms: -1,
                updated_ms: now,
                last_epoch: if producer_id == m.producer_id {
                    m.producer_epoch
                } else {
                    -1
                },
                ..m.clone()
            }))
        }
    }
}

/// The producer id and epoch of a request against the metadata.
pub fn verify(m: &TxnMetadata, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
    if m.state == TxnState::Dead || producer_id != m.producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if epoch != m.producer_epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(())
}

/// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's offsets
/// partition): the new metadata, or `None` when nothing changes.
pub fn add_partitions(
    m: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    partitions: impl IntoIterator<Item = (String, i32)>,
    now: i64,
) -> Result<Option<TxnMetadata>, TxnError> {
    verify(m, producer_id, epoch)?;
    if m.state.preparing() {
        return Err(TxnError::ConcurrentTransactions);
    }
    let mut next = m.clone();
    if m.state != TxnState::Ongoing {
        next.state = TxnState::Ongoing;
        next.partitions.clear();
        next.started_ms = now;
    }
    let before = next.partitions.len();
    next.partitions.extend(partitions);
    if next.state == m.state && next.partitions.len() == before {
        return Ok(None);
    }
    next.updated_ms = now;
    Ok(Some(next))
}

/// EndTxn: commit or abort the open transaction.
pub fn end(
    m: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now: i64,
) -> Result<End, TxnError> {
    verify(m, producer_id, epoch)?;
    match (m.state, commit) {
        (TxnState::Ongoing, _) => {
            let mut next = m.clone();
            next.updated_ms = now;
            if next.partitions.is_empty() {
                next.state = complete_state(commit);
                return Ok(End::Complete(next));
            }
            next.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            let mk = markers(&next, commit);
            Ok(End::Prepare(next, mk))
        }
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(End::AlreadyDone),
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(TxnError::ConcurrentTransactions)
        }
        _ => Err(TxnError::InvalidTxnState),
    }
}

fn complete_state(commit: bool) -> TxnState {
    if commit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    }
}

/// Every marker of a Prepare state is written: the transaction completes.
pub fn complete(m: &TxnMetadata, now: i64) -> TxnMetadata {
    let mut next = m.clone();
    match m.state {
        TxnState::PrepareCommit => next.state = TxnState::CompleteCommit,
        TxnState::PrepareAbort => next.state = TxnState::CompleteAbort,
        _ => return next,
    }
    next.partitions.clear();
    next.updated_ms = now;
    next
}

/// A transaction open longer than its timeout is aborted, and its producer
/// fenced by a bumped epoch (Kafka's transaction.timeout.ms).
pub fn expire(m: &TxnMetadata, now: i64) -> Option<(TxnMetadata, Markers)> {
    if m.state != TxnState::Ongoing || now < m.started_ms.saturating_add(i64::from(m.timeout_ms)) {
        return None;
    }
    Some(fence_and_abort(m, now))
}

/// The open transaction aborted under a bumped epoch: its markers carry the
/// new epoch, so its producer is fenced as soon as the first one lands.
fn fence_and_abort(m: &TxnMetadata, now: i64) -> (TxnMetadata, Markers) {
    let mut next = m.clone();
    if m.producer_epoch < i16::MAX - 1 {
        next.last_epoch = m.producer_epoch;
        next.producer_epoch += 1;
    }
    next.state = TxnState::PrepareAbort;
    next.updated_ms = now;
    let mk = markers(&next, false);
    (next, mk)
}

/// After a coordinator moves (failover, restart), what to finish: a
/// Prepare state's markers are written again (they are idempotent per
/// producer epoch); an open transaction is left to its timeout, as in Kafka.
pub fn recover(m: &TxnMetadata) -> Option<Markers> {
    match m.state {
        TxnState::PrepareCommit => Some(markers(m, true)),
        TxnState::PrepareAbort => Some(markers(m, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: i32 = 900_000;

    fn fresh(now: i64) -> TxnMetadata {
        match init(None, "t", 60_000, MAX, None, now, || 7).unwrap() {
            Init::Ready(m) => m,
            other => panic!("{other:?}"),
        }
    }

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn a_transaction_commits_through_prepare_and_markers() {
        let m = fresh(0);
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (7, 0, TxnState::Empty)
        );
        let m = add_partitions(&m, 7, 0, [tp("a", 0), tp("a", 1)], 10)
            .unwrap()
            .unwrap();
        assert_eq!((m.state, m.started_ms), (TxnState::Ongoing, 10));
        assert_eq!(add_partitions(&m, 7, 0, [tp("a", 0)], 11).unwrap(), None);
        let End::Prepare(p, mk) = end(&m, 7, 0, true, 20).unwrap() else {
            panic!()
        };
        assert_eq!(p.state, TxnState::PrepareCommit);
        assert_eq!(mk.partitions, vec![tp("a", 0), tp("a", 1)]);
        assert!(mk.commit);
        assert_eq!(
            add_partitions(&p, 7, 0, [tp("b", 0)], 21),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            end(&p, 7, 0, true, 21),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(end(&p, 7, 0, false, 21), Err(TxnError::InvalidTxnState));
        let c = complete(&p, 30);
        assert_eq!((c.state, c.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(end(&c, 7, 0, true, 31), Ok(End::AlreadyDone));
        assert_eq!(end(&c, 7, 0, false, 31), Err(TxnError::InvalidTxnState));
        // The next transaction starts with the next partition.
        let n = add_partitions(&c, 7, 0, [tp("b", 0)], 40).unwrap().unwrap();
        assert_eq!(
            (n.state, n.partitions.len(), n.started_ms),
            (TxnState::Ongoing, 1, 40)
        );
    }

    #[test]
    fn a_second_producer_fences_the_first_and_aborts_its_transaction() {
        let m = add_partitions(&fresh(0), 7, 0, [tp("a", 0)], 1)
            .unwrap()
            .unwrap();
        let Init::AbortFirst(p, mk) = init(Some(&m), "t", 60_000, MAX, None, 5, || 99).unwrap()
        else {
            panic!()
        };
        assert_eq!((p.state, p.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!((mk.commit, mk.producer_epoch), (false, 1));
        // The old producer is fenced from here on.
        assert_eq!(end(&p, 7, 0, true, 6), Err(TxnError::ProducerFenced));
        // The new one retries until the abort completed, then gets epoch 2.
        assert_eq!(
            init(Some(&p), "t", 60_000, MAX, None, 6, || 99),
            Err(TxnError::ConcurrentTransactions)
        );
        let Init::Ready(r) =
            init(Some(&complete(&p, 7)), "t", 60_000, MAX, None, 8, || 99).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (r.producer_id, r.producer_epoch, r.state),
            (7, 2, TxnState::Empty)
        );
        assert_eq!(
            add_partitions(&r, 7, 1, [tp("a", 0)], 9),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            add_partitions(&r, 8, 2, [tp("a", 0)], 9),
            Err(TxnError::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn kip_360_clients_must_present_the_current_epoch() {
        let m = fresh(0);
        assert!(init(Some(&m), "t", 60_000, MAX, Some((7, 0)), 1, || 9).is_ok());
        assert_eq!(
            init(Some(&m), "t", 60_000, MAX, Some((7, 3)), 1, || 9),
            Err(TxnError::ProducerFenced)
        );
    }

    #[test]
    fn an_exhausted_epoch_moves_to_a_new_producer_id() {
        let mut m = fresh(0);
        m.producer_epoch = i16::MAX - 1;
        let Init::Ready(r) = init(Some(&m), "t", 60_000, MAX, None, 1, || 42).unwrap() else {
            panic!()
        };
        assert_eq!((r.producer_id, r.producer_epoch), (42, 0));
    }

    #[test]
    fn timeouts_abort_and_fence_and_bad_timeouts_are_refused() {
        let m = add_partitions(&fresh(0), 7, 0, [tp("a", 0)], 100)
            .unwrap()
            .unwrap();
        assert_eq!(expire(&m, 60_099), None);
        let (p, mk) = expire(&m, 60_100).unwrap();
        assert_eq!(
            (p.state, p.producer_epoch, mk.commit),
            (TxnState::PrepareAbort, 1, false)
        );
        assert_eq!(recover(&p), Some(mk));
        assert_eq!(recover(&m), None);
        assert_eq!(
            init(None, "t", 0, MAX, None, 0, || 1),
            Err(TxnError::InvalidTransactionTimeout)
        );
        assert_eq!(
            init(None, "t", MAX + 1, MAX, None, 0, || 1),
            Err(TxnError::InvalidTransactionTimeout)
        );
    }

    #[test]
    fn ending_an_empty_transaction_is_refused_and_one_without_partitions_completes() {
        let m = fresh(0);
        assert_eq!(end(&m, 7, 0, true, 1), Err(TxnError::InvalidTxnState));
        let mut o = m.clone();
        o.state = TxnState::Ongoing;
        assert!(
            matches!(end(&o, 7, 0, false, 1), Ok(End::Complete(c)) if c.state == TxnState::CompleteAbort)
        );
    }

    #[test]
    fn a_retried_init_with_the_previous_epoch_gets_the_current_one() {
        let retry = |m: &TxnMetadata, epoch: i16, now: i64| match init(
            Some(m),
            "t",
            60_000,
            MAX,
            Some((7, epoch)),
            now,
            || 9,
        ) {
            Ok(Init::Ready(n)) => Ok(n),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let m = retry(&fresh(0), 0, 1).unwrap();
        assert_eq!((m.producer_epoch, m.last_epoch), (1, 0));
        // The answer was lost; the client asks again with epoch 0.
        let r = retry(&m, 0, 2).unwrap();
        assert_eq!(r.producer_epoch, 1, "not bumped again");
        // After a timeout abort, the fenced client recovers the same way.
        let o = add_partitions(&r, 7, 1, [tp("a", 0)], 3).unwrap().unwrap();
        let (p, _) = expire(&o, 100_000).unwrap();
        let c = complete(&p, 100_001);
        assert_eq!(retry(&c, 1, 100_002).unwrap().producer_epoch, 2);
        assert_eq!(retry(&c, 0, 100_002), Err(TxnError::ProducerFenced));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Init,
        Add(u8),
        End(bool),
        Complete,
        Expire(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Init),
            (0u8..4).prop_map(Op::Add),
            any::<bool>().prop_map(Op::End),
            Just(Op::Complete),
            (0u16..2000).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Whatever a producer (using the current id and epoch) and the
        /// clock do: epochs never go back, markers only come out of Prepare
        /// states, and nothing is written while markers are pending.
        #[test]
        fn epochs_only_grow_and_markers_only_leave_prepare_states(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = fresh(0);
            m.timeout_ms = 1000;
            let mut now = 0i64;
            for o in ops {
                now += 10;
                let before = m.clone();
                match o {
                    Op::Init => match init(Some(&m), "t", 1000, MAX, None, now, || m.producer_id + 1) {
                        Ok(Init::Ready(n)) => { prop_assert!(!before.state.preparing()); m = n; }
                        Ok(Init::AbortFirst(n, mk)) => {
                            prop_assert_eq!(before.state, TxnState::Ongoing);
                            prop_assert_eq!(n.state, TxnState::PrepareAbort);
                            prop_assert!(!mk.commit);
                            m = n;
                        }
                        Err(e) => prop_assert_eq!(e, TxnError::ConcurrentTransactions),
                    },
                    Op::Add(p) => match add_partitions(&m, m.producer_id, m.producer_epoch, [tp("a", p.into())], now) {
                        Ok(Some(n)) => m = n,
                        Ok(None) => {}
                        Err(e) => { prop_assert!(before.state.preparing()); prop_assert_eq!(e, TxnError::ConcurrentTransactions); }
                    },
                    Op::End(commit) => match end(&m, m.producer_id, m.producer_epoch, commit, now) {
                        Ok(End::Prepare(n, mk)) => {
                            prop_assert_eq!(before.state, TxnState::Ongoing);
                            prop_assert_eq!(mk.partitions.len(), before.partitions.len());
                            m = n;
                        }
                        Ok(End::Complete(n)) => m = n,
                        Ok(End::AlreadyDone) | Err(_) => {}
                    },
                    Op::Complete => m = complete(&m, now),
                    Op::Expire(dt) => if let Some((n, _)) = expire(&m, now + i64::from(dt)) { m = n; },
                }
                prop_assert!(m.producer_epoch >= before.producer_epoch || m.producer_id != before.producer_id);
                if m.state == TxnState::Ongoing {
                    prop_assert!(!m.partitions.is_empty() || before.state == TxnState::Ongoing);
                }
                if matches!(m.state, TxnState::CompleteCommit | TxnState::CompleteAbort | TxnState::Empty) {
                    prop_assert!(m.partitions.is_empty());
                }
            }
        }
    }
}
