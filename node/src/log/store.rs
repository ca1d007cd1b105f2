//! The node's one RocksDB database and its key layout.
//!
//! Column families:
//! - `log`: key = topic id (16) + partition (4, BE) + base offset (8, BE),
//!   value = the record batch exactly as it is served to consumers.
//! - `tsidx`: same key as `log`, value = the batch's max timestamp (8, BE);
//!   written only when a batch raises the partition's running max timestamp,
//!   so the first entry at or above a target time names the batch to search.
//! - `meta`: topic metadata (`topic/<name>` -> JSON; `orphan/<id>` -> JSON
//!   for a topic whose data this node keeps though the metadata no longer
//!   names it), per-partition state
//!   (`part/` + topic id + partition -> [`PartitionState`]), the log
//!   cleaner's checkpoint (`clean/` + topic id + partition -> JSON), the
//!   cluster id.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options,
    WriteBatch, WriteOptions, DB,
};
use uuid::Uuid;

use super::compaction::Checkpoint;
use super::txn_index::AbortedTxn;

pub const CF_LOG: &str = "log";
pub const CF_TSIDX: &str = "tsidx";
pub const CF_META: &str = "meta";

/// Batches of at least this many bytes are kept in blob files (see
/// [`Store::options`]); smaller ones stay in the table files with their key.
pub const MIN_BLOB: u64 = 4096;

/// Length of a partition's key prefix in `log` and `tsidx`.
pub const PREFIX_LEN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("partition {0} was deleted")]
    Closed(i32),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    db: DB,
    write_opts: WriteOptions,
    /// The most a stored batch may decompress to when the node reads its
    /// records (timestamp lookups, the cleaner, recompression).
    pub max_decompressed: usize,
    /// Why the last write failed, until a write succeeds again.
    failure: std::sync::Mutex<Option<String>>,
    /// Atomic writes made (each one RocksDB write batch).
    writes: std::sync::atomic::AtomicU64,
    /// The database's options, kept for their statistics (RocksDB counts
    /// into the statistics object the options carry).
    db_opts: Options,
}

/// What RocksDB wrote and how it held writers back, from its statistics and
/// properties (exported on `/metrics`; the benchmarks divide the bytes by
/// the bytes produced).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreStats {
    /// Bytes handed to RocksDB by the node's writes.
    pub user_bytes: u64,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes: u64,
    /// Bytes of table files written by memtable flushes.
    pub flush_bytes: u64,
    /// Bytes compactions read and wrote.
    pub compaction_read_bytes: u64,
    pub compaction_write_bytes: u64,
    /// Bytes written to blob files (flushes and compactions).
    pub blob_bytes: u64,
    /// Bytes blob garbage collection moved to new blob files.
    pub blob_gc_bytes: u64,
    /// Time writers were delayed or stopped by flushes and compactions
    /// falling behind.
    pub stall_micros: u64,
    /// Table files in level 0 of the log column family.
    pub log_l0_files: u64,
    /// Bytes compaction must still rewrite to reach its targets.
    pub pending_compaction_bytes: u64,
    /// Blob files of the log column family and their live and garbage bytes.
    pub blob_files: u64,
    pub live_blob_bytes: u64,
    pub garbage_blob_bytes: u64,
}

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// fsync every write.
    pub sync_writes: bool,
    pub max_decompressed: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: false,
            max_decompressed: 64 << 20,
        }
    }
}

/// Durable per-partition counters, written in the same atomic write batch as
/// every append and every deletion so they can never disagree with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionState {
    pub log_start_offset: i64,
    pub next_offset: i64,
    pub size_bytes: i64,
    pub max_timestamp: i64,
    /// The last high watermark this replica knew (Kafka's HW checkpoint).
    pub high_watermark: i64,
}

impl PartitionState {
    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.log_start_offset.to_be_bytes());
        b[8..16].copy_from_slice(&self.next_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.size_bytes.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[32..40].copy_from_slice(&self.high_watermark.to_be_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 40 {
            return None;
        }
        let f = |i: usize| i64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(PartitionState {
            log_start_offset: f(0),
            next_offset: f(8),
            size_bytes: f(16),
            max_timestamp: f(24),
            high_watermark: f(32),
        })
    }
}

pub fn partition_prefix(topic_id: &Uuid, partition: i32) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..16].copy_from_slice(topic_id.as_bytes());
    p[16..].copy_from_slice(&(partition as u32).to_be_bytes());
    p
}

