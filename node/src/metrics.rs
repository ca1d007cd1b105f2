//! Prometheus metrics of a node, served on the admin port at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Where a produce request spends its time: `queue` (waiting for a
/// blocking thread), `append` (validation and the RocksDB writes, write
/// stalls included), `replicate` (acks=all: waiting for the ISR).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// Who waited in a long-poll fetch: `consumer` (Kafka Fetch) or
/// `follower` (replication).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetcherLabels {
    pub fetcher: &'static str,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~10 s.
    Histogram::new(exponential_buckets(0.00001, 2.0, 21))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<ApiLabels, Counter>,
    pub request_seconds: Family<ApiLabels, Histogram>,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub rejected_frames: Family<ReasonLabels, Counter>,
    pub produced_records: Family<TopicLabels, Counter>,
    pub produced_bytes: Family<TopicLabels, Counter>,
    pub produced_batches: Family<TopicLabels, Counter>,
    pub fetched_bytes: Counter,
    pub partitions_led: Gauge,
    pub under_replicated_partitions: Gauge,
    pub fenced: Gauge,
    pub lease_renewal_failures: Counter,
    pub reassignment_fetched_bytes: Counter,
    pub log_size_bytes: Family<TopicLabels, Gauge>,
    pub cleaner_passes: Counter,
    pub cleaner_records_read: Counter,
    pub cleaner_records_removed: Counter,
    pub cleaner_bytes_read: Counter,
    pub cleaner_bytes_written: Counter,
    pub cleaner_busy_seconds: Counter<f64, AtomicU64>,
    pub cleaner_max_dirty_ratio: Gauge<f64, AtomicU64>,
    pub cleaner_uncleanable_partitions: Gauge,
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// SASL authentications by result (success, failure).
    pub authentications: Family<ResultLabels, Counter>,
    pub produce_stage_seconds: Family<StageLabels, Histogram>,
    pub fetch_wake_seconds: Family<FetcherLabels, Histogram>,
    pub fetches_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<ApiLabels, Counter>::default();
        let request_seconds = Family::<ApiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let connections_open = Gauge::default();
        let connections = Counter::default();
        let rejected_frames = Family::<ReasonLabels, Counter>::default();
        let produced_records = Family::<TopicLabels, Counter>::default();
        let produced_bytes = Family::<TopicLabels, Counter>::default();
        let produced_batches = Family::<TopicLabels, Counter>::default();
        let fetched_bytes = Counter::default();
        let partitions_led = Gauge::default();
        let under_replicated_partitions = Gauge::default();
        let fenced = Gauge::default();
        let lease_renewal_failures = Counter::default();
        let reassignment_fetched_bytes = Counter::default();
        registry.register(
            "reassignment_fetched_bytes",
            "Bytes fetched for replicas a reassignment is adding here, under follower.replication.throttled.rate",
            reassignment_fetched_bytes.clone(),
        );
        let log_size_bytes = Family::<TopicLabels, Gauge>::default();
        registry.register(
            "log_size_bytes",
            "Bytes of record batches this node holds, by topic (all partitions, as stored before RocksDB's own compression)",
            log_size_bytes.clone(),
        );
        let cleaner_passes = Counter::default();
        let cleaner_records_read = Counter::default();
        let cleaner_records_removed = Counter::default();
        let cleaner_bytes_read = Counter::default();
        let cleaner_bytes_written = Counter::default();
        let cleaner_busy_seconds = Counter::<f64, AtomicU64>::default();
        let cleaner_max_dirty_ratio = Gauge::<f64, AtomicU64>::default();
        let cleaner_uncleanable_partitions = Gauge::default();
        registry.register(
            "log_cleaner_uncleanable_partitions",
            "Partitions the log cleaner gave up on (data it cannot read) until the node restarts",
            cleaner_uncleanable_partitions.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "kafka_connections_closed",
            "Client connections the node closed or turned away, by reason (idle, read_timeout, max_connections, max_connections_per_ip, bad_frame, tls_handshake, authentication_failed, unauthenticated, ...)",
            connections_closed.clone(),
        );
        let authentications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "kafka_sasl_authentications",
            "SASL authentications by result (success, failure)",
            authentications.clone(),
        );
        for (name, help, c) in [
            (
                "log_cleaner_passes",
                "Log cleaner passes finished",
                &cleaner_passes,
            ),
            (
                "log_cleaner_records_read",
                "Records the log cleaner read while rewriting logs",
                &cleaner_records_read,
            ),
            (
                "log_cleaner_records_removed",
                "Records the log cleaner removed (superseded keys, expired tombstones)",
                &cleaner_records_removed,
            ),
            (
                "log_cleaner_read_bytes",
                "Bytes the log cleaner read",
                &cleaner_bytes_read,
            ),
            (
                "log_cleaner_written_bytes",
                "Bytes of rewritten batches the log cleaner wrote",
                &cleaner_bytes_written,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "log_cleaner_busy_seconds",
            "Time the log cleaner spent in passes, throttling included",
            cleaner_busy_seconds.clone(),
        );
        registry.register(
            "log_cleaner_max_dirty_ratio",
            "Largest share of a compacted partition's log not cleaned yet",
            cleaner_max_dirty_ratio.clone(),
        );
        registry.register(
            "partitions_led",
            "Partitions this node leads",
            partitions_led.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Partitions this node leads whose ISR is smaller than their replica set",
            under_replicated_partitions.clone(),
        );
        registry.register(
            "lease_fenced",
            "1 while this node may not lead: its lease may be about to lapse",
            fenced.clone(),
        );
        registry.register(
            "lease_renewal_failures",
            "Node lease renewals that failed",
            lease_renewal_failures.clone(),
        );
        registry.register(
            "kafka_requests",
            "Kafka requests handled, by API",
            requests.clone(),
        );
        registry.register(
            "kafka_request_duration_seconds",
            "Time to handle a Kafka request, by API (long polls included)",
            request_seconds.clone(),
        );
        registry.register(
            "kafka_connections_open",
            "Open client connections",
            connections_open.clone(),
        );
        registry.register(
            "kafka_connections",
            "Client connections accepted",
            connections.clone(),
        );
        registry.register(
            "kafka_rejected_frames",
            "Frames refused and their connections closed, by reason",
            rejected_frames.clone(),
        );
        registry.register(
            "produced_records",
            "Records appended, by topic",
            produced_records.clone(),
        );
        registry.register(
            "produced_bytes",
            "Record batch bytes appended, by topic",
            produced_bytes.clone(),
        );
        registry.register(
            "produced_batches",
            "Record batches appended, by topic",
            produced_batches.clone(),
        );
        registry.register(
            "fetched_bytes",
            "Record batch bytes served to consumers",
            fetched_bytes.clone(),
        );
        let produce_stage_seconds =
            Family::<StageLabels, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "produce_stage_duration_seconds",
            "Time a produce request spends per stage: queue (for a blocking thread), append (validation and RocksDB writes, stalls included), replicate (acks=all, for the ISR)",
            produce_stage_seconds.clone(),
        );
        let fetch_wake_seconds =
            Family::<FetcherLabels, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "fetch_wake_duration_seconds",
            "From a partition's log end or high watermark moving to the answer of a long-poll fetch that waited for it, by fetcher (consumer, follower)",
            fetch_wake_seconds.clone(),
        );
        let fetches_waiting = Gauge::default();
        registry.register(
            "kafka_fetches_waiting",
            "Kafka fetches parked now, waiting for data (long polls)",
            fetches_waiting.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            request_seconds,
            connections_open,
            connections,
            rejected_frames,
            produced_records,
            produced_bytes,
            produced_batches,
            fetched_bytes,
            partitions_led,
            under_replicated_partitions,
            fenced,
            lease_renewal_failures,
            reassignment_fetched_bytes,
            log_size_bytes,
            cleaner_passes,
            cleaner_records_read,
            cleaner_records_removed,
            cleaner_bytes_read,
            cleaner_bytes_written,
            cleaner_busy_seconds,
            cleaner_max_dirty_ratio,
            cleaner_uncleanable_partitions,
            connections_closed,
            authentications,
            produce_stage_seconds,
            fetch_wake_seconds,
            fetches_waiting,
        }
    }

    pub fn observe_stage(&self, stage: &'static str, seconds: f64) {
        self.produce_stage_seconds
            .get_or_create(&StageLabels { stage })
            .observe(seconds);
    }

    pub fn observe_wake(&self, fetcher: &'static str, seconds: f64) {
        self.fetch_wake_seconds
            .get_or_create(&FetcherLabels { fetcher })
            .observe(seconds);
    }

    pub fn record_append(&self, topic: &str, records: i64, bytes: usize) {
        let l = TopicLabels {
            topic: topic.to_string(),
        };
        self.produced_records
            .get_or_create(&l)
            .inc_by(records.max(0) as u64);
        self.produced_bytes.get_or_create(&l).inc_by(bytes as u64);
        self.produced_batches.get_or_create(&l).inc();
    }

    pub fn set_log_size(&self, topic: &str, bytes: i64) {
        self.log_size_bytes
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .set(bytes);
    }

    pub fn close_connection(&self, reason: &str) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn authentication(&self, result: &str) {
        self.authentications
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn reject_frame(&self, reason: &str) {
        self.rejected_frames
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Exports the store's RocksDB statistics (bytes written by kind,
    /// write stalls, level-0 files, blob files) with every scrape.
    pub fn watch_store(&self, store: &std::sync::Arc<crate::log::Store>) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register_collector(Box::new(StoreCollector(std::sync::Arc::downgrade(store))));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }
}

