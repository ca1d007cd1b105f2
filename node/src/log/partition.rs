//! One partition's log: append with offset assignment, reads by offset,
//! timestamp lookup and retention, all over the shared [`Store`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use uuid::Uuid;

use super::batch::{self, Header};
use super::compaction::{self, Checkpoint, Due, OffsetMap, Policy};
use super::producers::{self, BatchMeta, ProducerEntry, SequenceError, Verdict};
use super::store::{
    self, batch_key, offset_of_key, partition_prefix, PartitionState, Store, CF_LOG, CF_TSIDX,
    PREFIX_LEN,
};
use super::txn_index::{self, AbortedTxn, TxnIndex};

/// Room in a write batch for what goes beside a record batch: its key, the
/// time index entry, the partition's state, an epoch, producer entries.
const WRITE_BATCH_SLACK: usize = 1024;

/// What each of many replicated batches adds to a write batch beside its
/// bytes: its key and a time index entry.
const PER_BATCH_SLACK: usize = 64;

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker time stamped into the batch, or -1 for CreateTime topics.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// An idempotent producer's retry of a batch already in the log: nothing
    /// was written and the offsets are the original ones.
    pub duplicate: bool,
    /// The leader epoch the append was made in: the batch is the one at
    /// these offsets for as long as this epoch lasts.
    pub leader_epoch: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("replication: {0}")]
    Replication(String),
    /// A transactional write verified with its coordinator found the
    /// producer's transaction ended (a marker) before it could be appended.
    #[error("the producer's transaction ended while this write was verified")]
    TxnEnded,
}

/// The sequence range and offsets of an idempotent producer's batch.
fn batch_meta(h: &Header<'_>) -> BatchMeta {
    let first = h.base_sequence();
    BatchMeta {
        first_seq: first,
        last_seq: producers::last_seq(first, h.last_offset_delta()),
        base_offset: h.base_offset(),
        last_offset: h.last_offset(),
        max_timestamp: h.max_timestamp(),
    }
}

/// A producer's entry after one of its stored batches (idempotence and
/// epoch; the transaction start is the caller's).
fn next_entry(prev: Option<ProducerEntry>, h: &Header<'_>) -> ProducerEntry {
    if h.is_control() {
        let mut e = producers::record_epoch(prev, h.producer_epoch());
        e.markers += 1;
        e
    } else if h.base_sequence() < 0 {
        producers::record_epoch(prev, h.producer_epoch())
    } else {
        producers::record(prev, h.producer_epoch(), batch_meta(h))
    }
}

struct Inner {
    state: PartitionState,
    producers: HashMap<i64, ProducerEntry>,
    /// Leader epoch cache: (epoch, first offset written in it), ascending.
    epochs: Vec<(i32, i64)>,
    /// What the log cleaner knows of this partition.
    cleaner: Checkpoint,
    /// Bumped whenever records below the high watermark may change other
    /// than by the cleaner (truncation, reset): a pass in flight gives up.
    generation: u64,
    /// The partition was deleted: nothing may write to it any more.
    closed: bool,
    /// Open and aborted transactions (the last stable offset and what
    /// read_committed fetches must report).
    txns: TxnIndex,
    /// The high watermark moved in memory since it was last checkpointed
    /// ([`PartitionLog::checkpoint_high_watermark`]).
    hw_dirty: bool,
}

/// Answer to "where does epoch E end in this log" (Kafka's
/// OffsetsForLeaderEpoch): the largest epoch at or below E and the offset
/// where the next epoch starts (the log end for the latest epoch).
pub const UNDEFINED_EPOCH: (i32, i64) = (-1, -1);

/// Batches read for a fetch, exactly as stored.
#[derive(Debug, Default)]
pub struct Read {
    pub records: Bytes,
    pub batches: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

pub struct PartitionLog {
    store: Arc<Store>,
    prefix: [u8; PREFIX_LEN],
    pub partition: i32,
    inner: Mutex<Inner>,
    log_start: AtomicI64,
    log_end: AtomicI64,
    high_watermark: AtomicI64,
    size_bytes: AtomicI64,
    /// The first offset of the earliest open transaction, i64::MAX when
    /// none is open: the last stable offset is the lower of it and the
    /// high watermark.
    first_unstable: AtomicI64,
    /// Woken when the log end or the high watermark moves (appends, a
    /// follower's progress, truncation): what parked fetches of this
    /// partition, and produce requests waiting on its ISR, wait for.
    changed: tokio::sync::Notify,
    /// When `changed` last fired, on `watch::clock_nanos`'s clock: how
    /// long a woken fetch took to answer is measured from it.
    changed_at: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// `next` was just written to the store, high watermark included:
    /// nothing is left for the next checkpoint.
    fn written(&mut self, next: PartitionState) {
        self.state = next;
        self.hw_dirty = false;
    }
}

impl PartitionLog {
    /// Resolves on the next change of the log end or high watermark after
    /// this call (registered at once, before the future is first polled).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// When the log end or high watermark last moved (`watch::clock_nanos`).
    pub fn changed_at(&self) -> u64 {
        self.changed_at.load(Ordering::Acquire)
    }

    fn announce(&self) {
        self.changed_at
            .store(super::watch::clock_nanos(), Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Opens (or creates) a partition, recovering its counters from the store.
    pub fn open(store: Arc<Store>, topic_id: &Uuid, partition: i32) -> store::Result<PartitionLog> {
        let prefix = partition_prefix(topic_id, partition);
        let state = match store.load_partition_state(&prefix)? {
            Some(s) => s,
            None => {
                let s = PartitionState {
                    max_timestamp: -1,
                    ..Default::default()
                };
                let mut wb = WriteBatch::default();
                store.put_partition_state(&mut wb, &prefix, &s);
                store.write(wb)?;
                s
            }
        };
        let mut producers = HashMap::new();
        for (id, json) in store.load_producers(&prefix)? {
            let entry = serde_json::from_slice(&json).map_err(|e| store::StoreError::Corrupt {
                key: format!("producer {id}"),
                reason: e.to_string(),
            })?;
            producers.insert(id, entry);
        }
        let epochs = store.load_epochs(&prefix)?;
        let txns = TxnIndex::restore(
            producers
                .iter()
                .filter_map(|(id, e): (&i64, &ProducerEntry)| e.txn_start.map(|s| (*id, s))),
            store.load_aborted(&prefix)?,
        );
        let cleaner = store
            .load_cleaner(&prefix)?
            .unwrap_or_else(|| Checkpoint::new(state.log_start_offset));
        Ok(PartitionLog {
            store,
            prefix,
            partition,
            log_start: AtomicI64::new(state.log_start_offset),
            log_end: AtomicI64::new(state.next_offset),
            high_watermark: AtomicI64::new(state.high_watermark),
            size_bytes: AtomicI64::new(state.size_bytes),
            first_unstable: AtomicI64::new(txns.first_open().unwrap_or(i64::MAX)),
            changed: tokio::sync::Notify::new(),
            changed_at: std::sync::atomic::AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state,
                producers,
                epochs,
                cleaner,
                generation: 0,
                closed: false,
                txns,
                hw_dirty: false,
            }),
        })
    }

    /// The partition's state for a change: refused once it is closed.
    fn write_lock(&self) -> store::Result<std::sync::MutexGuard<'_, Inner>> {
        let inner = self.inner.lock().expect("partition lock");
        if inner.closed {
            return Err(store::StoreError::Closed(self.partition));
        }
        Ok(inner)
    }

