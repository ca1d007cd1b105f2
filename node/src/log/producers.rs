//! Idempotent producer rules (pure): per producer and partition, the epoch and
//! the last five batches' sequence ranges decide whether a batch is appended,
//! answered as a duplicate with its original offsets, or refused.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many recent batches are remembered per producer and partition; Kafka
/// clients keep at most five requests in flight with idempotence on.
pub const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp: a producer's last activity, for expiry.
    #[serde(default)]
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
    /// The first offset of the producer's open transaction in this
    /// partition, if one is open (Kafka's `currentTxnFirstOffset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_start: Option<i64>,
    /// Transaction markers of this producer written here: a write verified
    /// with the coordinator is appended only if none came since (a marker
    /// in between ended the transaction it was verified for).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub markers: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the batch.
    Append,
    /// Already written: answer with these offsets and write nothing.
    Duplicate(BatchMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer epoch {got} is older than the current epoch {current}")]
    StaleEpoch { got: i16, current: i16 },
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrder { expected: i32, got: i32 },
    #[error("no state for this producer and its first sequence is {got}, not 0")]
    UnknownProducer { got: i32 },
}

/// Sequence numbers wrap from i32::MAX to 0.
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Last sequence of a batch starting at `first` with `last_offset_delta`.
pub fn last_seq(first: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(first) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Decides what to do with a batch from `epoch` covering `first..=last`.
pub fn check(
    entry: Option<&ProducerEntry>,
    epoch: i16,
    first: i32,
    last: i32,
) -> Result<Verdict, SequenceError> {
    let Some(e) = entry else {
        return if first == 0 {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::UnknownProducer { got: first })
        };
    };
    if epoch < e.epoch {
        return Err(SequenceError::StaleEpoch {
            got: epoch,
            current: e.epoch,
        });
    }
    if epoch > e.epoch {
        // A new epoch starts its sequences again at zero.
        return if first == 0 {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: first,
            })
        };
    }
    if let Some(dup) = e
        .batches
        .iter()
        .find(|b| b.first_seq == first && b.last_seq == last)
    {
        return Ok(Verdict::Duplicate(*dup));
    }
    let expected = e.batches.back().map(|b| next_seq(b.last_seq)).unwrap_or(0);
    if first != expected {
        return Err(SequenceError::OutOfOrder {
            expected,
            got: first,
        });
    }
    Ok(Verdict::Append)
}

/// A batch of an idempotent producer that this leader refused with a
/// retriable error (not leading, fenced, too few in-sync replicas) without
/// writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub epoch: i16,
    pub first_seq: i32,
}

/// Whether a sequence error is only the gap a refused batch left: the batch
/// expected next is exactly the one this leader just refused. Such a batch
/// is answered with the refusal's retriable error, not
/// OUT_OF_ORDER_SEQUENCE_NUMBER: the client then retries both in order
/// under the same epoch, where an out-of-order answer makes librdkafka bump
/// its epoch and send again batches that may already be in the log, which
/// no broker can recognise across epochs (confluentinc/librdkafka#4953).
pub fn gap_left_by(err: &SequenceError, epoch: i16, refused: Option<Refusal>) -> bool {
    let Some(r) = refused else { return false };
    let expected = match err {
        SequenceError::OutOfOrder { expected, got } if got != expected => *expected,
        SequenceError::UnknownProducer { .. } => 0,
        _ => return false,
    };
    r.epoch == epoch && r.first_seq == expected
}

/// When the producer last wrote, by its latest batch's timestamp.
pub fn last_timestamp(entry: &ProducerEntry) -> i64 {
    entry.batches.back().map(|b| b.max_timestamp).unwrap_or(-1)
}

/// The entry after appending `batch` under `epoch`.
pub fn record(entry: Option<ProducerEntry>, epoch: i16, batch: BatchMeta) -> ProducerEntry {
    let mut e = match entry {
        Some(e) if e.epoch == epoch => e,
        Some(e) => ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            txn_start: None,
            markers: e.markers,
        },
        None => ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            txn_start: None,
            markers: 0,
        },
    };
    e.batches.push_back(batch);
    while e.batches.len() > REMEMBERED_BATCHES {
        e.batches.pop_front();
    }
    e
}

/// A transaction marker (or a coordinator's transactional write, which
/// carries no sequence) from `epoch`: only the epoch is checked, as Kafka
/// does; a marker from an older epoch than the partition has seen is stale.
pub fn check_epoch(entry: Option<&ProducerEntry>, epoch: i16) -> Result<(), SequenceError> {
    match entry {
        Some(e) if epoch < e.epoch => Err(SequenceError::StaleEpoch {
            got: epoch,
            current: e.epoch,
        }),
        _ => Ok(()),
    }
}

