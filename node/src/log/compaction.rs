//! Log compaction rules, apart from any I/O: which records a cleaning pass
//! keeps, when a partition is due for a pass, and when a tombstone may go.
//!
//! A compacted partition has a *clean* part (below `first_dirty`, at most
//! one record per key after the last pass) and a *dirty* part. A pass maps
//! every key of the dirty part to its latest offset, then rewrites the whole
//! log below the dirty part's end keeping, for each key, only that record.
//! Offsets never move: a batch keeps the offsets of the records it keeps,
//! and what went leaves a gap.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bytes an entry of the offset map is counted as beyond its key.
pub const MAP_ENTRY_OVERHEAD: usize = 64;

/// How many past passes are remembered for tombstone expiry.
const PASSES_KEPT: usize = 32;

/// Key to latest offset, for the dirty part of one pass. Bounded in memory
/// (`log.cleaner.dedupe.buffer.size`): when full, the pass ends where the
/// map stopped, and the rest waits for the next pass.
#[derive(Debug)]
pub struct OffsetMap {
    map: HashMap<Bytes, i64>,
    bytes: usize,
    capacity: usize,
}

impl OffsetMap {
    pub fn new(capacity_bytes: usize) -> OffsetMap {
        OffsetMap {
            map: HashMap::new(),
            bytes: 0,
            capacity: capacity_bytes,
        }
    }

    /// Bytes a batch of these keys would add to the map at most.
    pub fn cost(keys: impl Iterator<Item = usize>) -> usize {
        keys.map(|k| k + MAP_ENTRY_OVERHEAD).sum()
    }

    /// Whether `extra` more bytes still fit (an empty map takes anything,
    /// so a pass always makes progress).
    pub fn fits(&self, extra: usize) -> bool {
        self.map.is_empty() || self.bytes + extra <= self.capacity
    }

    pub fn put(&mut self, key: Bytes, offset: i64) {
        let len = key.len();
        if let Some(prev) = self.map.insert(key, offset) {
            debug_assert!(prev <= offset, "offsets are mapped in log order");
        } else {
            self.bytes += len + MAP_ENTRY_OVERHEAD;
        }
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.map.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Whether a pass keeps one record. Records without a key have no place in
/// a compacted log and go (Kafka's cleaner does the same); a record older
/// than its key's latest goes; a tombstone goes once it has been clean for
/// `delete.retention.ms` (it lies below `tombstone_horizon`).
pub fn keep(
    key: Option<&[u8]>,
    is_tombstone: bool,
    offset: i64,
    map: &OffsetMap,
    tombstone_horizon: i64,
) -> bool {
    let Some(key) = key else { return false };
    if map.latest(key).is_some_and(|latest| offset < latest) {
        return false;
    }
    !(is_tombstone && offset < tombstone_horizon)
}

/// Whether the cleaner may remove a transaction marker at `offset`: none of
/// its transaction's records is left in the log (the aborted ones went, the
/// committed ones were superseded) and it has been clean for
/// `delete.retention.ms` (below the tombstone horizon), as Kafka's cleaner
/// removes markers. A marker with records left stays: without it a log
/// rebuilt from its batches would take them for an open transaction.
pub fn marker_removable(offset: i64, records_left: bool, horizon: i64) -> bool {
    !records_left && offset < horizon
}

/// What the cleaner remembers of a partition, stored next to its log and
/// written in the same atomic write as the last rewritten batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Start of the dirty part.
    pub first_dirty: i64,
    /// Bytes of the clean part as the last pass left it (less what
    /// retention removed since).
    pub clean_bytes: i64,
    /// (end, time) of recent passes: the log below `end` was clean at `time`.
    pub passes: Vec<(i64, i64)>,
    /// Lowest offset of a tombstone the last pass kept, if any.
    pub oldest_tombstone: Option<i64>,
}

impl Checkpoint {
    pub fn new(first_dirty: i64) -> Checkpoint {
        Checkpoint {
            first_dirty,
            ..Default::default()
        }
    }