/// The key range of everything a topic has under `kind` (empty for the
/// `log` and `tsidx` keys): every such key starts with `kind` and the topic
/// id, and sorts below `kind`, the id and thirteen 0xff bytes (longer than
/// any partition and offset suffix).
fn topic_range(kind: &[u8], topic_id: &Uuid) -> (Vec<u8>, Vec<u8>) {
    let mut from = kind.to_vec();
    from.extend_from_slice(topic_id.as_bytes());
    let mut to = from.clone();
    to.extend_from_slice(&[0xff; 13]);
    (from, to)
}

pub fn batch_key(prefix: &[u8; PREFIX_LEN], base_offset: i64) -> [u8; PREFIX_LEN + 8] {
    let mut k = [0u8; PREFIX_LEN + 8];
    k[..PREFIX_LEN].copy_from_slice(prefix);
    k[PREFIX_LEN..].copy_from_slice(&(base_offset as u64).to_be_bytes());
    k
}

pub fn offset_of_key(key: &[u8]) -> i64 {
    u64::from_be_bytes(key[PREFIX_LEN..PREFIX_LEN + 8].try_into().expect("8 bytes")) as i64
}

fn state_key(prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut k = b"part/".to_vec();
    k.extend_from_slice(prefix);
    k
}

fn producer_prefix(prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut k = b"prod/".to_vec();
    k.extend_from_slice(prefix);
    k
}