/// The entry after a batch without sequences from `epoch`: a newer epoch
/// starts its sequences again, the same epoch keeps them.
pub fn record_epoch(entry: Option<ProducerEntry>, epoch: i16) -> ProducerEntry {
    match entry {
        Some(e) if e.epoch == epoch => e,
        prev => ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            txn_start: prev.as_ref().and_then(|p| p.txn_start),
            markers: prev.map_or(0, |p| p.markers),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(first: i32, n: i32, base: i64) -> BatchMeta {
        BatchMeta {
            first_seq: first,
            last_seq: last_seq(first, n - 1),
            base_offset: base,
            last_offset: base + i64::from(n) - 1,
            max_timestamp: base,
        }
    }

    #[test]
    fn first_batch_must_start_at_zero() {
        assert_eq!(check(None, 0, 0, 4), Ok(Verdict::Append));
        assert_eq!(
            check(None, 0, 5, 9),
            Err(SequenceError::UnknownProducer { got: 5 })
        );
    }

    #[test]
    fn duplicates_answer_with_the_original_offsets() {
        let e = record(None, 0, meta(0, 5, 100));
        let e = record(Some(e), 0, meta(5, 5, 200));
        assert_eq!(
            check(Some(&e), 0, 0, 4),
            Ok(Verdict::Duplicate(meta(0, 5, 100)))
        );
        assert_eq!(
            check(Some(&e), 0, 5, 9),
            Ok(Verdict::Duplicate(meta(5, 5, 200)))
        );
        assert_eq!(check(Some(&e), 0, 10, 12), Ok(Verdict::Append));
        assert_eq!(
            check(Some(&e), 0, 11, 12),
            Err(SequenceError::OutOfOrder {
                expected: 10,
                got: 11
            })
        );
    }

    #[test]
    fn epochs_fence_and_reset() {
        let e = record(None, 3, meta(0, 5, 0));
        assert_eq!(
            check(Some(&e), 2, 5, 9),
            Err(SequenceError::StaleEpoch { got: 2, current: 3 })
        );
        assert_eq!(check(Some(&e), 4, 0, 1), Ok(Verdict::Append));
        assert_eq!(
            check(Some(&e), 4, 5, 6),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        let e = record(Some(e), 4, meta(0, 2, 10));
        assert_eq!(e.batches.len(), 1);
    }

    #[test]
    fn only_the_gap_a_refused_batch_left_is_excused() {
        let refused = Some(Refusal {
            epoch: 0,
            first_seq: 10,
        });
        let gap = SequenceError::OutOfOrder {
            expected: 10,
            got: 15,
        };
        assert!(gap_left_by(&gap, 0, refused));
        // Another epoch, another gap, no refusal: out of order as before.
        assert!(!gap_left_by(&gap, 1, refused));
        let other = SequenceError::OutOfOrder {
            expected: 5,
            got: 15,
        };
        assert!(!gap_left_by(&other, 0, refused));
        assert!(!gap_left_by(&gap, 0, None));
        // A producer whose first batch was refused.
        let first = Some(Refusal {
            epoch: 3,
            first_seq: 0,
        });
        assert!(gap_left_by(
            &SequenceError::UnknownProducer { got: 4 },
            3,
            first
        ));
        assert!(!gap_left_by(
            &SequenceError::StaleEpoch { got: 2, current: 3 },
            3,
            first
        ));
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(last_seq(i32::MAX - 1, 3), 1);
        let e = record(None, 0, meta(i32::MAX - 4, 5, 0));
        assert_eq!(check(Some(&e), 0, 0, 3), Ok(Verdict::Append));
    }

    proptest! {
        /// Replaying any of the last five batches is a duplicate with its own
        /// offsets; anything else that is not the next sequence is refused.
        #[test]
        fn only_the_next_sequence_appends(sizes in proptest::collection::vec(1i32..50, 1..20), probe in 0i32..2000) {
            let mut entry = None;
            let mut seq = 0i32;
            let mut offset = 0i64;
            let mut all = vec![];
            for n in sizes {
                let m = meta(seq, n, offset);
                prop_assert_eq!(check(entry.as_ref(), 0, m.first_seq, m.last_seq), Ok(Verdict::Append));
                entry = Some(record(entry, 0, m));
                all.push(m);
                seq = next_seq(m.last_seq);
                offset = m.last_offset + 1;
            }
            let e = entry.unwrap();
            for m in all.iter().rev().take(REMEMBERED_BATCHES) {
                prop_assert_eq!(check(Some(&e), 0, m.first_seq, m.last_seq), Ok(Verdict::Duplicate(*m)));
            }
            let is_recent = all.iter().rev().take(REMEMBERED_BATCHES).any(|m| m.first_seq == probe);
            if probe != seq && !is_recent {
                prop_assert!(check(Some(&e), 0, probe, probe).is_err());
            }
        }
    }
}