    /// Tombstones below this offset have been clean for at least
    /// `delete_retention_ms` and may go.
    pub fn tombstone_horizon(&self, now_ms: i64, delete_retention_ms: i64) -> i64 {
        self.passes
            .iter()
            .filter(|(_, t)| t.saturating_add(delete_retention_ms) <= now_ms)
            .map(|(end, _)| *end)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// When the oldest kept tombstone may go: the first pass that made it
    /// clean, plus `delete_retention_ms`.
    pub fn tombstones_due_at(&self, delete_retention_ms: i64) -> Option<i64> {
        let oldest = self.oldest_tombstone?;
        self.passes
            .iter()
            .filter(|(end, _)| *end > oldest)
            .map(|(_, t)| t.saturating_add(delete_retention_ms))
            .min()
    }

    /// Records a finished pass: everything below `end` is clean now.
    pub fn passed(
        &mut self,
        end: i64,
        now_ms: i64,
        clean_bytes: i64,
        oldest_tombstone: Option<i64>,
    ) {
        self.first_dirty = end;
        self.clean_bytes = clean_bytes;
        self.oldest_tombstone = oldest_tombstone;
        self.passes.push((end, now_ms));
        // Forgetting the oldest pass only makes tombstones wait longer.
        if self.passes.len() > PASSES_KEPT {
            self.passes.remove(0);
        }
    }

    /// The log start moved to `start`, taking `removed` bytes off the front
    /// (retention, DeleteRecords): they count against the clean part first.
    pub fn start_moved(&mut self, start: i64, removed: i64) {
        self.clean_bytes = (self.clean_bytes - removed).max(0);
        if start > self.first_dirty {
            self.first_dirty = start;
            self.clean_bytes = 0;
        }
        if self.oldest_tombstone.is_some_and(|t| t < start) {
            self.oldest_tombstone = None;
        }
    }

    /// The log lost records at or above `end` (truncation) or everything
    /// (reset): whatever was clean is cleaned again from `start`.
    pub fn forget(&mut self, start: i64) {
        *self = Checkpoint::new(start);
    }
}

/// Why a partition is due for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The dirty part is at least `min.cleanable.dirty.ratio` of the log.
    DirtyRatio,
    /// A dirty record is older than `max.compaction.lag.ms`.
    MaxLag,
    /// A kept tombstone has been clean for `delete.retention.ms`.
    Tombstones,
}

/// The knobs of one topic's compaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub delete_retention_ms: i64,
}

/// The share of a log that is dirty.
pub fn dirty_ratio(total_bytes: i64, clean_bytes: i64) -> f64 {
    if total_bytes <= 0 {
        return 0.0;
    }
    (total_bytes - clean_bytes).max(0) as f64 / total_bytes as f64
}

/// Whether a partition is due, given its sizes, the timestamp of its first
/// dirty batch (`None` when nothing is dirty) and its checkpoint.
pub fn due(
    policy: &Policy,
    total_bytes: i64,
    cp: &Checkpoint,
    first_dirty_timestamp: Option<i64>,
    now_ms: i64,
) -> Option<Due> {
    if let Some(ts) = first_dirty_timestamp {
        if dirty_ratio(total_bytes, cp.clean_bytes) >= policy.min_cleanable_dirty_ratio
            && total_bytes > cp.clean_bytes
        {
            return Some(Due::DirtyRatio);
        }
        if ts <= now_ms.saturating_sub(policy.max_compaction_lag_ms) {
            return Some(Due::MaxLag);
        }
    }
    match cp.tombstones_due_at(policy.delete_retention_ms) {
        Some(at) if at <= now_ms => Some(Due::Tombstones),
        _ => None,
    }
}

