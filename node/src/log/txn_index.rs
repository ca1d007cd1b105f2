//! A partition's transactions, as pure logic: which producers have an open
//! transaction and where it began (the last stable offset, LSO, stops
//! before the first of them), and which transactions were aborted (the
//! index read_committed fetches return so clients drop those records).
//! Built from the log (transactional batches and control markers) as it is
//! appended, replicated or recovered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An aborted transaction: its producer, its first offset, and the offset
/// of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnIndex {
    /// Open transactions: producer id -> first offset.
    open: BTreeMap<i64, i64>,
    /// Aborted transactions in marker order.
    aborted: Vec<AbortedTxn>,
}

/// What one batch of a producer does to the partition's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    /// Transactional data: opens the producer's transaction.
    Data,
    /// A commit or abort marker: ends it.
    Marker { commit: bool },
}

/// The event of a stored or appended batch, if it has one.
pub fn event_of(h: &super::batch::Header<'_>, batch: &[u8]) -> Option<TxnEvent> {
    if h.producer_id() < 0 || !h.is_transactional() {
        return None;
    }
    if h.is_control() {
        return super::batch::marker_of(batch).map(|commit| TxnEvent::Marker { commit });
    }
    Some(TxnEvent::Data)
}

/// The state to go back to when a write that changed the index failed.
#[derive(Debug, Clone)]
pub struct Mark {
    open: BTreeMap<i64, i64>,
    aborted: usize,
}

impl TxnIndex {
    /// The index as stored: open transactions (producer id, first offset)
    /// and aborted ones in marker order.
    pub fn restore(
        open: impl IntoIterator<Item = (i64, i64)>,
        mut aborted: Vec<AbortedTxn>,
    ) -> Self {
        aborted.sort_by_key(|a| a.last_offset);
        TxnIndex {
            open: open.into_iter().collect(),
            aborted,
        }
    }