    /// Closes the partition (its topic is being deleted): every later
    /// change is refused, so nothing in flight can write its keys back after
    /// the topic's data is dropped.
    pub fn close(&self) {
        self.inner.lock().expect("partition lock").closed = true;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }
    pub fn log_end_offset(&self) -> i64 {
        self.log_end.load(Ordering::Acquire)
    }
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }
    pub fn size_bytes(&self) -> i64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    /// The last stable offset: below it every transaction is decided, so a
    /// read_committed consumer may read up to it.
    pub fn last_stable_offset(&self) -> i64 {
        self.high_watermark()
            .min(self.first_unstable.load(Ordering::Acquire))
            .max(self.log_start_offset())
    }

    /// Whether the producer has a transaction open here, and the guard a
    /// transactional write checked with the coordinator is appended under
    /// ([`append_checked`](Self::append_checked)).
    pub fn txn_guard(&self, producer_id: i64) -> (bool, u64) {
        let inner = self.inner.lock().expect("partition lock");
        (
            inner.txns.open_since(producer_id).is_some(),
            inner.producers.get(&producer_id).map_or(0, |e| e.markers),
        )
    }

    /// Aborted transactions whose records overlap `[from, to)`.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let inner = self.inner.lock().expect("partition lock");
        inner.txns.aborted_in(from, to)
    }

    /// The first offset of the producer's open transaction here.
    pub fn open_transaction(&self, producer_id: i64) -> Option<i64> {
        let inner = self.inner.lock().expect("partition lock");
        inner.txns.open_since(producer_id)
    }

    /// Producers with a transaction open here: (producer id, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        let inner = self.inner.lock().expect("partition lock");
        inner.txns.open_transactions().collect()
    }

    fn publish_unstable(&self, txns: &TxnIndex) {
        self.first_unstable
            .store(txns.first_open().unwrap_or(i64::MAX), Ordering::Release);
    }

    /// Appends one validated batch: checks an idempotent producer's sequence,
    /// assigns offsets from the log end, stamps LogAppendTime when asked, and
    /// writes batch, index entry, producer state and counters in one atomic
    /// RocksDB write. The high watermark waits for the followers.
    pub fn append(
        &self,
        batch_bytes: &Bytes,
        leader_epoch: i32,
        ts_type: TimestampType,
        now_ms: i64,
    ) -> Result<Appended, AppendError> {
        self.append_checked(batch_bytes, leader_epoch, ts_type, now_ms, false, None)
    }

    /// [`append`](Self::append) on a replica that is its partition's whole
    /// ISR: the high watermark moves to the new log end in the same write.
    pub fn append_committed(
        &self,
        batch_bytes: &Bytes,
        leader_epoch: i32,
        ts_type: TimestampType,
        now_ms: i64,
    ) -> Result<Appended, AppendError> {
        self.append_checked(batch_bytes, leader_epoch, ts_type, now_ms, true, None)
    }

    /// [`append`](Self::append) or, with `commit`,
    /// [`append_committed`](Self::append_committed), refused with
    /// [`AppendError::TxnEnded`] when a marker of the batch's producer was
    /// written since `guard` was taken ([`txn_guard`](Self::txn_guard)).
    pub fn append_checked(
        &self,
        batch_bytes: &Bytes,
        leader_epoch: i32,
        ts_type: TimestampType,
        now_ms: i64,
        commit: bool,
        guard: Option<u64>,
    ) -> Result<Appended, AppendError> {
        let header = Header::parse(batch_bytes).expect("validated before append");
        let producer = header.producer_id();
        let mut inner = self.write_lock()?;
        if let Some(g) = guard {
            if inner.producers.get(&producer).map_or(0, |e| e.markers) != g {
                return Err(AppendError::TxnEnded);
            }
        }
        // Markers and a coordinator's transactional offset commits carry no
        // sequence: only their epoch is checked.
        let sequenced = producer >= 0 && !header.is_control() && header.base_sequence() >= 0;
        if producer >= 0 && !sequenced {
            producers::check_epoch(inner.producers.get(&producer), header.producer_epoch())?;
        }
        let seqs = sequenced.then(|| {
            let first = header.base_sequence();
            (
                header.producer_epoch(),
                first,
                producers::last_seq(first, header.last_offset_delta()),
            )
        });
        if let Some((epoch, first, last)) = seqs {
            if let Verdict::Duplicate(m) =
                producers::check(inner.producers.get(&producer), epoch, first, last)?
            {
                return Ok(Appended {
                    base_offset: m.base_offset,
                    last_offset: m.last_offset,
                    log_append_time: -1,
                    log_start_offset: inner.state.log_start_offset,
                    duplicate: true,
                    leader_epoch,
                });
            }
        }
        let mut b = BytesMut::from(&batch_bytes[..]);
        let st = inner.state;
        let base = st.next_offset;
        batch::assign(&mut b, base, leader_epoch);
        let log_append_time = match ts_type {
            TimestampType::LogAppendTime => {
                batch::stamp_log_append_time(&mut b, now_ms);
                now_ms
            }
            TimestampType::CreateTime => -1,
        };
        let h = Header::parse(&b).expect("validated before append");
        let last = h.last_offset();
        let max_ts = h.max_timestamp();

        let mut next = st;
        next.next_offset = last + 1;
        next.size_bytes += b.len() as i64;
        if commit {
            next.high_watermark = next.next_offset;
        }
        let key = batch_key(&self.prefix, base);
        // Sized for the batch and the small records beside it, so RocksDB
        // copies the batch in once instead of again as its buffer grows.
        let mut wb = WriteBatch::with_capacity_bytes(b.len() + WRITE_BATCH_SLACK);
        if max_ts > st.max_timestamp {
            next.max_timestamp = max_ts;
            wb.put_cf(self.store.cf(CF_TSIDX), key, max_ts.to_be_bytes());
        }
        wb.put_cf(self.store.cf(CF_LOG), key, &b[..]);
        self.store.put_partition_state(&mut wb, &self.prefix, &next);
        let new_epoch = inner.epochs.last().is_none_or(|(e, _)| leader_epoch > *e);
        if new_epoch {
            let mut epochs = inner.epochs.clone();
            epochs.push((leader_epoch, base));
            self.store.put_epochs(&mut wb, &self.prefix, &epochs);
        }
        let mark = inner.txns.mark();
        let entry = (producer >= 0).then(|| {
            let prev = inner.producers.get(&producer).cloned();
            let mut e = match seqs {
                Some((epoch, first, last_seq)) => {
                    let meta = BatchMeta {
                        first_seq: first,
                        last_seq,
                        base_offset: base,
                        last_offset: last,
                        max_timestamp: max_ts,
                    };
                    producers::record(prev, epoch, meta)
                }
                None => {
                    let mut e = producers::record_epoch(prev, header.producer_epoch());
                    if header.is_control() {
                        e.markers += 1;
                    }
                    e
                }
            };
            if let Some(ev) = txn_index::event_of(&h, &b) {
                if let Some(a) = inner.txns.apply(producer, ev, base) {
                    self.store.put_aborted(&mut wb, &self.prefix, &a);
                }
            }
            e.txn_start = inner.txns.open_since(producer);
            let json = serde_json::to_vec(&e).expect("producer entry serializes");
            self.store
                .put_producer(&mut wb, &self.prefix, producer, &json);
            e
        });
        if let Err(e) = self.store.write(wb) {
            inner.txns.rollback(mark);
            return Err(e.into());
        }
        self.publish_unstable(&inner.txns);
        inner.written(next);
        if new_epoch {
            inner.epochs.push((leader_epoch, base));
        }
        if let Some(e) = entry {
            inner.producers.insert(producer, e);
        }
        self.size_bytes.store(next.size_bytes, Ordering::Release);
        self.log_end.store(next.next_offset, Ordering::Release);
        self.high_watermark
            .store(next.high_watermark, Ordering::Release);
        self.announce();
        Ok(Appended {
            base_offset: base,
            last_offset: last,
            log_append_time,
            log_start_offset: st.log_start_offset,
            duplicate: false,
            leader_epoch,
        })
    }

    /// Appends batches copied from the leader, offsets and epochs as the
    /// leader assigned them. They must continue this log exactly; producer
    /// state and the epoch cache follow them, so this replica can lead later.
    /// Returns the new log end offset.
    pub fn append_replicated(&self, records: &Bytes) -> Result<i64, AppendError> {
        self.append_replicated_with_hw(records, None)
    }

    /// [`Self::append_replicated`], raising the high watermark to the
    /// leader's `hw` (bounded by the new log end) in the same write: a
    /// follower's fetch answer costs one store write, not two.
    pub fn append_replicated_with_hw(
        &self,
        records: &Bytes,
        hw: Option<i64>,
    ) -> Result<i64, AppendError> {
        let batches = batch::split_replicated(records)
            .map_err(|e| AppendError::Replication(format!("leader sent an invalid batch: {e}")))?;
        let mut inner = self.write_lock()?;
        let mut next = inner.state;
        let mut epochs = inner.epochs.clone();
        let mut producers: Vec<(i64, ProducerEntry)> = Vec::new();
        // The batches, their keys and time index entries, and the
        // partition's state once (producer entries may grow it a little).
        let mut wb = WriteBatch::with_capacity_bytes(
            records.len() + PER_BATCH_SLACK * batches.len() + WRITE_BATCH_SLACK,
        );
        let mark = inner.txns.mark();
        for b in &batches {
            let h = Header::parse(b).expect("validated");
            // An empty log whose start lies inside the leader's first batch
            // (after DeleteRecords there) takes that whole batch.
            let straddles_start = next.size_bytes == 0
                && next.next_offset == next.log_start_offset
                && h.base_offset() < next.next_offset
                && h.last_offset() >= next.next_offset;
            // Compaction leaves gaps between batches: a batch may start past
            // the log end, never before it.
            if h.base_offset() < next.next_offset && !straddles_start {
                inner.txns.rollback(mark);
                return Err(AppendError::Replication(format!(
                    "batch at offset {} does not continue the log ending at {}",
                    h.base_offset(),
                    next.next_offset
                )));
            }
            let key = batch_key(&self.prefix, h.base_offset());
            if h.max_timestamp() > next.max_timestamp {
                next.max_timestamp = h.max_timestamp();
                wb.put_cf(
                    self.store.cf(CF_TSIDX),
                    key,
                    h.max_timestamp().to_be_bytes(),
                );
            }
            wb.put_cf(self.store.cf(CF_LOG), key, &b[..]);
            if epochs.last().is_none_or(|(e, _)| h.leader_epoch() > *e) {
                epochs.push((h.leader_epoch(), h.base_offset()));
            }
            let pid = h.producer_id();
            if pid >= 0 {
                let prev = producers
                    .iter()
                    .rev()
                    .find(|(id, _)| *id == pid)
                    .map(|(_, e)| e.clone())
                    .or_else(|| inner.producers.get(&pid).cloned());
                let mut e = next_entry(prev, &h);
                if let Some(ev) = txn_index::event_of(&h, b) {
                    if let Some(a) = inner.txns.apply(pid, ev, h.base_offset()) {
                        self.store.put_aborted(&mut wb, &self.prefix, &a);
                    }
                }
                e.txn_start = inner.txns.open_since(pid);
                producers.push((pid, e));
            }
            next.next_offset = h.last_offset().saturating_add(1);
            next.size_bytes += b.len() as i64;
        }
        if let Some(hw) = hw {
            let hw = hw.min(next.next_offset).max(next.log_start_offset);
            next.high_watermark = next.high_watermark.max(hw);
        }
        for (pid, e) in &producers {
            let json = serde_json::to_vec(e).expect("producer entry serializes");
            self.store.put_producer(&mut wb, &self.prefix, *pid, &json);
        }
        if epochs != inner.epochs {
            self.store.put_epochs(&mut wb, &self.prefix, &epochs);
        }
        self.store.put_partition_state(&mut wb, &self.prefix, &next);
        if let Err(e) = self.store.write(wb) {
            inner.txns.rollback(mark);
            return Err(e.into());
        }
        self.publish_unstable(&inner.txns);
        inner.written(next);
        inner.epochs = epochs;
        for (pid, e) in producers {
            inner.producers.insert(pid, e);
        }
        self.size_bytes.store(next.size_bytes, Ordering::Release);
        self.log_end.store(next.next_offset, Ordering::Release);
        self.high_watermark
            .store(next.high_watermark, Ordering::Release);
        self.announce();
        Ok(next.next_offset)
    }

    /// Raises the high watermark (bounded by the log end), in memory: it
    /// reaches the store with the partition's next write (every append
    /// carries the partition's state) or the next
    /// [`checkpoint_high_watermark`](Self::checkpoint_high_watermark), as
    /// Kafka checkpoints it every few seconds rather than on every move. A
    /// high watermark lost in a crash only under-reports: the records are
    /// in the log (truncation goes by leader epoch, never by the high
    /// watermark), and it moves up again as the ISR fetches. It never moves
    /// back here: only truncation and reset lower it, so concurrent appends
    /// finishing out of order cannot hide committed data.
    pub fn set_high_watermark(&self, hw: i64) -> store::Result<()> {
        let mut inner = self.write_lock()?;
        let hw = hw
            .min(inner.state.next_offset)
            .max(inner.state.log_start_offset);
        if hw <= inner.state.high_watermark {
            return Ok(());
        }
        inner.state.high_watermark = hw;
        inner.hw_dirty = true;
        self.high_watermark.store(hw, Ordering::Release);
        self.announce();
        Ok(())
    }

    /// Writes the partition's state if its high watermark moved since the
    /// last checkpoint (periodically, and when the node stops).
    pub fn checkpoint_high_watermark(&self) -> store::Result<()> {
        let mut inner = self.write_lock()?;
        if !inner.hw_dirty {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        self.store
            .put_partition_state(&mut wb, &self.prefix, &inner.state);
        self.store.write(wb)?;
        inner.hw_dirty = false;
        Ok(())
    }

    /// Idempotent producers with state here: (id, epoch, last sequence,
    /// last timestamp).
    pub fn producers(&self) -> Vec<(i64, i16, i32, i64)> {
        let inner = self.inner.lock().expect("partition lock");
        let mut out: Vec<(i64, i16, i32, i64)> = inner
            .producers
            .iter()
            .map(|(id, e)| {
                let seq = e.batches.back().map(|b| b.last_seq).unwrap_or(-1);
                (*id, e.epoch, seq, producers::last_timestamp(e))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Forgets producers that have not written since `before` (Kafka's
    /// `producer.id.expiration.ms`). Returns how many went.
    pub fn expire_producers(&self, before: i64) -> store::Result<usize> {
        let mut inner = self.write_lock()?;
        let old: Vec<i64> = inner
            .producers
            .iter()
            .filter(|(_, e)| e.txn_start.is_none() && producers::last_timestamp(e) < before)
            .map(|(id, _)| *id)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut wb = WriteBatch::default();
        for id in &old {
            self.store.delete_producer(&mut wb, &self.prefix, *id);
        }
        self.store.write(wb)?;
        for id in &old {
            inner.producers.remove(id);
        }
        Ok(old.len())
    }

    /// The latest leader epoch in this log, -1 if none.
    pub fn latest_epoch(&self) -> i32 {
        let inner = self.inner.lock().expect("partition lock");
        inner.epochs.last().map(|(e, _)| *e).unwrap_or(-1)
    }

    /// Kafka's OffsetsForLeaderEpoch rule on this log.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let inner = self.inner.lock().expect("partition lock");
        let Some(pos) = inner.epochs.iter().rposition(|(e, _)| *e <= epoch) else {
            return UNDEFINED_EPOCH;
        };
        let found = inner.epochs[pos].0;
        let end = inner
            .epochs
            .get(pos + 1)
            .map(|(_, start)| *start)
            .unwrap_or(inner.state.next_offset);
        (found, end)
    }

    /// Removes everything at and above `offset` (a follower dropping a
    /// divergent tail). Cuts at a batch boundary: a batch that straddles
    /// `offset` goes whole. Returns the new log end offset.
    pub fn truncate_to(&self, offset: i64) -> store::Result<i64> {
        let mut inner = self.write_lock()?;
        let st = inner.state;
        if offset >= st.next_offset {
            return Ok(st.next_offset);
        }
        let cf = self.store.cf(CF_LOG);
        let mut cut = offset.max(st.log_start_offset);
        let mut removed = 0i64;
        {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(cf, self.read_opts(i64::MAX));
            it.seek_for_prev(batch_key(&self.prefix, cut));
            if let Some(v) = it.value() {
                if let Ok(h) = Header::parse(v) {
                    if h.base_offset() < cut && h.last_offset() >= cut {
                        cut = h.base_offset();
                    }
                }
            }
            it.seek(batch_key(&self.prefix, cut));
            while let Some(v) = it.value() {
                removed += v.len() as i64;
                it.next();
            }
            it.status()?;
        }
        if cut < st.log_start_offset {
            // The batch to cut straddles the log start: nothing below the
            // start may come back, so the log restarts empty at its start.
            drop(inner);
            self.reset_to(st.log_start_offset)?;
            return Ok(st.log_start_offset);
        }
        let mut wb = WriteBatch::default();
        let from = batch_key(&self.prefix, cut);
        let to = batch_key(&self.prefix, i64::MAX);
        wb.delete_range_cf(cf, from, to);
        wb.delete_range_cf(self.store.cf(CF_TSIDX), from, to);
        let epochs: Vec<(i32, i64)> = inner
            .epochs
            .iter()
            .copied()
            .filter(|(_, s)| *s < cut)
            .collect();
        self.store.put_epochs(&mut wb, &self.prefix, &epochs);
        let mut next = st;
        next.next_offset = cut;
        next.size_bytes = (st.size_bytes - removed).max(0);
        next.high_watermark = st.high_watermark.min(cut);
        // The running max timestamp is the last index entry that remains.
        next.max_timestamp = {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(self.store.cf(CF_TSIDX), self.read_opts(cut));
            it.seek_to_last();
            it.value()
                .map(|v| i64::from_be_bytes(v[..8].try_into().expect("8 bytes")))
                .unwrap_or(-1)
        };
        // Producer state is rebuilt from what remains.
        let producers = self.scan_producers(cut)?;
        for pid in inner.producers.keys() {
            if !producers.contains_key(pid) {
                self.store.delete_producer(&mut wb, &self.prefix, *pid);
            }
        }
        for (pid, e) in &producers {
            let json = serde_json::to_vec(e).expect("producer entry serializes");
            self.store.put_producer(&mut wb, &self.prefix, *pid, &json);
        }
        // Aborts whose marker is gone are forgotten; open transactions are
        // what the remaining batches say.
        self.store
            .delete_aborted(&mut wb, &self.prefix, cut, i64::MAX);
        let txns = inner.txns.rebuilt_below(
            cut,
            producers
                .iter()
                .filter_map(|(id, e)| e.txn_start.map(|s| (*id, s))),
        );
        let mut cleaner = inner.cleaner.clone();
        if cut < cleaner.first_dirty {
            cleaner.forget(st.log_start_offset);
        }
        self.store.put_partition_state(&mut wb, &self.prefix, &next);
        self.store.put_cleaner(&mut wb, &self.prefix, &cleaner);
        self.store.write(wb)?;
        inner.written(next);
        inner.epochs = epochs;
        inner.producers = producers;
        inner.cleaner = cleaner;
        inner.generation += 1;
        self.publish_unstable(&txns);
        inner.txns = txns;
        self.log_end.store(cut, Ordering::Release);
        self.size_bytes.store(next.size_bytes, Ordering::Release);
        self.high_watermark
            .store(next.high_watermark, Ordering::Release);
        self.announce();
        Ok(cut)
    }

    /// Empties the log and restarts it at `offset` (a follower whose log is
    /// entirely below the leader's log start).
    pub fn reset_to(&self, offset: i64) -> store::Result<()> {
        let mut inner = self.write_lock()?;
        let mut wb = WriteBatch::default();
        self.store.delete_partition(&mut wb, &self.prefix);
        let next = PartitionState {
            log_start_offset: offset,
            next_offset: offset,
            size_bytes: 0,
            max_timestamp: -1,
            high_watermark: offset,
        };
        self.store.put_partition_state(&mut wb, &self.prefix, &next);
        self.store.write(wb)?;
        inner.written(next);
        inner.epochs.clear();
        inner.producers.clear();
        inner.txns = TxnIndex::default();
        self.publish_unstable(&inner.txns);
        inner.cleaner = Checkpoint::new(offset);
        inner.generation += 1;
        self.log_start.store(offset, Ordering::Release);
        self.log_end.store(offset, Ordering::Release);
        self.high_watermark.store(offset, Ordering::Release);
        self.size_bytes.store(0, Ordering::Release);
        self.announce();
        Ok(())
    }

    /// Producer state as the batches below `upper` define it.
    fn scan_producers(&self, upper: i64) -> store::Result<HashMap<i64, ProducerEntry>> {
        let mut out: HashMap<i64, ProducerEntry> = HashMap::new();
        let cf = self.store.cf(CF_LOG);
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(cf, self.read_opts(upper));
        it.seek_to_first();
        while let Some(v) = it.value() {
            if let Ok(h) = Header::parse(v) {
                let pid = h.producer_id();
                if pid >= 0 {
                    let prev = out.remove(&pid);
                    let mut e = next_entry(prev, &h);
                    e.txn_start = match txn_index::event_of(&h, v) {
                        Some(txn_index::TxnEvent::Data) => e.txn_start.or(Some(h.base_offset())),
                        Some(txn_index::TxnEvent::Marker { .. }) => None,
                        None => e.txn_start,
                    };
                    out.insert(pid, e);
                }
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    fn read_opts(&self, upper_offset: i64) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(batch_key(&self.prefix, 0).to_vec());
        ro.set_iterate_upper_bound(batch_key(&self.prefix, upper_offset.max(0)).to_vec());
        ro
    }

    /// Reads whole batches starting with the one holding `offset`, stopping
    /// before `max_bytes` would be exceeded, and never a batch that reaches
    /// past `upper` (the high watermark). With `at_least_one`, the first batch
    /// is returned even when it alone is larger than `max_bytes` (KIP-74).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper: i64,
        at_least_one: bool,
    ) -> store::Result<Read> {
        let mut out = BytesMut::new();
        let mut batches = 0;
        if offset >= upper {
            return Ok(Read::default());
        }
        let cf = self.store.cf(CF_LOG);
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(cf, self.read_opts(upper));
        it.seek_for_prev(batch_key(&self.prefix, offset));
        let holds_offset = match (it.key(), it.value()) {
            (Some(_), Some(v)) => Header::parse(v)
                .map(|h| h.last_offset() >= offset)
                .unwrap_or(false),
            _ => false,
        };
        if !holds_offset {
            it.seek(batch_key(&self.prefix, offset));
        }
        while let (Some(_), Some(v)) = (it.key(), it.value()) {
            let Ok(h) = Header::parse(v) else { break };
            if h.last_offset() >= upper {
                break;
            }
            if (batches > 0 || !at_least_one) && out.len() + v.len() > max_bytes {
                break;
            }
            out.extend_from_slice(v);
            batches += 1;
            if out.len() >= max_bytes {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(Read {
            records: out.freeze(),
            batches,
        })
    }

    /// The earliest offset whose record timestamp is at or after `ts`, with
    /// that record's timestamp. `None` when every record is older.
    pub fn offset_for_timestamp(&self, ts: i64) -> store::Result<Option<(i64, i64)>> {
        let upper = self.high_watermark();
        let start = self.log_start_offset();
        let cf = self.store.cf(CF_TSIDX);
        let iter = self.store.db().iterator_cf_opt(
            &cf,
            self.read_opts(upper),
            IteratorMode::From(&batch_key(&self.prefix, start), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let max_ts = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
            if max_ts < ts {
                continue;
            }
            let base = offset_of_key(&k);
            return Ok(self.find_in_batch(base, ts)?.or(Some((base, max_ts))));
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp.
    pub fn max_timestamp_offset(&self) -> store::Result<Option<(i64, i64)>> {
        let cf = self.store.cf(CF_TSIDX);
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(cf, self.read_opts(self.high_watermark()));
        it.seek_to_last();
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            return Ok(None);
        };
        let base = offset_of_key(k);
        if base < self.log_start_offset() {
            return Ok(None);
        }
        // The entry's own value: the largest timestamp up to that batch, so
        // nothing above the high watermark decides the answer.
        let max_ts = v
            .get(..8)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| store::StoreError::Corrupt {
                key: format!("timestamp index entry at offset {base}"),
                reason: format!("{} bytes", v.len()),
            })?;
        Ok(self.find_in_batch(base, max_ts)?.or(Some((base, max_ts))))
    }

    fn find_in_batch(&self, base: i64, ts: i64) -> store::Result<Option<(i64, i64)>> {
        let Some(v) = self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_LOG), batch_key(&self.prefix, base))?
        else {
            return Ok(None);
        };
        let Ok(h) = Header::parse(&v) else {
            return Ok(None);
        };
        if h.log_append_time() {
            return Ok(Some((h.base_offset(), h.max_timestamp())));
        }
        let records = decode(&v, self.store.max_decompressed)?;
        Ok(records
            .iter()
            .find(|r| r.timestamp >= ts)
            .map(|r| (r.offset, r.timestamp)))
    }

    /// Deletes whole batches from the start of the log while `expired` says so
    /// (it sees each batch's header and the log's size before that batch goes).
    /// Returns how many batches went. The log start offset moves past them.
    pub fn delete_prefix_while(
        &self,
        mut expired: impl FnMut(&Header<'_>, i64) -> bool,
    ) -> store::Result<usize> {
        let mut inner = self.write_lock()?;
        let st = &inner.state;
        let cf = self.store.cf(CF_LOG);
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(cf, self.read_opts(st.next_offset));
        // The first stored batch may straddle the log start (DeleteRecords).
        it.seek_to_first();
        let mut size = st.size_bytes;
        let mut new_start = st.log_start_offset;
        let mut deleted = 0;
        let hw = st.high_watermark;
        while let Some(v) = it.value() {
            let Ok(h) = Header::parse(v) else { break };
            // Only committed data ages out, as in Kafka: deleting above the
            // high watermark would drop what followers have not copied and
            // let the high watermark jump over it.
            if h.last_offset() >= hw || !expired(&h, size) {
                break;
            }
            size -= v.len() as i64;
            new_start = new_start.max(h.last_offset().saturating_add(1));
            deleted += 1;
            it.next();
        }
        it.status()?;
        drop(it);
        if deleted == 0 {
            return Ok(0);
        }
        self.advance_start(&mut inner, new_start, size, new_start)?;
        drop(inner);
        self.store.compact_partition(&self.prefix, new_start);
        Ok(deleted)
    }

    /// DeleteRecords: moves the log start offset to `offset` (at most the
    /// high watermark). Batches wholly below it are deleted; a batch that
    /// straddles it stays, and reads below the new start are refused.
    pub fn delete_records_before(&self, offset: i64) -> store::Result<i64> {
        let mut inner = self.write_lock()?;
        let st = &inner.state;
        if offset <= st.log_start_offset {
            return Ok(st.log_start_offset);
        }
        let cf = self.store.cf(CF_LOG);
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(cf, self.read_opts(st.next_offset));
        it.seek_to_first();
        let mut size = st.size_bytes;
        let mut cut = st.log_start_offset;
        while let Some(v) = it.value() {
            let Ok(h) = Header::parse(v) else { break };
            if h.last_offset() >= offset {
                break;
            }
            size -= v.len() as i64;
            cut = h.last_offset().saturating_add(1);
            it.next();
        }
        it.status()?;
        drop(it);
        // The whole batches go and the start lands exactly, in one write.
        self.advance_start(&mut inner, cut, size, offset)?;
        drop(inner);
        self.store.compact_partition(&self.prefix, cut);
        Ok(offset)
    }

    /// Moves the log start offset to `new_start` (DeleteRecords, retention),
    /// deleting every batch below `cut` (a batch boundary at or below it),
    /// in one atomic write.
    fn advance_start(
        &self,
        inner: &mut Inner,
        cut: i64,
        size: i64,
        new_start: i64,
    ) -> store::Result<()> {
        let st = &mut inner.state;
        let from = batch_key(&self.prefix, 0);
        let to = batch_key(&self.prefix, cut);
        let mut wb = WriteBatch::default();
        // Batches are keyed by base offset; every batch below `cut` is wholly
        // below it because `cut` is a batch boundary.
        wb.delete_range_cf(self.store.cf(CF_LOG), from, to);
        wb.delete_range_cf(self.store.cf(CF_TSIDX), batch_key(&self.prefix, 0), to);
        let max_timestamp = self.reindex_after_prefix_delete(&mut wb, cut, st.next_offset)?;
        let mut next = *st;
        next.log_start_offset = new_start;
        next.size_bytes = size;
        next.max_timestamp = max_timestamp;
        next.high_watermark = next.high_watermark.max(new_start);
        let mut cleaner = inner.cleaner.clone();
        cleaner.start_moved(new_start, st.size_bytes - size);
        self.store.put_partition_state(&mut wb, &self.prefix, &next);
        self.store.put_cleaner(&mut wb, &self.prefix, &cleaner);
        self.store
            .delete_aborted(&mut wb, &self.prefix, 0, new_start);
        self.store.write(wb)?;
        inner.written(next);
        inner.cleaner = cleaner;
        inner.txns.trim_before(new_start);
        self.log_start.store(new_start, Ordering::Release);
        self.high_watermark
            .store(next.high_watermark, Ordering::Release);
        self.size_bytes.store(size, Ordering::Release);
        // The caller compacts the deleted range once it has let go of the
        // partition: appends do not wait for a compaction.
        Ok(())
    }

    /// The timestamp index holds an entry only where a batch raised the
    /// running maximum. Once a prefix is gone, the surviving batches before
    /// the first remaining entry may raise the maximum counted from the new
    /// start: index them. From that entry on, the old entries stay right (each
    /// exceeds everything before it). Returns the log's max timestamp.
    fn reindex_after_prefix_delete(
        &self,
        wb: &mut WriteBatch,
        new_start: i64,
        end: i64,
    ) -> store::Result<i64> {
        let first_entry = {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(self.store.cf(CF_TSIDX), self.read_opts(end));
            it.seek(batch_key(&self.prefix, new_start));
            it.key().map(offset_of_key)
        };
        let upto = first_entry.unwrap_or(end);
        let mut running = -1i64;
        {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(self.store.cf(CF_LOG), self.read_opts(upto));
            it.seek(batch_key(&self.prefix, new_start));
            while let Some(v) = it.value() {
                if let Ok(h) = Header::parse(v) {
                    if h.max_timestamp() > running {
                        running = h.max_timestamp();
                        wb.put_cf(
                            self.store.cf(CF_TSIDX),
                            batch_key(&self.prefix, h.base_offset()),
                            running.to_be_bytes(),
                        );
                    }
                }
                it.next();
            }
            it.status()?;
        }
        // The last remaining entry (if any) is the maximum of the whole log.
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(self.store.cf(CF_TSIDX), self.read_opts(end));
        it.seek_to_last();
        let last = it
            .value()
            .filter(|_| first_entry.is_some())
            .map(|v| i64::from_be_bytes(v[..8].try_into().expect("8 bytes")));
        Ok(last.unwrap_or(running).max(running))
    }

    /// The log cleaner's view of this partition.
    pub fn cleaner_checkpoint(&self) -> Checkpoint {
        self.inner.lock().expect("partition lock").cleaner.clone()
    }

    /// The share of this log not compacted yet.
    pub fn dirty_ratio(&self) -> f64 {
        let inner = self.inner.lock().expect("partition lock");
        compaction::dirty_ratio(inner.state.size_bytes, inner.cleaner.clean_bytes)
    }

    /// Whether this partition is due for a cleaning pass (reads one batch
    /// header: the first dirty one, for `max.compaction.lag.ms`).
    pub fn compaction_due(&self, policy: &Policy, now_ms: i64) -> store::Result<Option<Due>> {
        let (cp, total) = {
            let inner = self.inner.lock().expect("partition lock");
            (inner.cleaner.clone(), inner.state.size_bytes)
        };
        let first_dirty = cp.first_dirty.max(self.log_start_offset());
        let hw = self.high_watermark();
        let mut first_dirty_ts = None;
        if first_dirty < hw {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(self.store.cf(CF_LOG), self.read_opts(hw));
            it.seek(batch_key(&self.prefix, first_dirty));
            if let Some(v) = it.value() {
                first_dirty_ts = Header::parse(v).ok().map(|h| h.max_timestamp());
            }
            it.status()?;
        }
        Ok(compaction::due(policy, total, &cp, first_dirty_ts, now_ms))
    }

    /// One cleaning pass (log compaction): maps the keys of the dirty part
    /// (below the high watermark, older than `min.compaction.lag.ms`, as many
    /// as `map_bytes` holds) to their latest offsets, then rewrites every
    /// batch below the dirty part's end keeping only the latest record per key
    /// and tombstones younger than `delete.retention.ms`. Batches keep their
    /// records' offsets and codec. Rewritten in atomic chunks of about
    /// `chunk_bytes`, each one a consistent log; the checkpoint moves with
    /// the last chunk, so a pass cut short (crash, truncation) is simply done
    /// again. `pace` is told every byte read or written (the I/O throttle).
    /// Records of aborted transactions go; committed transactional records
    /// are compacted like any others once decided (below the last stable
    /// offset); transaction markers are kept.
    pub fn clean(
        &self,
        policy: &Policy,
        now_ms: i64,
        map_bytes: usize,
        chunk_bytes: usize,
        pace: &mut dyn FnMut(usize),
    ) -> store::Result<Option<CleanStats>> {
        let (cp, generation, start, last_batches, aborted, lso) = {
            let inner = self.inner.lock().expect("partition lock");
            // Each idempotent producer's last batch keeps its header and
            // offsets (emptied or filtered, as Kafka's cleaner keeps it):
            // producer state rebuilt from the log (a new replica, a
            // truncation) needs its last sequence.
            let last_batches: std::collections::HashSet<i64> = inner
                .producers
                .values()
                .filter_map(|e| e.batches.back().map(|b| b.base_offset))
                .collect();
            (
                inner.cleaner.clone(),
                inner.generation,
                inner.state.log_start_offset,
                last_batches,
                inner
                    .txns
                    .aborted_in(inner.state.log_start_offset, i64::MAX),
                // Read with the aborted list: an abort landing after it
                // would otherwise let its records into the offset map.
                inner
                    .txns
                    .last_stable_offset(self.high_watermark())
                    .max(inner.state.log_start_offset),
            )
        };
        let is_aborted = |h: &Header<'_>| {
            h.is_transactional()
                && !h.is_control()
                && aborted.iter().any(|a| {
                    a.producer_id == h.producer_id()
                        && (a.first_offset..=a.last_offset).contains(&h.base_offset())
                })
        };
        // Only decided transactions are cleaned: the dirty part ends at the
        // last stable offset.
        let hw = lso;
        let log_end = self.log_end_offset();
        let first_dirty = cp.first_dirty.max(start);
        let mut stats = CleanStats {
            bytes_before: self.size_bytes(),
            ..Default::default()
        };

        // 1. The offset map over the dirty part.
        let mut map = OffsetMap::new(map_bytes);
        let mut dirty_end = first_dirty;
        {
            let mut it = self
                .store
                .db()
                .raw_iterator_cf_opt(self.store.cf(CF_LOG), self.read_opts(hw));
            it.seek_for_prev(batch_key(&self.prefix, first_dirty));
            let straddles = it
                .value()
                .and_then(|v| Header::parse(v).ok())
                .is_some_and(|h| h.last_offset() >= first_dirty);
            if !straddles {
                it.seek(batch_key(&self.prefix, first_dirty));
            }
            while let Some(v) = it.value() {
                let Ok(h) = Header::parse(v) else { break };
                if h.last_offset() >= hw
                    || !compaction::old_enough(h.max_timestamp(), policy, now_ms)
                {
                    break;
                }
                pace(v.len());
                stats.bytes_read += v.len() as u64;
                if !h.is_control() && !is_aborted(&h) {
                    let records = decode(v, self.store.max_decompressed)?;
                    let cost = OffsetMap::cost(
                        records
                            .iter()
                            .filter_map(|r| r.key.as_ref().map(|k| k.len())),
                    );
                    if !map.fits(cost) {
                        break;
                    }
                    for r in records {
                        if let Some(k) = r.key {
                            map.put(k, r.offset);
                        }
                    }
                }
                dirty_end = h.last_offset().saturating_add(1);
                it.next();
            }
            it.status()?;
        }
        let horizon = cp.tombstone_horizon(now_ms, policy.delete_retention_ms);
        let tombstones_due = cp
            .tombstones_due_at(policy.delete_retention_ms)
            .is_some_and(|at| at <= now_ms);
        if dirty_end == first_dirty && !tombstones_due {
            return Ok(None);
        }

        // 2. Rewrite everything below the dirty end.
        let mut chunk = Chunk::default();
        let mut clean_bytes = 0i64;
        let mut oldest_tombstone: Option<i64> = None;
        // Producers with records of their current transaction left, since
        // their last marker.
        let mut txn_records_left: std::collections::HashSet<i64> = Default::default();
        let mut it = self
            .store
            .db()
            .raw_iterator_cf_opt(self.store.cf(CF_LOG), self.read_opts(dirty_end));
        it.seek_to_first();
        while let Some(v) = it.value() {
            let Ok(h) = Header::parse(v) else { break };
            if h.last_offset() < start {
                it.next();
                continue;
            }
            if chunk.first_base.is_none() {
                chunk.first_base = Some(h.base_offset());
            }
            pace(v.len());
            stats.bytes_read += v.len() as u64;
            let old_key = batch_key(&self.prefix, h.base_offset());
            if h.is_control() {
                let left = txn_records_left.remove(&h.producer_id());
                let ends_log = h.last_offset().saturating_add(1) >= log_end;
                if compaction::marker_removable(h.base_offset(), left, horizon) && !ends_log {
                    chunk.wb.delete_cf(self.store.cf(CF_LOG), old_key);
                    chunk.delta -= v.len() as i64;
                    stats.records_removed += 1;
                } else {
                    clean_bytes += v.len() as i64;
                }
                it.next();
                continue;
            }
            let records = decode(v, self.store.max_decompressed)?;
            stats.records_read += records.len() as u64;
            let total = records.len();
            let aborted_batch = is_aborted(&h);
            let kept: Vec<_> = records
                .into_iter()
                .filter(|r| {
                    !aborted_batch
                        && compaction::keep(
                            r.key.as_deref(),
                            r.value.is_none(),
                            r.offset,
                            &map,
                            horizon,
                        )
                })
                .collect();
            stats.records_removed += (total - kept.len()) as u64;
            if let Some(t) = kept.iter().find(|r| r.value.is_none()) {
                oldest_tombstone = Some(oldest_tombstone.map_or(t.offset, |o| o.min(t.offset)));
            }
            // A log must not end in a gap: readers would wait there for
            // records that never come. The last batch stays, emptied.
            let ends_log = h.last_offset().saturating_add(1) >= log_end;
            let producers_last = h.producer_id() >= 0 && last_batches.contains(&h.base_offset());
            let stays = !kept.is_empty() || ends_log || producers_last;
            if h.is_transactional() && stays {
                txn_records_left.insert(h.producer_id());
            }
            if kept.len() == total && (total > 0 || ends_log) {
                clean_bytes += v.len() as i64;
            } else if kept.is_empty() && (ends_log || producers_last) {
                let empty = batch::emptied(v);
                chunk.wb.put_cf(self.store.cf(CF_LOG), old_key, &empty[..]);
                chunk.delta += empty.len() as i64 - v.len() as i64;
                clean_bytes += empty.len() as i64;
                stats.batches_rewritten += 1;
            } else if kept.is_empty() {
                chunk.wb.delete_cf(self.store.cf(CF_LOG), old_key);
                chunk.delta -= v.len() as i64;
            } else {
                // A producer's last batch keeps its offsets (and so its last
                // sequence) while losing what later records superseded.
                let span = producers_last.then(|| (h.base_offset(), h.last_offset()));
                let new_base = span.map_or(kept[0].offset, |(base, _)| base);
                let new = reencode(&h, kept, span)?;
                let new_key = batch_key(&self.prefix, new_base);
                if new_base != h.base_offset() {
                    chunk.wb.delete_cf(self.store.cf(CF_LOG), old_key);
                    if let Some(ts) = self.store.db().get_cf(self.store.cf(CF_TSIDX), old_key)? {
                        chunk.wb.delete_cf(self.store.cf(CF_TSIDX), old_key);
                        chunk.wb.put_cf(self.store.cf(CF_TSIDX), new_key, ts);
                    }
                }
                chunk.wb.put_cf(self.store.cf(CF_LOG), new_key, &new[..]);
                chunk.delta += new.len() as i64 - v.len() as i64;
                clean_bytes += new.len() as i64;
                pace(new.len());
                stats.bytes_written += new.len() as u64;
                stats.batches_rewritten += 1;
            }
            chunk.bytes += v.len();
            if chunk.bytes >= chunk_bytes {
                let full = std::mem::take(&mut chunk);
                if !self.commit_chunk(full, generation, start, None)? {
                    return Ok(None);
                }
            }
            it.next();
        }
        it.status()?;
        drop(it);
        let mut done = cp;
        done.passed(
            dirty_end.max(first_dirty),
            now_ms,
            clean_bytes,
            oldest_tombstone,
        );
        if !self.commit_chunk(chunk, generation, start, Some(done))? {
            return Ok(None);
        }
        stats.bytes_after = self.size_bytes();
        Ok(Some(stats))
    }

    /// Writes one chunk of a cleaning pass, unless the log changed under it
    /// (truncated, reset, or its start moved past the chunk). With a
    /// checkpoint, the pass ends with it; it needs the log start unchanged.
    fn commit_chunk(
        &self,
        mut chunk: Chunk,
        generation: u64,
        start: i64,
        checkpoint: Option<Checkpoint>,
    ) -> store::Result<bool> {
        let mut inner = self.write_lock()?;
        let st = inner.state;
        if inner.generation != generation
            || chunk.first_base.is_some_and(|b| b < st.log_start_offset)
            || (checkpoint.is_some() && st.log_start_offset != start)
        {
            return Ok(false);
        }
        let mut next = st;
        next.size_bytes += chunk.delta;
        self.store
            .put_partition_state(&mut chunk.wb, &self.prefix, &next);
        if let Some(cp) = &checkpoint {
            self.store.put_cleaner(&mut chunk.wb, &self.prefix, cp);
        }
        self.store.write(chunk.wb)?;
        inner.written(next);
        if let Some(cp) = checkpoint {
            inner.cleaner = cp;
        }
        self.size_bytes.store(next.size_bytes, Ordering::Release);
        Ok(true)
    }
}

/// Part of a cleaning pass not written yet.
#[derive(Default)]
struct Chunk {
    wb: WriteBatch,
    /// Change in the log's size.
    delta: i64,
    /// Bytes of the original batches covered.
    bytes: usize,
    first_base: Option<i64>,
}

/// Figures of one cleaning pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanStats {
    pub records_read: u64,
    pub records_removed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub batches_rewritten: u64,
    pub bytes_before: i64,
    pub bytes_after: i64,
}

/// The records of a stored batch; a batch that does not decode is corrupt
/// data, an error for the request that reads it and nothing more.
fn decode(stored: &[u8], limit: usize) -> store::Result<Vec<kafka_protocol::records::Record>> {
    batch::decode_records(stored, limit).map_err(|e| store::StoreError::Corrupt {
        key: Header::parse(stored)
            .map(|h| format!("record batch at offset {}", h.base_offset()))
            .unwrap_or_else(|_| "record batch".into()),
        reason: e.to_string(),
    })
}

/// The records a pass kept from one batch, as one batch in its codec.
fn reencode(
    h: &Header<'_>,
    kept: Vec<kafka_protocol::records::Record>,
    span: Option<(i64, i64)>,
) -> store::Result<Bytes> {
    batch::rebuild_spanning(h, kept, batch::codec(h), span)
        .map(BytesMut::freeze)
        .map_err(|e| store::StoreError::Corrupt {
            key: "record batch".into(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
#[path = "partition_txn_tests.rs"]
mod txn_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::tests::encode;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    /// Appends as a lone leader would: the write is committed at once.
    fn app(
        log: &PartitionLog,
        b: &Bytes,
        epoch: i32,
        ts: TimestampType,
        now: i64,
    ) -> Result<Appended, AppendError> {
        log.append_committed(b, epoch, ts, now)
    }

    fn open() -> (tempfile::TempDir, Arc<Store>, PartitionLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let id = Uuid::new_v4();
        let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
        (dir, store, log)
    }

    fn keyed(pairs: &[(&str, Option<&str>)], c: Compression) -> Bytes {
        batch::encode_records(
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        Some(Bytes::copy_from_slice(k.as_bytes())),
                        v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
            1_000,
            c,
        )
        .unwrap()
    }

    /// Every record of the log below `upper`: (offset, key, value).
    fn records(log: &PartitionLog, upper: i64) -> Vec<(i64, String, Option<String>)> {
        let r = log.read(0, usize::MAX, upper, true).unwrap();
        let mut buf = r.records.clone();
        let mut out = Vec::new();
        while !buf.is_empty() {
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            for rec in set.records {
                let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.push((rec.offset, s(rec.key).unwrap(), s(rec.value)));
            }
        }
        out
    }

    fn policy() -> Policy {
        Policy {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 1_000,
        }
    }

    #[test]
    fn compaction_keeps_the_latest_per_key_at_its_offset() {
        let (_d, _s, log) = open();
        let c = Compression::Lz4;
        app(
            &log,
            &keyed(
                &[("a", Some("a0")), ("b", Some("b0")), ("c", Some("c0"))],
                c,
            ),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &keyed(&[("a", Some("a1")), ("b", None)], c),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &keyed(&[("d", Some("d0")), ("a", Some("a2"))], c),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        let before = log.size_bytes();
        assert_eq!(
            log.compaction_due(&policy(), 10_000).unwrap(),
            Some(Due::DirtyRatio)
        );
        let stats = log
            .clean(&policy(), 10_000, 1 << 20, 1, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(stats.records_read, 7);
        assert_eq!(stats.records_removed, 3);
        let want = vec![
            (2, "c".to_string(), Some("c0".to_string())),
            (4, "b".to_string(), None),
            (5, "d".to_string(), Some("d0".to_string())),
            (6, "a".to_string(), Some("a2".to_string())),
        ];
        assert_eq!(records(&log, 7), want);
        assert!(log.size_bytes() < before);
        assert_eq!(log.log_end_offset(), 7);
        // Reads starting in a gap continue at the next record kept.
        let r = log.read(0, usize::MAX, 7, true).unwrap();
        assert_eq!(Header::parse(&r.records).unwrap().base_offset(), 2);
        // Nothing new: not due; the state survives a restart.
        assert_eq!(log.compaction_due(&policy(), 10_000).unwrap(), None);
        let cp = log.cleaner_checkpoint();
        assert_eq!(cp.first_dirty, 7);
        assert_eq!(cp.oldest_tombstone, Some(4));
    }

    #[test]
    fn tombstones_go_after_delete_retention_and_the_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let id = Uuid::new_v4();
        let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
        let c = Compression::None;
        app(
            &log,
            &keyed(&[("a", Some("a0")), ("b", Some("b0"))], c),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &keyed(&[("a", None)], c),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        log.clean(&policy(), 10_000, 1 << 20, 1 << 20, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(
            records(&log, 3),
            vec![(1, "b".into(), Some("b0".into())), (2, "a".into(), None)]
        );
        // Young tombstone: not due yet; due once delete.retention.ms passed.
        assert_eq!(log.compaction_due(&policy(), 10_500).unwrap(), None);
        let size = log.size_bytes();
        drop(log);
        let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
        assert_eq!(log.size_bytes(), size);
        assert_eq!(
            log.compaction_due(&policy(), 11_000).unwrap(),
            Some(Due::Tombstones)
        );
        let s = log
            .clean(&policy(), 11_000, 1 << 20, 1 << 20, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(s.records_removed, 1);
        assert_eq!(records(&log, 3), vec![(1, "b".into(), Some("b0".into()))]);
        assert_eq!(log.cleaner_checkpoint().oldest_tombstone, None);
        assert_eq!(log.compaction_due(&policy(), 20_000).unwrap(), None);
        // A follower copying this log accepts its gaps.
        let copy = PartitionLog::open(store.clone(), &Uuid::new_v4(), 0).unwrap();
        let r = log.read(0, usize::MAX, 3, true).unwrap();
        // The emptied last batch still carries offset 2: the copy ends at 3.
        assert_eq!(copy.append_replicated(&r.records).unwrap(), 3);
        assert_eq!(records(&copy, 3), records(&log, 3));
    }

    #[test]
    fn truncation_makes_a_pass_in_flight_give_up() {
        let (_d, _s, log) = open();
        for i in 0..4 {
            let v = format!("v{i}");
            app(
                &log,
                &keyed(&[("k", Some(&v))], Compression::None),
                0,
                TimestampType::CreateTime,
                0,
            )
            .unwrap();
        }
        let mut truncated = false;
        let out = log
            .clean(&policy(), 10_000, 1 << 20, 1, &mut |_| {
                if !truncated {
                    truncated = true;
                    log.truncate_to(2).unwrap();
                }
            })
            .unwrap();
        assert_eq!(out, None);
        assert_eq!(log.cleaner_checkpoint().first_dirty, 0);
        assert_eq!(records(&log, 2).len(), 2);
    }

    #[test]
    fn offsets_are_dense_and_reads_return_whole_batches() {
        let (_d, _s, log) = open();
        for i in 0..5 {
            let a = log
                .append(
                    &encode(10, Compression::None),
                    0,
                    TimestampType::CreateTime,
                    0,
                )
                .unwrap();
            assert_eq!(a.base_offset, i * 10);
            assert_eq!(a.last_offset, i * 10 + 9);
        }
        assert_eq!(log.log_end_offset(), 50);
        // An offset inside the third batch returns from that batch on.
        let r = log.read(25, 1 << 20, 50, true).unwrap();
        assert_eq!(r.batches, 3);
        let h = Header::parse(&r.records).unwrap();
        assert_eq!(h.base_offset(), 20);
        // max_bytes smaller than a batch still returns one whole batch.
        let r = log.read(0, 1, 50, true).unwrap();
        assert_eq!(r.batches, 1);
        // Nothing at or past the high watermark.
        assert_eq!(log.read(50, 1 << 20, 50, true).unwrap().batches, 0);
        assert_eq!(log.read(0, 1 << 20, 30, true).unwrap().batches, 3);
    }

    /// Batches above `MIN_BLOB` live in blob files once flushed; reads,
    /// a restart, retention and the cleaner see them as before, and a
    /// compaction of the table files does not write them again.
    #[test]
    fn big_batches_live_in_blob_files_through_reopen_retention_and_cleaning() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let value = "v".repeat(1_000);
        let big = |key: &str| {
            let pairs: Vec<(String, Option<&str>)> = (0..8)
                .map(|i| (format!("{key}{i}"), Some(value.as_str())))
                .collect();
            let pairs: Vec<(&str, Option<&str>)> =
                pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            keyed(&pairs, Compression::None)
        };
        let first = big("a");
        assert!(first.len() as u64 > crate::log::MIN_BLOB);
        {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
            for key in ["a", "b", "a", "c"] {
                app(&log, &big(key), 0, TimestampType::CreateTime, 0).unwrap();
            }
            store.flush_log().unwrap();
            let s = store.stats();
            assert!(s.blob_files >= 1, "{s:?}");
            assert!(s.blob_bytes >= 4 * first.len() as u64, "{s:?}");
            assert!(s.user_bytes > 0 && s.wal_bytes > 0, "{s:?}");
            // A full compaction rewrites keys and references, not batches.
            store.compact_log();
            let after = store.stats();
            assert!(
                after.compaction_write_bytes - s.compaction_write_bytes < first.len() as u64,
                "{after:?}"
            );
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let log = PartitionLog::open(store.clone(), &id, 0).unwrap();
        assert_eq!(log.log_end_offset(), 32);
        assert_eq!(records(&log, 32).len(), 32);
        assert_eq!(records(&log, 32)[31].2.as_deref(), Some(value.as_str()));
        // The cleaner keeps the latest of each key: the second "a" batch
        // supersedes the first.
        let stats = log
            .clean(&policy(), 10_000, 1 << 20, 1, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!((stats.records_read, stats.records_removed), (32, 8));
        assert_eq!(records(&log, 32)[0].0, 8);
        // Retention drops the oldest batch left.
        let mut n = 0;
        let dropped = log
            .delete_prefix_while(|_, _| {
                n += 1;
                n == 1
            })
            .unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(log.log_start_offset(), 16);
        let kept = records(&log, 32);
        assert_eq!(kept.len(), 16);
        assert_eq!(kept[0].0, 16);
        store.flush_log().unwrap();
        store.compact_log();
        assert_eq!(records(&log, 32), kept);
    }

    /// A moved high watermark costs no write of its own: it goes with the
    /// next append or checkpoint; lost in a crash, it only under-reports.
    #[test]
    fn the_high_watermark_goes_with_the_next_write_or_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let reopen = || {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            PartitionLog::open(store, &id, 0).unwrap()
        };
        {
            let log = reopen();
            let b = encode(5, Compression::None);
            log.append(&b, 0, TimestampType::CreateTime, 0).unwrap();
            log.append(&b, 0, TimestampType::CreateTime, 0).unwrap();
            let writes = log.store.writes();
            log.set_high_watermark(5).unwrap();
            assert_eq!(log.high_watermark(), 5);
            assert_eq!(
                log.store.writes(),
                writes,
                "no write for a moved high watermark"
            );
            // Lost with the process: the reopened log says less, never more.
        }
        {
            let log = reopen();
            assert_eq!((log.high_watermark(), log.log_end_offset()), (0, 10));
            log.set_high_watermark(5).unwrap();
            // The next append carries it.
            log.append(
                &encode(1, Compression::None),
                0,
                TimestampType::CreateTime,
                0,
            )
            .unwrap();
        }
        {
            let log = reopen();
            assert_eq!(log.high_watermark(), 5);
            log.set_high_watermark(11).unwrap();
            let writes = log.store.writes();
            log.checkpoint_high_watermark().unwrap();
            log.checkpoint_high_watermark().unwrap();
            assert_eq!(log.store.writes(), writes + 1, "one checkpoint write");
        }
        assert_eq!(reopen().high_watermark(), 11);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            let log = PartitionLog::open(store, &id, 3).unwrap();
            app(
                &log,
                &encode(4, Compression::Zstd),
                0,
                TimestampType::CreateTime,
                0,
            )
            .unwrap();
            log.delete_prefix_while(|_, _| true).unwrap();
            app(
                &log,
                &encode(2, Compression::None),
                0,
                TimestampType::CreateTime,
                0,
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let log = PartitionLog::open(store, &id, 3).unwrap();
        assert_eq!(log.log_start_offset(), 4);
        assert_eq!(log.log_end_offset(), 6);
        let r = log.read(4, 1 << 20, 6, true).unwrap();
        assert_eq!(r.batches, 1);
    }

    #[test]
    fn timestamp_lookup_finds_first_record_at_or_after() {
        let (_d, _s, log) = open();
        // Records carry timestamps 1000..1009 in each batch.
        app(
            &log,
            &encode(10, Compression::Gzip),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &encode(10, Compression::None),
            0,
            TimestampType::LogAppendTime,
            5_000,
        )
        .unwrap();
        assert_eq!(log.offset_for_timestamp(1_003).unwrap(), Some((3, 1_003)));
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 1_000)));
        assert_eq!(log.offset_for_timestamp(4_000).unwrap(), Some((10, 5_000)));
        assert_eq!(log.offset_for_timestamp(6_000).unwrap(), None);
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((10, 5_000)));
    }

    #[test]
    fn retention_by_size_keeps_newest() {
        let (_d, _s, log) = open();
        let b = encode(10, Compression::None);
        for _ in 0..4 {
            app(&log, &b, 0, TimestampType::CreateTime, 0).unwrap();
        }
        let one = b.len() as i64;
        let limit = 2 * one;
        let n = log
            .delete_prefix_while(|h, size| size - i64::from(h.batch_length()) - 12 >= limit)
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(log.log_start_offset(), 20);
        assert_eq!(log.size_bytes(), 2 * one);
        let r = log.read(0, 1 << 20, 40, true);
        // Reading below the start is the caller's error to report; the log
        // itself simply starts at the first remaining batch.
        assert_eq!(r.unwrap().batches, 2);
    }

    #[test]
    fn followers_copy_batches_and_truncate_divergent_tails() {
        let (_d, store, leader) = open();
        app(
            &leader,
            &encode(5, Compression::None),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &leader,
            &encode(5, Compression::Lz4),
            1,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &leader,
            &encode(5, Compression::None),
            3,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        assert_eq!(leader.end_offset_for_epoch(0), (0, 5));
        assert_eq!(leader.end_offset_for_epoch(2), (1, 10));
        assert_eq!(leader.end_offset_for_epoch(3), (3, 15));
        assert_eq!(leader.end_offset_for_epoch(9), (3, 15));

        let follower = PartitionLog::open(store.clone(), &Uuid::new_v4(), 0).unwrap();
        let all = leader.read(0, 1 << 20, 15, true).unwrap();
        assert_eq!(follower.append_replicated(&all.records).unwrap(), 15);
        assert_eq!(follower.end_offset_for_epoch(1), (1, 10));
        assert_eq!(follower.latest_epoch(), 3);
        // A batch that does not continue the log is refused.
        let again = leader.read(0, 1 << 20, 15, true).unwrap();
        assert!(matches!(
            follower.append_replicated(&again.records),
            Err(AppendError::Replication(_))
        ));

        // The follower drops its epoch-3 tail as a new leader at epoch 2 says.
        follower.set_high_watermark(12).unwrap();
        assert_eq!(follower.truncate_to(10).unwrap(), 10);
        assert_eq!(follower.log_end_offset(), 10);
        assert_eq!(follower.high_watermark(), 10);
        assert_eq!(follower.latest_epoch(), 1);
        assert_eq!(follower.read(0, 1 << 20, 10, true).unwrap().batches, 2);
        // Truncating inside a batch cuts at its start.
        assert_eq!(follower.truncate_to(7).unwrap(), 5);
        assert_eq!(follower.end_offset_for_epoch(1), (0, 5));
        assert_eq!(follower.end_offset_for_epoch(-5), UNDEFINED_EPOCH);
    }

    #[test]
    fn producer_state_follows_replication_and_truncation() {
        use kafka_protocol::records::Record;
        let idem = |first_seq: i32| {
            let recs: Vec<Record> = (0..2)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: 77,
                    producer_epoch: 0,
                    timestamp_type: kafka_protocol::records::TimestampType::Creation,
                    offset: i,
                    sequence: first_seq + i as i32,
                    timestamp: 1,
                    key: None,
                    value: Some(Bytes::from_static(b"v")),
                    headers: Default::default(),
                })
                .collect();
            batch::encode_v2(&recs, Compression::None).unwrap()
        };
        let (_d, store, leader) = open();
        app(&leader, &idem(0), 0, TimestampType::CreateTime, 0).unwrap();
        app(&leader, &idem(2), 0, TimestampType::CreateTime, 0).unwrap();
        let follower = PartitionLog::open(store, &Uuid::new_v4(), 0).unwrap();
        follower
            .append_replicated(&leader.read(0, 1 << 20, 4, true).unwrap().records)
            .unwrap();
        // The follower, leading now, recognises the producer's retry.
        let dup = follower
            .append(&idem(2), 1, TimestampType::CreateTime, 0)
            .unwrap();
        assert!(dup.duplicate);
        assert_eq!(dup.base_offset, 2);
        // After truncating the second batch, the retry is new again.
        follower.truncate_to(2).unwrap();
        let again = follower
            .append(&idem(2), 1, TimestampType::CreateTime, 0)
            .unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.base_offset, 2);
    }

    /// An idempotent batch of (key, value) records: producer `pid` at
    /// epoch 0, sequences from `first_seq`.
    fn idempotent_keyed(pid: i64, first_seq: i32, keys: &[&str]) -> Bytes {
        use kafka_protocol::records::Record;
        let recs: Vec<Record> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: 0,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i as i64,
                sequence: first_seq + i as i32,
                timestamp: 1_000,
                key: Some(Bytes::copy_from_slice(k.as_bytes())),
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        batch::encode_v2(&recs, Compression::None).unwrap()
    }

    #[test]
    fn compaction_keeps_each_producers_last_batch_for_rebuilt_state() {
        let (_d, store, log) = open();
        // Producer 77's only batch is superseded entirely by later writes of
        // another producer; producer 88's last batch partly.
        app(
            &log,
            &idempotent_keyed(77, 0, &["a", "b"]),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &idempotent_keyed(88, 0, &["c", "d"]),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &keyed(
                &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))],
                Compression::None,
            ),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &keyed(&[("z", Some("1"))], Compression::None),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        log.clean(&policy(), 10_000, 1 << 20, 1 << 20, &mut |_| {})
            .unwrap();
        // A replica rebuilding its state from the compacted log knows both
        // producers' last sequences.
        let copy = PartitionLog::open(store, &Uuid::new_v4(), 0).unwrap();
        copy.append_replicated(
            &log.read(0, 1 << 20, log.log_end_offset(), true)
                .unwrap()
                .records,
        )
        .unwrap();
        let seqs: Vec<(i64, i32)> = copy.producers().iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(seqs, vec![(77, 1), (88, 1)]);
        // Truncation rebuilds producer state from what the log holds.
        copy.truncate_to(7).unwrap();
        let seqs: Vec<(i64, i32)> = copy.producers().iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(seqs, vec![(77, 1), (88, 1)]);
        let next = copy
            .append(
                &idempotent_keyed(77, 2, &["e"]),
                1,
                TimestampType::CreateTime,
                0,
            )
            .unwrap();
        assert!(!next.duplicate);
        // Superseded records are gone, from the producers' last batches
        // too: one record per key, each at the offset it was written.
        let kept: Vec<(i64, String)> = records(&log, log.log_end_offset())
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect();
        let kept: Vec<(i64, &str)> = kept.iter().map(|(o, k)| (*o, k.as_str())).collect();
        assert_eq!(kept, vec![(3, "d"), (4, "a"), (5, "b"), (6, "c"), (7, "z")]);
    }

    #[test]
    fn retention_deletes_only_below_the_high_watermark() {
        let (_d, _store, log) = open();
        // Written as a leader whose followers have copied nothing yet.
        log.append(
            &encode(5, Compression::None),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        assert_eq!(log.high_watermark(), 0);
        assert_eq!(log.delete_prefix_while(|_, _| true).unwrap(), 0);
        assert_eq!((log.log_start_offset(), log.high_watermark()), (0, 0));
        log.set_high_watermark(5).unwrap();
        assert_eq!(log.delete_prefix_while(|_, _| true).unwrap(), 1);
        assert_eq!((log.log_start_offset(), log.high_watermark()), (5, 5));
    }

    #[test]
    fn the_max_timestamp_lookup_sees_only_committed_data() {
        let (_d, _store, log) = open();
        let at = |ts: i64| {
            batch::encode_records(
                vec![(None, Some(Bytes::from_static(b"v")))],
                ts,
                Compression::None,
            )
            .unwrap()
        };
        app(&log, &at(1_000), 0, TimestampType::CreateTime, 0).unwrap();
        log.append(&at(5_000), 0, TimestampType::CreateTime, 0)
            .unwrap();
        assert_eq!(log.high_watermark(), 1);
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((0, 1_000)));
    }

    #[test]
    fn delete_records_lands_in_one_write() {
        let (_d, _store, log) = open();
        app(
            &log,
            &encode(5, Compression::None),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        app(
            &log,
            &encode(5, Compression::None),
            0,
            TimestampType::CreateTime,
            0,
        )
        .unwrap();
        let before = log.store.writes();
        log.delete_records_before(7).unwrap();
        // One atomic write: the whole first batch goes and the start lands
        // inside the second, or neither; a crash cannot leave half of it.
        assert_eq!(log.store.writes() - before, 1);
        assert_eq!(log.log_start_offset(), 7);
    }

    #[test]
    fn delete_records_inside_a_batch_then_retention_reclaims_it() {
        let (_d, _s, log) = open();
        let b = encode(10, Compression::None);
        for _ in 0..3 {
            app(&log, &b, 0, TimestampType::CreateTime, 0).unwrap();
        }
        assert_eq!(log.high_watermark(), 30);
        assert_eq!(log.delete_records_before(15).unwrap(), 15);
        assert_eq!(log.log_start_offset(), 15);
        assert_eq!(log.size_bytes(), 2 * b.len() as i64);
        // The straddling batch is still what a read at 15 returns.
        let h = Header::parse(&log.read(15, 1 << 20, 30, true).unwrap().records)
            .unwrap()
            .base_offset();
        assert_eq!(h, 10);
        // Retention that drops one batch removes the straddling one, and the
        // size follows.
        let mut n = 0;
        assert_eq!(
            log.delete_prefix_while(|_, _| {
                n += 1;
                n == 1
            })
            .unwrap(),
            1
        );
        assert_eq!(log.log_start_offset(), 20);
        assert_eq!(log.size_bytes(), b.len() as i64);
        assert_eq!(log.read(20, 1 << 20, 30, true).unwrap().batches, 1);
    }

    #[test]
    fn timestamp_lookup_survives_retention_of_the_maximum() {
        use crate::log::batch::encode_records;
        let (_d, _s, log) = open();
        let at = |ts: i64| {
            encode_records(
                vec![(None, Some(Bytes::from_static(b"v")))],
                ts,
                Compression::None,
            )
            .unwrap()
        };
        // A (ts 1000) raises the maximum; B (900) and C (950) do not; D (2000) does.
        for ts in [1_000, 900, 950, 2_000] {
            app(&log, &at(ts), 0, TimestampType::CreateTime, 0).unwrap();
        }
        // Retention drops A: B and C must become findable again.
        let mut n = 0;
        log.delete_prefix_while(|_, _| {
            n += 1;
            n == 1
        })
        .unwrap();
        assert_eq!(log.offset_for_timestamp(800).unwrap(), Some((1, 900)));
        assert_eq!(log.offset_for_timestamp(920).unwrap(), Some((2, 950)));
        assert_eq!(log.offset_for_timestamp(1_500).unwrap(), Some((3, 2_000)));
        // Dropping D's predecessors and then D itself leaves an empty index.
        let mut n = 0;
        log.delete_prefix_while(|_, _| {
            n += 1;
            n <= 2
        })
        .unwrap();
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((3, 2_000)));
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((3, 2_000)));
    }

    #[test]
    fn idle_producers_expire() {
        use kafka_protocol::records::Record;
        let (_d, _s, log) = open();
        let idem = |pid: i64, ts: i64| {
            let r = Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: 0,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: 0,
                sequence: 0,
                timestamp: ts,
                key: None,
                value: None,
                headers: Default::default(),
            };
            batch::encode_v2(&[r], Compression::None).unwrap()
        };
        app(&log, &idem(1, 1_000), 0, TimestampType::CreateTime, 0).unwrap();
        app(&log, &idem(2, 5_000), 0, TimestampType::CreateTime, 0).unwrap();
        assert_eq!(log.expire_producers(2_000).unwrap(), 1);
        let left: Vec<i64> = log.producers().into_iter().map(|p| p.0).collect();
        assert_eq!(left, vec![2]);
        // The expired producer is unknown again: it must restart at sequence 0.
        assert!(
            !log.append(&idem(1, 6_000), 0, TimestampType::CreateTime, 0)
                .unwrap()
                .duplicate
        );
    }
}