/// Whether a batch may be part of this pass's dirty part: only batches
/// older than `min.compaction.lag.ms` are.
pub fn old_enough(batch_max_timestamp: i64, policy: &Policy, now_ms: i64) -> bool {
    batch_max_timestamp <= now_ms.saturating_sub(policy.min_compaction_lag_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 1_000,
        }
    }

    /// One record of a model log: offset, key, value (None = tombstone).
    type Rec = (i64, Option<u8>, Option<u32>);

    /// A whole pass over a model log, dirty from `first_dirty`.
    fn pass(log: &[Rec], first_dirty: i64, horizon: i64) -> Vec<Rec> {
        let mut map = OffsetMap::new(usize::MAX);
        for (o, k, _) in log.iter().filter(|(o, _, _)| *o >= first_dirty) {
            if let Some(k) = k {
                map.put(Bytes::copy_from_slice(&[*k]), *o);
            }
        }
        log.iter()
            .filter(|(o, k, v)| {
                keep(
                    k.as_ref().map(std::slice::from_ref),
                    v.is_none(),
                    *o,
                    &map,
                    horizon,
                )
            })
            .cloned()
            .collect()
    }

    proptest! {
        /// After passes at any points, the log holds exactly the latest
        /// record of every key (tombstones included while they are young),
        /// at its original offset, in offset order.
        #[test]
        fn passes_keep_the_latest_record_per_key(
            writes in prop::collection::vec((prop::option::weighted(0.95, 0u8..20), prop::option::weighted(0.8, any::<u32>())), 1..300),
            cuts in prop::collection::vec(0usize..300, 0..4),
        ) {
            let full: Vec<Rec> = writes.iter().enumerate().map(|(i, (k, v))| (i as i64, *k, *v)).collect();
            let mut log: Vec<Rec> = Vec::new();
            let mut appended = 0usize;
            let mut cuts = cuts.clone();
            cuts.sort();
            cuts.push(full.len());
            for cut in cuts {
                let cut = cut.clamp(appended, full.len());
                log.extend_from_slice(&full[appended..cut]);
                log = pass(&log, appended as i64, i64::MIN);
                appended = cut;
            }
            let mut latest: std::collections::BTreeMap<u8, Rec> = Default::default();
            for r in &full {
                if let Some(k) = r.1 { latest.insert(k, *r); }
            }
            let mut expected: Vec<Rec> = latest.into_values().collect();
            expected.sort();
            prop_assert_eq!(log, expected);
        }

        /// A pass never drops the latest value of a key unless it is an
        /// expired tombstone, so a reader never sees a key go backwards.
        #[test]
        fn only_expired_tombstones_lose_their_key(
            writes in prop::collection::vec((0u8..10, prop::option::weighted(0.7, any::<u32>())), 1..200),
            horizon in 0i64..200,
        ) {
            let log: Vec<Rec> = writes.iter().enumerate().map(|(i, (k, v))| (i as i64, Some(*k), *v)).collect();
            let out = pass(&log, 0, horizon);
            for k in 0u8..10 {
                let last = log.iter().rev().find(|r| r.1 == Some(k));
                let kept = out.iter().find(|r| r.1 == Some(k));
                match last {
                    None => prop_assert!(kept.is_none()),
                    Some(r) if r.2.is_none() && r.0 < horizon => prop_assert!(kept.is_none()),
                    Some(r) => prop_assert_eq!(kept, Some(r)),
                }
            }
        }
    }

    #[test]
    fn keyless_records_go() {
        let map = OffsetMap::new(1 << 20);
        assert!(!keep(None, false, 5, &map, i64::MIN));
        assert!(keep(Some(b"k"), false, 5, &map, i64::MIN));
    }

    #[test]
    fn the_map_is_bounded_but_takes_one_batch() {
        let mut m = OffsetMap::new(100);
        assert!(m.fits(1_000), "an empty map takes anything");
        m.put(Bytes::from_static(b"a"), 1);
        assert!(!m.fits(100));
        assert!(m.fits(100 - 65));
        m.put(Bytes::from_static(b"a"), 2);
        assert_eq!(m.len(), 1);
        assert_eq!(m.latest(b"a"), Some(2));
    }

    #[test]
    fn tombstones_wait_for_delete_retention_after_their_first_clean_pass() {
        let mut cp = Checkpoint::new(0);
        cp.passed(100, 10_000, 500, Some(40));
        assert_eq!(cp.tombstone_horizon(10_500, 1_000), i64::MIN);
        assert_eq!(cp.tombstones_due_at(1_000), Some(11_000));
        cp.passed(200, 10_800, 600, Some(40));
        // Below 100 clean since 10,000; below 200 only since 10,800.
        assert_eq!(cp.tombstone_horizon(11_000, 1_000), 100);
        assert_eq!(cp.tombstone_horizon(11_800, 1_000), 200);
        assert_eq!(
            due(&policy(), 1_000, &cp, None, 11_000),
            Some(Due::Tombstones)
        );
    }

    #[test]
    fn due_by_ratio_or_by_age() {
        let p = Policy {
            max_compaction_lag_ms: 60_000,
            ..policy()
        };
        let mut cp = Checkpoint::new(0);
        cp.passed(10, 0, 800, None);
        // 20% dirty: not by ratio; by age once the first dirty batch is old.
        assert_eq!(due(&p, 1_000, &cp, Some(50_000), 100_000), None);
        assert_eq!(
            due(&p, 1_000, &cp, Some(30_000), 100_000),
            Some(Due::MaxLag)
        );
        assert_eq!(
            due(&p, 2_000, &cp, Some(50_000), 100_000),
            Some(Due::DirtyRatio)
        );
        assert_eq!(due(&p, 2_000, &cp, None, 100_000), None);
        assert!(old_enough(1_000, &p, 1_000));
        assert!(!old_enough(
            1_000,
            &Policy {
                min_compaction_lag_ms: 10,
                ..p
            },
            1_005
        ));
    }

    #[test]
    fn retention_eats_the_clean_part_first() {
        let mut cp = Checkpoint::new(0);
        cp.passed(100, 0, 500, Some(10));
        cp.start_moved(50, 200);
        assert_eq!((cp.first_dirty, cp.clean_bytes), (100, 300));
        assert_eq!(cp.oldest_tombstone, None);
        cp.start_moved(150, 400);
        assert_eq!((cp.first_dirty, cp.clean_bytes), (150, 0));
    }

    #[test]
    fn markers_go_once_their_records_are_gone_and_retention_passed() {
        assert!(marker_removable(5, false, 10));
        assert!(
            !marker_removable(5, true, 10),
            "records of its transaction are left"
        );
        assert!(
            !marker_removable(10, false, 10),
            "not yet clean for delete.retention.ms"
        );
    }
}