/// Reads a store's statistics at each scrape; gone with the store.
struct StoreCollector(std::sync::Weak<crate::log::Store>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.0.upgrade() else {
            return Ok(());
        };
        let s = store.stats();
        for (name, help, v) in [
            (
                "store_user_written_bytes",
                "Bytes the node handed to RocksDB in writes",
                s.user_bytes,
            ),
            (
                "store_wal_written_bytes",
                "Bytes RocksDB appended to its write-ahead log",
                s.wal_bytes,
            ),
            (
                "store_flush_written_bytes",
                "Bytes of table files RocksDB wrote flushing memtables",
                s.flush_bytes,
            ),
            (
                "store_compaction_read_bytes",
                "Bytes RocksDB compactions read",
                s.compaction_read_bytes,
            ),
            (
                "store_compaction_written_bytes",
                "Bytes RocksDB compactions wrote",
                s.compaction_write_bytes,
            ),
            (
                "store_blob_written_bytes",
                "Bytes RocksDB wrote to blob files (the log's batches)",
                s.blob_bytes,
            ),
            (
                "store_blob_gc_relocated_bytes",
                "Bytes blob garbage collection moved to new blob files",
                s.blob_gc_bytes,
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let stall = ConstCounter::new(s.stall_micros as f64 / 1e6);
        stall.encode(encoder.encode_descriptor(
            "store_write_stall_seconds",
            "Time RocksDB delayed or stopped writes because flushes or compactions fell behind",
            None,
            stall.metric_type(),
        )?)?;
        for (name, help, v) in [
            (
                "store_log_level0_files",
                "Table files in level 0 of the log column family",
                s.log_l0_files,
            ),
            (
                "store_pending_compaction_bytes",
                "Bytes RocksDB estimates its compactions must still rewrite",
                s.pending_compaction_bytes,
            ),
            (
                "store_log_blob_files",
                "Blob files of the log column family",
                s.blob_files,
            ),
            (
                "store_log_blob_live_bytes",
                "Bytes of the log column family's blob files",
                s.live_blob_bytes,
            ),
            (
                "store_log_blob_garbage_bytes",
                "Bytes in blob files no key points to any more",
                s.garbage_blob_bytes,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