fn producer_key(prefix: &[u8; PREFIX_LEN], producer_id: i64) -> Vec<u8> {
    let mut k = producer_prefix(prefix);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

/// An aborted transaction of a partition, keyed by its marker's offset.
fn aborted_key(prefix: &[u8; PREFIX_LEN], marker_offset: i64) -> Vec<u8> {
    let mut k = b"abort/".to_vec();
    k.extend_from_slice(prefix);
    k.extend_from_slice(&marker_offset.to_be_bytes());
    k
}

fn epochs_key(prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut k = b"epochs/".to_vec();
    k.extend_from_slice(prefix);
    k
}

fn cleaner_key(prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut k = b"clean/".to_vec();
    k.extend_from_slice(prefix);
    k
}

fn orphan_key(id: &Uuid) -> Vec<u8> {
    let mut k = b"orphan/".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn topic_key(name: &str) -> Vec<u8> {
    format!("topic/{name}").into_bytes()
}

impl Store {
    /// The options of the database and of the `log` column family, shared
    /// with the RocksDB ceiling of the benchmarks (`sluice-bench rocksdb`).
    pub fn options() -> (Options, Options) {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        // Write back the WAL and new table files a megabyte at a time
        // (sync_file_range, not fsync: durability is unchanged) instead of
        // leaving 64 MiB of dirty pages per flush for the kernel to write at
        // once, which stalled the next WAL write behind it.
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_wal_bytes_per_sync(1 << 20);
        // Counters of bytes written and stalls (`/metrics`), at the level
        // that skips the per-operation timers.
        db_opts.enable_statistics();
        db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptTimers);

        // Batches are stored as the producer compressed them (or as the
        // topic's compression.type recompressed them), as Kafka stores them:
        // compressing them again in RocksDB spent an eighth of a node's CPU
        // on flushes and compactions for nothing.
        let mut log_opts = Options::default();
        log_opts.set_compression_type(DBCompressionType::None);
        log_opts.set_write_buffer_size(64 << 20);
        // Room for two memtables waiting to be flushed before writes stall.
        log_opts.set_max_write_buffer_number(4);
        log_opts.set_target_file_size_base(64 << 20);
        // Key-value separation (integrated BlobDB): a batch of at least
        // `MIN_BLOB` bytes goes to a blob file once, at flush, and the
        // compactions that follow rewrite only its key and a reference,
        // not the batch. Without it every batch was written again at each
        // level it passed through. Blob files are deleted when the last key
        // pointing into them is gone (retention, DeleteRecords, topic
        // deletion); garbage collection moves what is still live out of the
        // oldest quarter of the files when compaction passes over them, so
        // one long-lived topic does not pin a file full of expired data.
        log_opts.set_enable_blob_files(true);
        log_opts.set_min_blob_size(MIN_BLOB);
        log_opts.set_blob_file_size(256 << 20);
        log_opts.set_blob_compression_type(DBCompressionType::None);
        log_opts.set_enable_blob_gc(true);
        log_opts.set_blob_gc_age_cutoff(0.25);
        // And when half of those oldest files is garbage, RocksDB compacts
        // the table files pointing into them on its own, so their space
        // comes back even where no new writes would reach them.
        log_opts.set_blob_gc_force_threshold(0.5);
        let mut table = BlockBasedOptions::default();
        table.set_block_size(64 << 10);
        log_opts.set_block_based_table_factory(&table);
        (db_opts, log_opts)
    }

    pub fn open(path: &Path, opts: StoreOptions) -> Result<Arc<Store>> {
        let (db_opts, log_opts) = Store::options();
        let db_opts_kept = db_opts.clone();
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_TSIDX, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes);
        Ok(Arc::new(Store {
            db,
            write_opts,
            max_decompressed: opts.max_decompressed,
            failure: std::sync::Mutex::new(None),
            writes: std::sync::atomic::AtomicU64::new(0),
            db_opts: db_opts_kept,
        }))
    }

    /// Flushes the log's memtables to files (tests: reach the files).
    #[cfg(test)]
    pub fn flush_log(&self) -> Result<()> {
        Ok(self.db.flush_cf(self.cf(CF_LOG))?)
    }

    /// Compacts the whole log column family (tests).
    #[cfg(test)]
    pub fn compact_log(&self) {
        self.db
            .compact_range_cf(self.cf(CF_LOG), None::<&[u8]>, None::<&[u8]>);
    }

    /// RocksDB's own account of what it wrote and how long writers waited.
    pub fn stats(&self) -> StoreStats {
        use rocksdb::statistics::Ticker;
        let t = |ticker| self.db_opts.get_ticker_count(ticker);
        let log = self.cf(CF_LOG);
        let int = |name: &str| {
            self.db
                .property_int_value_cf(log, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        StoreStats {
            user_bytes: t(Ticker::BytesWritten),
            wal_bytes: t(Ticker::WalFileBytes),
            flush_bytes: t(Ticker::FlushWriteBytes),
            compaction_read_bytes: t(Ticker::CompactReadBytes),
            compaction_write_bytes: t(Ticker::CompactWriteBytes),
            blob_bytes: t(Ticker::BlobDbBlobFileBytesWritten),
            blob_gc_bytes: t(Ticker::BlobDbGcBytesRelocated),
            stall_micros: t(Ticker::StallMicros),
            log_l0_files: self
                .db
                .property_value_cf(log, "rocksdb.num-files-at-level0")
                .ok()
                .flatten()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes"),
            blob_files: int("rocksdb.num-blob-files"),
            live_blob_bytes: int("rocksdb.live-blob-file-size"),
            garbage_blob_bytes: int("rocksdb.live-blob-file-garbage-size"),
        }
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created when the store opens")
    }

    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self.db.write_opt(batch, &self.write_opts);
        let mut failure = self.failure.lock().expect("store failure lock");
        match r {
            Ok(()) => {
                if let Some(was) = failure.take() {
                    tracing::info!(error = %was, "storage accepts writes again");
                }
                Ok(())
            }
            Err(e) => {
                if failure.is_none() {
                    tracing::error!(error = %e, "storage refuses writes");
                }
                *failure = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Atomic writes made so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why writes fail, while they do (a full disk, an I/O error).
    pub fn write_failure(&self) -> Option<String> {
        self.failure.lock().expect("store failure lock").clone()
    }

    pub fn load_partition_state(
        &self,
        prefix: &[u8; PREFIX_LEN],
    ) -> Result<Option<PartitionState>> {
        let key = state_key(prefix);
        match self.db.get_pinned_cf(self.cf(CF_META), &key)? {
            None => Ok(None),
            Some(v) => PartitionState::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: format!("partition state of {} bytes", v.len()),
                }),
        }
    }

    pub fn put_partition_state(
        &self,
        wb: &mut WriteBatch,
        prefix: &[u8; PREFIX_LEN],
        s: &PartitionState,
    ) {
        wb.put_cf(self.cf(CF_META), state_key(prefix), s.encode());
    }

    /// Idempotent producer state of one partition, as (producer id, JSON).
    pub fn load_producers(&self, prefix: &[u8; PREFIX_LEN]) -> Result<Vec<(i64, Vec<u8>)>> {
        let start = producer_prefix(prefix);
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), &start) {
            let (k, v) = item?;
            if !k.starts_with(&start) || k.len() != start.len() + 8 {
                break;
            }
            let id = i64::from_be_bytes(k[start.len()..].try_into().expect("8 bytes"));
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// The leader epoch cache of a partition: (epoch, start offset) pairs.
    pub fn load_epochs(&self, prefix: &[u8; PREFIX_LEN]) -> Result<Vec<(i32, i64)>> {
        match self.db.get_cf(self.cf(CF_META), epochs_key(prefix))? {
            None => Ok(vec![]),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: "epochs".into(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn put_epochs(
        &self,
        wb: &mut WriteBatch,
        prefix: &[u8; PREFIX_LEN],
        epochs: &[(i32, i64)],
    ) {
        let json = serde_json::to_vec(epochs).expect("epochs serialize");
        wb.put_cf(self.cf(CF_META), epochs_key(prefix), json);
    }

    /// The log cleaner's checkpoint of a partition, if it has one.
    pub fn load_cleaner(&self, prefix: &[u8; PREFIX_LEN]) -> Result<Option<Checkpoint>> {
        match self.db.get_cf(self.cf(CF_META), cleaner_key(prefix))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: "cleaner checkpoint".into(),
                    reason: e.to_string(),
                }),
        }
    }

    pub fn put_cleaner(&self, wb: &mut WriteBatch, prefix: &[u8; PREFIX_LEN], cp: &Checkpoint) {
        let json = serde_json::to_vec(cp).expect("checkpoint serializes");
        wb.put_cf(self.cf(CF_META), cleaner_key(prefix), json);
    }

    pub fn delete_producer(
        &self,
        wb: &mut WriteBatch,
        prefix: &[u8; PREFIX_LEN],
        producer_id: i64,
    ) {
        wb.delete_cf(self.cf(CF_META), producer_key(prefix, producer_id));
    }

    pub fn put_producer(
        &self,
        wb: &mut WriteBatch,
        prefix: &[u8; PREFIX_LEN],
        producer_id: i64,
        json: &[u8],
    ) {
        wb.put_cf(self.cf(CF_META), producer_key(prefix, producer_id), json);
    }

    /// The aborted transactions of one partition (the index read_committed
    /// fetches report), in marker order.
    pub fn load_aborted(&self, prefix: &[u8; PREFIX_LEN]) -> Result<Vec<AbortedTxn>> {
        let start = aborted_key(prefix, 0);
        let stem = start.len() - 8;
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), &start[..stem]) {
            let (k, v) = item?;
            if !k.starts_with(&start[..stem]) || k.len() != start.len() {
                break;
            }
            let corrupt = || StoreError::Corrupt {
                key: "aborted transaction".into(),
                reason: format!("{} bytes", v.len()),
            };
            let field = |i: usize| -> Result<i64> {
                Ok(i64::from_be_bytes(
                    v.get(i..i + 8)
                        .ok_or_else(corrupt)?
                        .try_into()
                        .expect("8 bytes"),
                ))
            };
            out.push(AbortedTxn {
                producer_id: field(0)?,
                first_offset: field(8)?,
                last_offset: i64::from_be_bytes(k[stem..].try_into().expect("8 bytes")),
            });
        }
        Ok(out)
    }

    pub fn put_aborted(&self, wb: &mut WriteBatch, prefix: &[u8; PREFIX_LEN], a: &AbortedTxn) {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&a.producer_id.to_be_bytes());
        v.extend_from_slice(&a.first_offset.to_be_bytes());
        wb.put_cf(self.cf(CF_META), aborted_key(prefix, a.last_offset), v);
    }

    /// Forgets aborted transactions whose marker is in `[from, to)`.
    pub fn delete_aborted(
        &self,
        wb: &mut WriteBatch,
        prefix: &[u8; PREFIX_LEN],
        from: i64,
        to: i64,
    ) {
        wb.delete_range_cf(
            self.cf(CF_META),
            aborted_key(prefix, from),
            aborted_key(prefix, to),
        );
    }

    /// Removes every batch, index entry and the state of one partition.
    pub fn delete_partition(&self, wb: &mut WriteBatch, prefix: &[u8; PREFIX_LEN]) {
        let from = batch_key(prefix, 0);
        let to = batch_key(prefix, i64::MAX);
        wb.delete_range_cf(self.cf(CF_LOG), from, to);
        wb.delete_cf(self.cf(CF_LOG), to);
        wb.delete_range_cf(self.cf(CF_TSIDX), from, to);
        wb.delete_cf(self.cf(CF_TSIDX), to);
        wb.delete_cf(self.cf(CF_META), state_key(prefix));
        wb.delete_cf(self.cf(CF_META), epochs_key(prefix));
        wb.delete_cf(self.cf(CF_META), cleaner_key(prefix));
        wb.delete_range_cf(
            self.cf(CF_META),
            producer_key(prefix, 0),
            producer_key(prefix, i64::MAX),
        );
        wb.delete_cf(self.cf(CF_META), producer_key(prefix, i64::MAX));
        self.delete_aborted(wb, prefix, 0, i64::MAX);
        wb.delete_cf(self.cf(CF_META), aborted_key(prefix, i64::MAX));
    }

    /// Removes every partition of a topic in one write of a few range
    /// deletes, whatever its number of partitions: batches, index entries,
    /// partition state, producer state, epochs and cleaner checkpoints. The
    /// space comes back when [`reclaim_topic`](Self::reclaim_topic) runs.
    pub fn delete_topic_data(&self, wb: &mut WriteBatch, topic_id: &Uuid) {
        let (from, to) = topic_range(&[], topic_id);
        wb.delete_range_cf(self.cf(CF_LOG), &from, &to);
        wb.delete_range_cf(self.cf(CF_TSIDX), &from, &to);
        for kind in [&b"part/"[..], b"prod/", b"epochs/", b"clean/", b"abort/"] {
            let (from, to) = topic_range(kind, topic_id);
            wb.delete_range_cf(self.cf(CF_META), &from, &to);
        }
    }

    /// Gives back the disk space of a deleted topic: drops the files that
    /// hold only its keys, then compacts what is left of its range. Slow on
    /// a large topic; run it off the paths that answer clients.
    pub fn reclaim_topic(&self, topic_id: &Uuid) -> Result<()> {
        let (from, to) = topic_range(&[], topic_id);
        for cf in [CF_LOG, CF_TSIDX] {
            self.db.delete_file_in_range_cf(self.cf(cf), &from, &to)?;
            self.db
                .compact_range_cf(self.cf(cf), Some(&from[..]), Some(&to[..]));
        }
        Ok(())
    }

    pub fn put_topic(&self, wb: &mut WriteBatch, name: &str, json: &[u8]) {
        wb.put_cf(self.cf(CF_META), topic_key(name), json);
    }

    pub fn delete_topic(&self, wb: &mut WriteBatch, name: &str) {
        wb.delete_cf(self.cf(CF_META), topic_key(name));
    }

    /// Keeps the record of a topic this node holds data for although the
    /// metadata no longer names it (an orphan), under its id.
    pub fn put_orphan(&self, wb: &mut WriteBatch, id: &Uuid, json: &[u8]) {
        wb.put_cf(self.cf(CF_META), orphan_key(id), json);
    }

    pub fn delete_orphan(&self, wb: &mut WriteBatch, id: &Uuid) {
        wb.delete_cf(self.cf(CF_META), orphan_key(id));
    }

    /// Every orphan's record (JSON).
    pub fn list_orphans(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), b"orphan/") {
            let (k, v) = item?;
            if !k.starts_with(b"orphan/") {
                break;
            }
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// All stored topics as (name, JSON).
    pub fn list_topics(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let cf = self.cf(CF_META);
        let iter = self.db.prefix_iterator_cf(&cf, b"topic/");
        for item in iter {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(b"topic/") else {
                break;
            };
            out.push((String::from_utf8_lossy(name).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key.as_bytes())?)
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_META), key.as_bytes(), value);
        self.write(wb)
    }

    /// Asks RocksDB to reclaim space under a deleted range now rather than
    /// whenever compaction would reach it.
    pub fn compact_partition(&self, prefix: &[u8; PREFIX_LEN], below: i64) {
        let from = batch_key(prefix, 0);
        let to = batch_key(prefix, below);
        self.db
            .compact_range_cf(self.cf(CF_LOG), Some(&from[..]), Some(&to[..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_state_round_trips() {
        let s = PartitionState {
            log_start_offset: 5,
            next_offset: 1 << 40,
            size_bytes: 12345,
            max_timestamp: -1,
            high_watermark: 3,
        };
        assert_eq!(PartitionState::decode(&s.encode()), Some(s));
        assert_eq!(PartitionState::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn keys_sort_by_partition_then_offset() {
        let t = Uuid::new_v4();
        let p0 = partition_prefix(&t, 0);
        let p1 = partition_prefix(&t, 1);
        assert!(batch_key(&p0, i64::MAX) < batch_key(&p1, 0));
        assert!(batch_key(&p0, 255) < batch_key(&p0, 256));
        assert_eq!(offset_of_key(&batch_key(&p1, 777)), 777);
    }
}