    /// Applies one batch's event at `base_offset`; returns the transaction
    /// it aborted, to be stored.
    pub fn apply(
        &mut self,
        producer_id: i64,
        event: TxnEvent,
        base_offset: i64,
    ) -> Option<AbortedTxn> {
        match event {
            TxnEvent::Data => {
                self.on_data(producer_id, base_offset);
                None
            }
            TxnEvent::Marker { commit } => self.on_marker(producer_id, commit, base_offset),
        }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            open: self.open.clone(),
            aborted: self.aborted.len(),
        }
    }

    pub fn rollback(&mut self, mark: Mark) {
        self.open = mark.open;
        self.aborted.truncate(mark.aborted);
    }

    /// The first offset of the earliest open transaction.
    pub fn first_open(&self) -> Option<i64> {
        self.open.values().copied().min()
    }

    /// Keeps only aborted transactions whose marker is below `end` and
    /// takes the open ones from `open` (a rebuild after truncation).
    pub fn rebuilt_below(&self, end: i64, open: impl IntoIterator<Item = (i64, i64)>) -> Self {
        TxnIndex {
            open: open.into_iter().collect(),
            aborted: self
                .aborted
                .iter()
                .filter(|a| a.last_offset < end)
                .copied()
                .collect(),
        }
    }

    /// A transactional batch at `base_offset`: it opens the producer's
    /// transaction here unless one is open already.
    pub fn on_data(&mut self, producer_id: i64, base_offset: i64) {
        self.open.entry(producer_id).or_insert(base_offset);
    }

    /// A control marker at `offset` ends the producer's open transaction;
    /// an abort is remembered. Returns the aborted transaction, if any.
    pub fn on_marker(&mut self, producer_id: i64, commit: bool, offset: i64) -> Option<AbortedTxn> {
        let first = self.open.remove(&producer_id)?;
        if commit {
            return None;
        }
        let a = AbortedTxn {
            producer_id,
            first_offset: first,
            last_offset: offset,
        };
        self.aborted.push(a);
        Some(a)
    }

    /// The last stable offset: the high watermark, or the first offset of
    /// the earliest open transaction if that is lower.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.first_open()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The first offset of the producer's open transaction.
    pub fn open_since(&self, producer_id: i64) -> Option<i64> {
        self.open.get(&producer_id).copied()
    }

    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open.iter().map(|(p, f)| (*p, *f))
    }

    /// Aborted transactions a fetch of `[from, to)` must report: those
    /// whose records overlap the range.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly before the log start.
    pub fn trim_before(&mut self, log_start: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    /// The log was truncated to `end` (a follower's divergent tail): what
    /// began at or after it is gone, and an abort whose marker is gone
    /// reopens its transaction.
    pub fn truncate_to(&mut self, end: i64) {
        self.open.retain(|_, first| *first < end);
        let mut reopened = vec![];
        self.aborted.retain(|a| {
            if a.last_offset < end {
                true
            } else {
                if a.first_offset < end {
                    reopened.push((a.producer_id, a.first_offset));
                }
                false
            }
        });
        for (p, first) in reopened {
            self.open.entry(p).or_insert(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn open_transactions_hold_back_the_stable_offset() {
        let mut i = TxnIndex::default();
        assert_eq!(i.last_stable_offset(10), 10);
        i.on_data(1, 3);
        i.on_data(2, 5);
        i.on_data(1, 6);
        assert_eq!(i.last_stable_offset(10), 3);
        assert_eq!(i.last_stable_offset(2), 2);
        assert_eq!(i.on_marker(1, true, 7), None);
        assert_eq!(i.last_stable_offset(10), 5);
        let a = i.on_marker(2, false, 8).unwrap();
        assert_eq!(
            a,
            AbortedTxn {
                producer_id: 2,
                first_offset: 5,
                last_offset: 8
            }
        );
        assert_eq!(i.last_stable_offset(10), 10);
        assert_eq!(
            i.on_marker(2, false, 9),
            None,
            "a marker without an open transaction"
        );
        assert_eq!(i.aborted_in(0, 5), vec![]);
        assert_eq!(i.aborted_in(0, 6), vec![a]);
        assert_eq!(i.aborted_in(8, 20), vec![a]);
        assert_eq!(i.aborted_in(9, 20), vec![]);
        i.trim_before(9);
        assert_eq!(i.aborted_in(0, 20), vec![]);
    }

    #[test]
    fn truncation_forgets_what_is_gone_and_reopens_cut_aborts() {
        let mut i = TxnIndex::default();
        i.on_data(1, 0);
        i.on_marker(1, false, 4);
        i.on_data(2, 6);
        i.truncate_to(4);
        assert_eq!(i.open_since(1), Some(0));
        assert_eq!(i.open_since(2), None);
        assert_eq!(i.aborted_in(0, 100), vec![]);
    }

    proptest! {
        /// The LSO never passes the high watermark or the first offset of an
        /// open transaction, and every aborted range is reported by any
        /// fetch that overlaps it.
        #[test]
        fn stable_offset_and_abort_ranges_hold(events in proptest::collection::vec((0i64..4, 0u8..3), 1..80)) {
            let mut i = TxnIndex::default();
            let mut offset = 0i64;
            for (pid, kind) in events {
                match kind {
                    0 | 1 => i.on_data(pid, offset),
                    _ => { i.on_marker(pid, offset % 2 == 0, offset); }
                }
                offset += 1;
                let lso = i.last_stable_offset(offset);
                prop_assert!(lso <= offset);
                for (_, first) in i.open_transactions() {
                    prop_assert!(lso <= first);
                }
            }
            for a in i.aborted_in(0, offset) {
                prop_assert!(a.first_offset <= a.last_offset);
                for from in 0..offset {
                    let overlaps = a.last_offset >= from;
                    prop_assert_eq!(i.aborted_in(from, offset).contains(&a), overlaps);
                }
            }
        }
    }
}
