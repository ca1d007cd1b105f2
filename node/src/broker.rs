//! The node's topics and partitions: creation, deletion, growth (through
//! the cluster's metadata), appends as leader, reads, and retention.
//! Protocol handlers call in here; nothing in this module knows about the
//! wire format of requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_api::{election, isr, placement};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::coord::View;
use crate::coord::{
    BrokerConfigs, CoordError, Coordination, PartitionKey, PartitionRecord, SecurityRecord,
    TopicSpec,
};
use crate::replication::replica::{Replica, Role, Transition};

use crate::config::{validate_topic_name, BrokerDefaults, ConfigError, NodeConfig, TopicConfig};
use crate::log::batch::{self, BatchError, Header};
use crate::log::producers::{self, Refusal, SequenceError};
use crate::log::validate::{self, RecordProblem};
use crate::log::{
    AppendError, Appended, PartitionLog, Read, Store, StoreError, StoreOptions, TimestampType,
    Watch,
};
use crate::metrics::Metrics;

/// The wall clock, in ms since the epoch. For fault tests only,
/// `SLUICE_TEST_CLOCK_SKEW_MS` shifts it (a node whose clock is off): the
/// cluster must never depend on nodes' clocks agreeing.
pub fn now_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("SLUICE_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + skew
}

/// What a topic is, as persisted in the `meta` column family: the
/// coordination's topic spec as this node last applied it.
pub type TopicRecord = TopicSpec;

/// One partition on this node: its log and its replica role.
pub struct Partition {
    pub log: Arc<PartitionLog>,
    pub replica: Arc<Replica>,
    /// Per idempotent producer, the last batch this node refused as leader
    /// with a retriable error, and that error (see [`producers::gap_left_by`]).
    refused: std::sync::Mutex<HashMap<i64, Vec<(Refusal, KafkaError)>>>,
}

/// How often moved high watermarks are written (they also go with every
/// append's write).
const HW_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Refusals remembered per partition at most; past it they are forgotten
/// (a forgotten one only means OUT_OF_ORDER_SEQUENCE_NUMBER, as Kafka answers).
const MAX_REFUSALS: usize = 10_000;

impl std::ops::Deref for Partition {
    type Target = PartitionLog;
    fn deref(&self) -> &PartitionLog {
        &self.log
    }
}

impl Partition {
    fn open(store: &Arc<Store>, id: &Uuid, p: i32) -> Result<Arc<Partition>, StoreError> {
        Ok(Arc::new(Partition {
            log: Arc::new(PartitionLog::open(store.clone(), id, p)?),
            replica: Arc::new(Replica::default()),
            refused: Default::default(),
        }))
    }

    /// Remembers that an idempotent batch was refused with `e`; returns `e`.
    fn refuse(&self, h: &Header, e: KafkaError) -> KafkaError {
        if h.producer_id() >= 0 {
            let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= MAX_REFUSALS {
                m.clear();
            }
            let r = Refusal {
                epoch: h.producer_epoch(),
                first_seq: h.base_sequence(),
            };
            let held = m.entry(h.producer_id()).or_default();
            // A producer has at most five batches in flight, all of one epoch.
            held.retain(|(old, _)| old.epoch == r.epoch && old.first_seq != r.first_seq);
            if held.len() >= producers::REMEMBERED_BATCHES {
                held.remove(0);
            }
            held.push((r, e.clone()));
        }
        e
    }

    /// The answer to a batch whose sequences do not follow: the retriable
    /// error its predecessor was refused with when that refusal left the gap.
    fn sequence_error(&self, h: &Header, e: SequenceError) -> KafkaError {
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let held = m.get(&h.producer_id()).map(Vec::as_slice).unwrap_or(&[]);
        let left = held
            .iter()
            .find(|(r, _)| producers::gap_left_by(&e, h.producer_epoch(), Some(*r)));
        match left {
            Some((r, refused)) => KafkaError::new(
                refused.code,
                format!(
                    "sequence {} follows sequence {} which was refused: {}",
                    h.base_sequence(),
                    r.first_seq,
                    refused.message
                ),
            ),
            _ => AppendError::Sequence(e).into(),
        }
    }

    fn appended_by(&self, h: &Header) {
        if h.producer_id() >= 0 {
            let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if !m.is_empty() {
                m.remove(&h.producer_id());
            }
        }
    }
}

/// A live topic. Immutable: changes replace the whole value in the registry,
/// sharing the partitions that stay.
pub struct Topic {
    pub record: TopicRecord,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    pub fn partition(&self, p: i32) -> Option<&Arc<Partition>> {
        usize::try_from(p).ok().and_then(|i| self.partitions.get(i))
    }
}

/// An error with the Kafka code it answers with and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct KafkaError {
    pub code: ResponseError,
    pub message: String,
    /// Produce: the records of the batch that caused the error, by index
    /// (KIP-467); empty when the batch failed as a whole.
    pub record_errors: Vec<(i32, String)>,
}

impl KafkaError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> KafkaError {
        KafkaError {
            code,
            message: message.into(),
            record_errors: vec![],
        }
    }
    pub fn code(&self) -> i16 {
        self.code.code()
    }
}

impl From<StoreError> for KafkaError {
    fn from(e: StoreError) -> Self {
        match e {
            // One bad batch on disk fails the request that read it, not the
            // node's storage.
            StoreError::Corrupt { .. } => {
                tracing::warn!(error = %e, "corrupt stored data");
                KafkaError::new(ResponseError::CorruptMessage, e.to_string())
            }
            // Said once when writes start failing (the store logs it), not
            // once per request.
            _ => KafkaError::new(ResponseError::KafkaStorageError, e.to_string()),
        }
    }
}

impl From<AppendError> for KafkaError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Store(e) => e.into(),
            AppendError::Replication(m) => KafkaError::new(ResponseError::UnknownServerError, m),
            AppendError::TxnEnded => KafkaError::new(ResponseError::InvalidTxnState, e.to_string()),
            AppendError::Sequence(e) => {
                let code = match e {
                    SequenceError::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch,
                    SequenceError::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber,
                    SequenceError::UnknownProducer { .. } => ResponseError::UnknownProducerId,
                };
                KafkaError::new(code, e.to_string())
            }
        }
    }
}

impl From<ConfigError> for KafkaError {
    fn from(e: ConfigError) -> Self {
        KafkaError::new(ResponseError::InvalidConfig, e.to_string())
    }
}

impl From<BatchError> for KafkaError {
    fn from(e: BatchError) -> Self {
        let code = match &e {
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::NotOneBatch | BatchError::InvalidCount => ResponseError::InvalidRecord,
            BatchError::Undecodable(_) => ResponseError::CorruptMessage,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::UnknownCompression(_) => ResponseError::UnsupportedCompressionType,
            BatchError::Truncated | BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage,
            // The first bad record decides the code, as in Kafka.
            BatchError::InvalidRecords(errors) => match errors[0].problem {
                RecordProblem::InvalidRecord => ResponseError::InvalidRecord,
                RecordProblem::InvalidTimestamp => ResponseError::InvalidTimestamp,
            },
        };
        let mut k = KafkaError::new(code, e.to_string());
        if let BatchError::InvalidRecords(errors) = e {
            k.record_errors = errors.into_iter().map(|r| (r.index, r.message)).collect();
        }
        k
    }
}

pub type KResult<T> = Result<T, KafkaError>;

/// What is stored of a produced batch whose every record passed the
/// validator: recompressed to the topic's `compression.type` when that is
/// not `producer`; with its header's max timestamp corrected when a
/// `CreateTime` batch's records disagree with it (as Kafka does); else the
/// batch as sent.
fn convert(
    b: &Bytes,
    checked: validate::Checked,
    config: &TopicConfig,
) -> Result<Bytes, BatchError> {
    let h = Header::parse(b)?;
    if let Some(c) = config
        .compression
        .filter(|c| *c as i16 != h.compression() && !h.is_control())
    {
        return Ok(batch::rebuild(&h, checked.records, c)?.freeze());
    }
    let create_time = config.message_timestamp_type == TimestampType::CreateTime;
    if create_time && !h.log_append_time() && h.max_timestamp() != checked.max_timestamp {
        let mut fixed = bytes::BytesMut::from(&b[..]);
        batch::set_max_timestamp(&mut fixed, checked.max_timestamp);
        return Ok(fixed.freeze());
    }
    Ok(b.clone())
}

/// Internal topics (`__consumer_offsets`, `__transaction_state`) are the node's own state: admin
/// operations that would delete, move or reshape their data are refused.
pub fn refuse_internal(name: &str) -> KResult<()> {
    if is_internal(name) {
        return Err(KafkaError::new(
            ResponseError::InvalidTopicException,
            format!("{name} is an internal topic and cannot be changed this way"),
        ));
    }
    Ok(())
}

pub fn is_internal(name: &str) -> bool {
    name == sluice_api::OFFSETS_TOPIC || name == sluice_api::TRANSACTION_STATE_TOPIC
}

pub fn no_such_topic(name: &str) -> KafkaError {
    KafkaError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name} does not exist"),
    )
}

/// A topic creation request, after defaults are applied by the caller.
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// A manual replica assignment (CreateTopics with assignments).
    pub assignment: Option<Vec<Vec<i32>>>,
}

/// What applying a view changed.
#[derive(Debug, Default)]
pub struct ViewApplied {
    /// Replica role changes: (topic, partition, transition).
    pub transitions: Vec<(String, i32, Transition)>,
    /// Topics being deleted whose data this node has dropped (or never had),
    /// not reported yet.
    pub dropped: Vec<(String, Uuid)>,
}

/// How long admin requests wait for this node to see their own change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broker {
    pub config: NodeConfig,
    pub cluster_id: String,
    pub metrics: Arc<Metrics>,
    pub coord: Arc<dyn Coordination>,
    store: Arc<Store>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Topics whose data this node keeps although the metadata no longer
    /// names them (their Topic objects were lost, not deleted), by id.
    orphans: RwLock<BTreeMap<Uuid, Arc<Topic>>>,
    view: RwLock<Arc<View>>,
    /// Topic defaults in force: the static ones under the dynamic broker
    /// configs of the last view applied.
    defaults: RwLock<Arc<BrokerDefaults>>,
    /// Woken after every view applied.
    applied: Notify,
    producer_ids: std::sync::Mutex<ProducerIdBlock>,
    /// Until when (ms on [`mono_ms`]'s clock) this node may act as a leader:
    /// a little less than a lease after its last successful renewal began.
    lease_valid_until: AtomicI64,
    /// When (ms on [`mono_ms`]'s clock) the read of the last applied view
    /// began: a node back from a lease gap leads again only on a view read
    /// after it renewed.
    view_read_at: AtomicI64,
    /// Set once this node shuts down on purpose (see [`Broker::leave`]).
    leaving: watch::Sender<bool>,
    /// Mutual TLS to the other nodes (`--replication-tls`), set at start.
    pub node_tls: std::sync::OnceLock<Arc<crate::security::grpc::NodeTls>>,
    me: std::sync::Weak<Broker>,
}

pub use crate::coord::mono_ms;

/// Producer ids are the node id in the high bits and a counter below, so they
/// are unique across the cluster without coordination. The counter is
/// reserved in blocks persisted before use, so a restart never reuses an id.
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

const PRODUCER_ID_BLOCK: i64 = 1000;
const PRODUCER_ID_NODE_SHIFT: u32 = 40;

const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;

fn not_leader(topic: &str, partition: i32, role: &Role) -> KafkaError {
    let who = match role {
        Role::Follower { leader, .. } => format!("node {leader} leads it"),
        Role::Leader { .. } => "this node's lease is not current".to_string(),
        Role::None => "it has no leader on this node".to_string(),
    };
    KafkaError::new(
        ResponseError::NotLeaderOrFollower,
        format!("this node does not lead {topic}-{partition}: {who}"),
    )
}

fn no_partition(topic: &str, partition: i32) -> KafkaError {
    KafkaError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("{topic}-{partition} does not exist"),
    )
}

pub use sluice_coord::MAX_SECURITY_RECORD_BYTES;

fn coord_error(e: CoordError) -> KafkaError {
    match e {
        CoordError::AlreadyExists(m) => KafkaError::new(ResponseError::TopicAlreadyExists, m),
        CoordError::NotFound(m) => KafkaError::new(ResponseError::UnknownTopicOrPartition, m),
        CoordError::Conflict(m) => {
            KafkaError::new(ResponseError::ConcurrentTransactions, format!("{m}; retry"))
        }
        CoordError::Backend(m) => KafkaError::new(ResponseError::UnknownServerError, m),
    }
}

/// A Kafka error a metadata error maps to (see [`coord_error`]).
struct StoreRefusal(KafkaError);

impl From<CoordError> for StoreRefusal {
    fn from(e: CoordError) -> StoreRefusal {
        StoreRefusal(coord_error(e))
    }
}

fn invalid_assignment(m: String) -> KafkaError {
    KafkaError::new(ResponseError::InvalidReplicaAssignment, m)
}

impl Broker {
    /// Opens the node's store and loads every topic it holds. Roles come
    /// with the first view of the cluster ([`apply_view`](Self::apply_view)).
    pub fn open(
        config: NodeConfig,
        metrics: Arc<Metrics>,
        coord: Arc<dyn Coordination>,
    ) -> anyhow::Result<Arc<Broker>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(
            &config.data_dir.join("rocksdb"),
            StoreOptions {
                sync_writes: config.sync_writes,
                max_decompressed: config.max_decompressed_batch_bytes,
            },
        )?;
        metrics.watch_store(&store);
        let cluster_id = match (&config.cluster_id, store.get_meta("cluster_id")?) {
            (Some(id), _) => id.clone(),
            (None, Some(v)) => String::from_utf8_lossy(&v).into_owned(),
            (None, None) => {
                let id = Uuid::new_v4().simple().to_string()[..22].to_string();
                store.put_meta("cluster_id", id.as_bytes())?;
                id
            }
        };
        // A topic as stored: its record and its partitions opened.
        let open = |json: &[u8], what: &str| -> anyhow::Result<Arc<Topic>> {
            let record: TopicRecord = serde_json::from_slice(json)
                .map_err(|e| anyhow::anyhow!("{what} has unreadable metadata: {e}"))?;
            let config = config
                .defaults
                .resolve_topic(&record.name, &record.configs)?;
            let partitions = (0..record.partitions)
                .map(|p| Partition::open(&store, &record.id, p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(Topic {
                record,
                config,
                partitions,
            }))
        };
        let mut topics = BTreeMap::new();
        for (name, json) in store.list_topics()? {
            let t = open(&json, &format!("topic {name}"))?;
            topics.insert(name, t);
        }
        let mut orphans = BTreeMap::new();
        for json in store.list_orphans()? {
            let t = open(&json, "a kept topic")?;
            orphans.insert(t.record.id, t);
        }
        tracing::info!(
            topics = topics.len(),
            kept = orphans.len(),
            cluster_id,
            "store opened"
        );
        Ok(Arc::new_cyclic(|me| Broker {
            me: me.clone(),
            cluster_id,
            metrics,
            coord,
            store,
            topics: RwLock::new(topics),
            orphans: RwLock::new(orphans),
            view: RwLock::new(Arc::new(View::default())),
            defaults: RwLock::new(Arc::new(config.defaults.clone())),
            applied: Notify::new(),
            producer_ids: std::sync::Mutex::new(ProducerIdBlock { next: 0, end: 0 }),
            lease_valid_until: AtomicI64::new(i64::MIN),
            view_read_at: AtomicI64::new(i64::MIN),
            leaving: watch::channel(false).0,
            node_tls: std::sync::OnceLock::new(),
            config,
        }))
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// Topic defaults in force (static, under dynamic broker configs).
    pub fn defaults(&self) -> Arc<BrokerDefaults> {
        self.defaults.read().expect("defaults lock").clone()
    }

    /// This broker as an `Arc`, for tasks it starts.
    pub fn me(&self) -> Option<Arc<Broker>> {
        self.me.upgrade()
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| &t.record.id == id)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Topics whose data this node keeps though the metadata no longer
    /// names them, by name (announced in the node's lease).
    pub fn orphans(&self) -> BTreeMap<String, Uuid> {
        self.orphans
            .read()
            .expect("orphans lock")
            .values()
            .map(|t| (t.record.name.clone(), t.record.id))
            .collect()
    }

    /// The cluster as this node last read it.
    pub fn view(&self) -> Arc<View> {
        self.view.read().expect("view lock").clone()
    }

    /// A renewal of this node's lease that began at `sent_mono_ms`
    /// succeeded: leading is allowed until 60% of a lease after it, well
    /// before the lease can lapse and a controller can elect someone else.
    pub fn lease_renewed(&self, sent_mono_ms: i64) {
        let until = sent_mono_ms + self.config.lease_duration_ms * 3 / 5;
        self.lease_valid_until.fetch_max(until, Ordering::AcqRel);
    }

    /// A view whose read began at `read_at_mono_ms` has been applied.
    pub fn view_read(&self, read_at_mono_ms: i64) {
        self.view_read_at
            .fetch_max(read_at_mono_ms, Ordering::AcqRel);
    }

    /// Whether the last applied view was read at or after `mono_ms`.
    pub fn view_read_since(&self, mono_ms: i64) -> bool {
        self.view_read_at.load(Ordering::Acquire) >= mono_ms
    }

    /// Starts a controlled shutdown: the next lease renewal (at once) says
    /// this node is leaving, and the controller moves its leaderships away.
    pub fn leave(&self) {
        self.leaving.send_replace(true);
    }

    /// Whether this node is shutting down on purpose, and a way to be told
    /// when it starts.
    pub fn leaving(&self) -> watch::Receiver<bool> {
        self.leaving.subscribe()
    }

    /// How many partitions the last applied view has this node leading
    /// that another in-sync replica, alive and staying, could lead.
    pub fn partitions_led(&self) -> usize {
        let me = self.config.node_id;
        let view = self.view();
        let staying =
            |id: i32| id != me && view.alive(id) && view.node(id).is_some_and(|n| !n.info.leaving);
        view.records
            .values()
            .flatten()
            .flatten()
            .filter(|r| r.value.leader == Some(me) && r.value.isr.iter().any(|x| staying(*x)))
            .count()
    }

    /// Whether this node must not act as a leader now: its lease may be
    /// about to lapse (self-fencing).
    pub fn fenced(&self) -> bool {
        mono_ms() >= self.lease_valid_until.load(Ordering::Acquire)
    }

    /// While writes fail (a full disk), tries a small write every second,
    /// so storage is seen working again (readiness, the error cleared) as
    /// soon as RocksDB has recovered, even when no client writes. RocksDB
    /// resumes by itself once the disk has a memtable's worth of room.
    pub async fn storage_watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if self.store.write_failure().is_none() {
                continue;
            }
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.put_meta("storage_probe", &now_ms().to_be_bytes())
            })
            .await;
        }
    }

    /// Whether this node can serve, or why not: its storage refuses
    /// writes, or its lease is not current (it is fenced).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(e) = self.store.write_failure() {
            return Err(format!(
                "storage refuses writes: {e} (after a full disk, writes resume by themselves once a memtable's worth, 64 MiB, is free)"
            ));
        }
        if self.fenced() {
            return Err("this node's lease is not current: it may not lead until it renews".into());
        }
        Ok(())
    }

    /// A new producer id, unique across the cluster and across restarts.
    pub fn allocate_producer_id(&self) -> KResult<i64> {
        let mut block = self.producer_ids.lock().expect("producer id lock");
        if block.next >= block.end {
            let start = match self.store.get_meta("producer_id_next")? {
                Some(v) if v.len() == 8 => i64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                _ => 0,
            };
            let end = start + PRODUCER_ID_BLOCK;
            self.store
                .put_meta("producer_id_next", &end.to_be_bytes())?;
            *block = ProducerIdBlock { next: start, end };
        }
        let counter = block.next;
        block.next += 1;
        Ok((i64::from(self.node_id()) << PRODUCER_ID_NODE_SHIFT) | counter)
    }

    /// Nodes replicas can be placed on: those with a live lease, read from
    /// the metadata now (this node's view may not have seen a node that
    /// just joined).
    pub async fn live_nodes(&self) -> KResult<Vec<placement::Node>> {
        let now = mono_ms();
        Ok(self
            .coord
            .nodes()
            .await
            .map_err(coord_error)?
            .iter()
            .filter(|n| n.alive(now))
            .map(|n| placement::Node {
                id: n.info.id,
                rack: n.info.rack.clone(),
            })
            .collect())
    }

    fn persist(&self, record: &TopicRecord) -> KResult<()> {
        let json = serde_json::to_vec(record).expect("topic record serializes");
        let mut wb = rocksdb::WriteBatch::default();
        self.store.put_topic(&mut wb, &record.name, &json);
        self.store.write(wb)?;
        Ok(())
    }

    /// Makes this node's topics and replica roles match the cluster's
    /// metadata: creates, grows and reconfigures local topics, drops the data
    /// of topics deleted on purpose, keeps (without serving) the data of
    /// topics the metadata no longer names, then applies every partition
    /// record. Returns the role changes and the deleted topics whose data it
    /// dropped (to report).
    pub fn apply_view(&self, view: View) -> KResult<ViewApplied> {
        let me = self.node_id();
        // The view first: whoever sees a topic change below also sees the
        // metadata it came from (the versions the next change is based on).
        let view = Arc::new(view);
        *self.view.write().expect("view lock") = view.clone();
        let defaults = Arc::new(self.config.defaults.with_dynamic(
            view.broker_configs(None).map(|c| &c.value.configs),
            view.broker_configs(Some(me)).map(|c| &c.value.configs),
        ));
        let defaults_changed = {
            let mut d = self.defaults.write().expect("defaults lock");
            let changed = **d != *defaults;
            *d = defaults.clone();
            changed
        };
        if defaults_changed {
            tracing::info!(dynamic = ?defaults.dynamic, "dynamic broker configs changed");
        }
        // Topics this node stops serving (deleted, or no longer named).
        let mut unserved: Vec<Arc<Topic>> = vec![];
        // Deleted topics whose data this node has dropped, to report.
        let mut dropped: Vec<(String, Uuid)> = vec![];
        {
            let mut topics = self.topics.write().expect("topics lock");
            let mut orphans = self.orphans.write().expect("orphans lock");
            // 1. Deleted on purpose: the data goes, and the node says so.
            for (name, v) in view.topics.iter().filter(|(_, v)| v.value.deleting) {
                let spec = &v.value;
                let served = topics
                    .get(name)
                    .filter(|t| t.record.id == spec.id)
                    .is_some();
                let local = if served {
                    topics.remove(name)
                } else {
                    orphans.remove(&spec.id)
                };
                if let Some(t) = local {
                    for p in &t.partitions {
                        p.log.close();
                    }
                    // One write whatever the partition count: the topic's
                    // record and range deletes over its data.
                    let mut wb = rocksdb::WriteBatch::default();
                    if served {
                        self.store.delete_topic(&mut wb, name);
                    }
                    self.store.delete_orphan(&mut wb, &spec.id);
                    self.store.delete_topic_data(&mut wb, &spec.id);
                    self.store.write(wb)?;
                    tracing::info!(topic = %name, partitions = t.partitions.len(), "topic deleted: its data is dropped");
                    self.reclaim(spec.id);
                    unserved.push(t);
                }
                if !spec.dropped_on.contains(&me) {
                    dropped.push((name.clone(), spec.id));
                }
            }
            // 2. No longer named by the metadata (its Topic object lost, not
            //    deleted), or named with another id: not served, data kept.
            let gone: Vec<String> = topics
                .iter()
                .filter(|(name, t)| {
                    view.topics
                        .get(*name)
                        .is_none_or(|v| v.value.id != t.record.id)
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                let t = topics.remove(&name).expect("listed");
                let json = serde_json::to_vec(&t.record).expect("topic record serializes");
                let mut wb = rocksdb::WriteBatch::default();
                self.store.delete_topic(&mut wb, &name);
                self.store.put_orphan(&mut wb, &t.record.id, &json);
                self.store.write(wb)?;
                tracing::warn!(topic = %name, id = %t.record.id, "topic no longer in the cluster metadata: its data is kept, not served");
                unserved.push(t.clone());
                orphans.insert(t.record.id, t);
            }
            // 3. Named by the metadata: served (an orphan of the same id
            //    comes back with its data).
            for (name, spec) in view.topics.iter().filter(|(_, v)| !v.value.deleting) {
                let spec = &spec.value;
                let mut current = topics.get(name).cloned();
                if current.is_none() {
                    if let Some(t) = orphans.remove(&spec.id) {
                        let mut wb = rocksdb::WriteBatch::default();
                        self.store.delete_orphan(&mut wb, &spec.id);
                        self.store.write(wb)?;
                        tracing::info!(topic = %name, id = %spec.id, "topic back in the cluster metadata: its kept data is served again");
                        current = Some(t);
                    }
                }
                let changed_record = current.as_ref().is_none_or(|t| t.record != *spec);
                if !defaults_changed && !changed_record && topics.contains_key(name) {
                    continue;
                }
                let config = defaults.resolve_topic(name, &spec.configs).unwrap_or_else(|e| {
                    tracing::warn!(topic = %name, error = %e, "stored topic configs are invalid here; using defaults");
                    defaults
                        .resolve(&BTreeMap::new())
                        .expect("defaults are valid")
                });
                let mut partitions = current
                    .as_ref()
                    .map(|t| t.partitions.clone())
                    .unwrap_or_default();
                for p in partitions.len() as i32..spec.partitions {
                    partitions.push(Partition::open(&self.store, &spec.id, p)?);
                }
                if topics.contains_key(name)
                    && current
                        .as_ref()
                        .is_some_and(|t| t.record == *spec && t.config == config)
                {
                    continue;
                }
                self.persist(spec)?;
                match &current {
                    None => {
                        tracing::info!(topic = %name, partitions = spec.partitions, "topic created")
                    }
                    Some(_) => {
                        tracing::info!(topic = %name, partitions = spec.partitions, configs = ?spec.configs, "topic changed")
                    }
                }
                topics.insert(
                    name.clone(),
                    Arc::new(Topic {
                        record: spec.clone(),
                        config,
                        partitions,
                    }),
                );
            }
        }
        for t in unserved {
            for p in &t.partitions {
                p.replica.apply(me, None, 0, 0);
            }
        }
        let now = now_ms();
        let mut transitions = vec![];
        for t in self.topics() {
            let records = view.topic_records(&t.record.name);
            for (i, p) in t.partitions.iter().enumerate() {
                let rec = records
                    .and_then(|r| r.get(i))
                    .and_then(|r| r.as_ref())
                    .map(|v| (&v.value, v.version));
                let tr = p.replica.apply(me, rec, now, p.log.log_end_offset());
                // Moved off this node (a completed or cancelled
                // reassignment): its local copy is reclaimed.
                let removed = rec.is_some_and(|(r, _)| !r.replicas.contains(&me));
                if removed && (p.log.log_end_offset() > 0 || p.log.size_bytes() > 0) {
                    p.log.reset_to(0)?;
                    tracing::info!(topic = %t.record.name, partition = i, "replica removed from this node; its data reclaimed");
                }
                if tr != Transition::Unchanged {
                    tracing::info!(topic = %t.record.name, partition = i, transition = ?tr, role = ?p.replica.role(), "replica role changed");
                    transitions.push((t.record.name.clone(), i as i32, tr));
                }
            }
        }
        // Roles may have moved: parked fetches and waiting produces
        // re-check (appends and high watermark moves wake them through
        // their partition's PartitionLog::changed).
        self.applied.notify_waiters();
        Ok(ViewApplied {
            transitions,
            dropped,
        })
    }

    /// Gives a deleted topic's disk space back in the background.
    fn reclaim(&self, id: Uuid) {
        let store = self.store.clone();
        let run = move || {
            let started = Instant::now();
            match store.reclaim_topic(&id) {
                Ok(()) => {
                    tracing::info!(topic_id = %id, seconds = started.elapsed().as_secs_f64(), "deleted topic's space reclaimed")
                }
                Err(e) => {
                    tracing::warn!(topic_id = %id, error = %e, "reclaiming a deleted topic's space failed; compaction will")
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Resolves when the next view has been applied.
    pub fn next_view(&self) -> tokio::sync::futures::Notified<'_> {
        self.applied.notified()
    }

    /// Waits until this node has applied a view in which `done` holds.
    async fn until_applied(&self, what: &str, done: impl Fn(&Broker) -> bool) -> KResult<()> {
        let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
        loop {
            let notified = self.applied.notified();
            if done(self) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(KafkaError::new(
                    ResponseError::RequestTimedOut,
                    format!("{what} was stored but this node has not seen it yet"),
                ));
            }
        }
    }

    /// Checks a creation request and places its replicas, changing nothing.
    pub async fn plan_new_topic(&self, t: &NewTopic) -> KResult<(TopicConfig, Vec<Vec<i32>>)> {
        validate_topic_name(&t.name)
            .map_err(|m| KafkaError::new(ResponseError::InvalidTopicException, m))?;
        if let Some(v) = self.view().topics.get(&t.name) {
            let why = if v.value.deleting {
                "is marked for deletion"
            } else {
                "already exists"
            };
            return Err(KafkaError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} {why}", t.name),
            ));
        }
        if self.topic(&t.name).is_some() {
            return Err(KafkaError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} already exists", t.name),
            ));
        }
        if t.partitions < 1 || t.partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {}",
                    t.partitions
                ),
            ));
        }
        let nodes = self.live_nodes().await?;
        if t.replication_factor < 1 || usize::from(t.replication_factor as u16) > nodes.len() {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is not possible with {} live node(s)",
                    t.replication_factor,
                    nodes.len()
                ),
            ));
        }
        let config = self.defaults().resolve_topic(&t.name, &t.configs)?;
        let assignment = match &t.assignment {
            Some(a) => {
                self.check_assignment(a, &nodes)?;
                a.clone()
            }
            None => placement::assign(
                &nodes,
                &[],
                t.partitions as usize,
                t.replication_factor as usize,
            )
            .map_err(|e| KafkaError::new(ResponseError::InvalidReplicationFactor, e.to_string()))?,
        };
        Ok((config, assignment))
    }

    fn check_assignment(&self, a: &[Vec<i32>], nodes: &[placement::Node]) -> KResult<()> {
        for (p, replicas) in a.iter().enumerate() {
            let mut seen = replicas.clone();
            seen.sort_unstable();
            seen.dedup();
            if replicas.is_empty() || seen.len() != replicas.len() {
                return Err(invalid_assignment(format!(
                    "partition {p}: replicas {replicas:?} must be distinct and not empty"
                )));
            }
            if let Some(r) = replicas.iter().find(|r| !nodes.iter().any(|n| n.id == **r)) {
                return Err(invalid_assignment(format!(
                    "partition {p}: node {r} is not a live node ({:?})",
                    nodes.iter().map(|n| n.id).collect::<Vec<_>>()
                )));
            }
        }
        Ok(())
    }

    /// Creates a topic: places its replicas, stores it in the cluster's
    /// metadata and returns once this node serves it.
    pub async fn create_topic(&self, t: NewTopic) -> KResult<Arc<Topic>> {
        let (_, assignment) = self.plan_new_topic(&t).await?;
        let spec = TopicSpec::new(
            &t.name,
            Uuid::new_v4(),
            t.partitions,
            t.replication_factor,
            t.configs,
        );
        let id = spec.id;
        let records = assignment.into_iter().map(PartitionRecord::new).collect();
        self.coord
            .create_topic(spec, records)
            .await
            .map_err(coord_error)?;
        self.until_applied("the new topic", |b| {
            b.topic(&t.name).is_some_and(|x| x.record.id == id)
        })
        .await?;
        self.topic(&t.name).ok_or_else(|| no_such_topic(&t.name))
    }

    /// Creates a topic with the node's defaults when auto-creation is on.
    pub async fn auto_create(&self, name: &str) -> KResult<Arc<Topic>> {
        let rf = self
            .config
            .default_replication_factor
            .min(self.live_nodes().await?.len().max(1) as i16);
        match self
            .create_topic(NewTopic {
                name: name.to_string(),
                partitions: self.config.num_partitions,
                replication_factor: rf,
                configs: BTreeMap::new(),
                assignment: None,
            })
            .await
        {
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {
                self.until_applied("the topic", |b| b.topic(name).is_some())
                    .await?;
                self.topic(name).ok_or_else(|| no_such_topic(name))
            }
            other => other,
        }
    }

    pub async fn delete_topic(&self, name: &str) -> KResult<Uuid> {
        refuse_internal(name)?;
        let id = self
            .view()
            .topics
            .get(name)
            .map(|t| t.value.id)
            .ok_or_else(|| no_such_topic(name))?;
        self.coord.delete_topic(name).await.map_err(coord_error)?;
        // Answered once the deletion is complete: every node that held the
        // topic dropped its data and the controller removed it (a node that
        // is down holds it up, as in Kafka).
        self.until_applied("the deletion", |b| {
            b.view().topics.get(name).is_none_or(|t| t.value.id != id)
        })
        .await
        .map_err(|_| {
            KafkaError::new(
                ResponseError::RequestTimedOut,
                format!("{name} is being deleted; it is removed once every node that holds it has dropped its data"),
            )
        })?;
        Ok(id)
    }

    /// A topic's spec as stored now (not as last applied here), for a
    /// compare-and-swap based on it.
    async fn stored_topic(&self, name: &str) -> KResult<crate::coord::Versioned<TopicSpec>> {
        self.coord
            .topic(name)
            .await
            .map_err(coord_error)?
            .filter(|t| !t.value.deleting)
            .ok_or_else(|| no_such_topic(name))
    }

    /// A partition's record as stored now, for a compare-and-swap based on it.
    async fn stored_partition(
        &self,
        key: &PartitionKey,
    ) -> KResult<crate::coord::Versioned<PartitionRecord>> {
        self.coord
            .partition(key)
            .await
            .map_err(coord_error)?
            .ok_or_else(|| no_partition(&key.topic, key.partition))
    }

    /// Grows a topic to `count` partitions (CreatePartitions), placing the
    /// new ones with the placement rules or as `assignment` says.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> KResult<()> {
        refuse_internal(name)?;
        let view = self.view();
        let spec = &self.stored_topic(name).await?;
        let have = spec.value.partitions;
        if count <= have || count > MAX_PARTITIONS_PER_TOPIC {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {have} partitions; the new count must be larger (and at most {MAX_PARTITIONS_PER_TOPIC}), got {count}"),
            ));
        }
        let nodes = self.live_nodes().await?;
        let existing = view.replica_lists(name);
        let added: Vec<Vec<i32>> = match assignment {
            Some(a) => {
                if a.len() != (count - have) as usize {
                    return Err(invalid_assignment(format!(
                        "{} assignments given for {} new partitions",
                        a.len(),
                        count - have
                    )));
                }
                self.check_assignment(&a, &nodes)?;
                a
            }
            None => {
                let rf = usize::from(spec.value.replication_factor as u16);
                let all =
                    placement::assign(&nodes, &existing, count as usize, rf).map_err(|e| {
                        KafkaError::new(ResponseError::InvalidReplicationFactor, e.to_string())
                    })?;
                all[have as usize..].to_vec()
            }
        };
        if validate_only {
            return Ok(());
        }
        let records = added.into_iter().map(PartitionRecord::new).collect();
        self.coord
            .create_partitions(name, have, records)
            .await
            .map_err(coord_error)?;
        let mut next = spec.value.clone();
        next.partitions = count;
        self.coord
            .update_topic(next, spec.version)
            .await
            .map_err(coord_error)?;
        self.until_applied("the new partitions", |b| {
            b.topic(name).is_some_and(|t| t.record.partitions == count)
        })
        .await
    }

    /// Replaces a topic's dynamic configs as a whole (AlterConfigs, and
    /// IncrementalAlterConfigs after its operations are applied). Validated
    /// first; nothing changes unless everything is valid. Takes effect at once:
    /// appends, fetches and retention read the topic's config on every use.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> KResult<()> {
        refuse_internal(name)?;
        let spec = self.stored_topic(name).await?;
        self.defaults().resolve(&configs)?;
        if validate_only {
            return Ok(());
        }
        let mut next = spec.value.clone();
        next.configs = configs.clone();
        self.coord
            .update_topic(next, spec.version)
            .await
            .map_err(coord_error)?;
        self.until_applied("the new configs", |b| {
            b.topic(name).is_some_and(|t| t.record.configs == configs)
        })
        .await
    }

    /// Replaces the dynamic broker configs of one node (`Some(id)`) or the
    /// cluster (`None`) as a whole. Validated first; nothing changes unless
    /// everything is valid. Every node re-resolves its topics' configs from
    /// the new defaults when it applies them.
    pub async fn alter_broker_configs(
        &self,
        node: Option<i32>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> KResult<()> {
        crate::config::validate_broker_configs(&configs)?;
        if validate_only {
            return Ok(());
        }
        let current = self
            .coord
            .broker_configs()
            .await
            .map_err(coord_error)?
            .into_iter()
            .find(|c| c.value.node == node);
        let next = BrokerConfigs {
            node,
            configs: configs.clone(),
        };
        self.coord
            .put_broker_configs(next, current.map(|c| c.version))
            .await
            .map_err(coord_error)?;
        self.until_applied("the new broker configs", |b| {
            b.view()
                .broker_configs(node)
                .is_some_and(|c| c.value.configs == configs)
        })
        .await
    }

    /// Changes the stored security record (users' credentials, ACLs) by
    /// compare-and-swap: `change` gets the current record and returns the
    /// next one, or `None` when nothing is to be written. Retried on a
    /// concurrent change; answered once this node has applied it.
    pub async fn update_security(
        &self,
        change: impl Fn(SecurityRecord) -> Option<SecurityRecord>,
    ) -> KResult<()> {
        let written = sluice_coord::update_security(self.coord.as_ref(), |current| {
            let Some(next) = change(current) else {
                return Ok(None);
            };
            let size = serde_json::to_vec(&next).map_or(0, |b| b.len());
            if size > MAX_SECURITY_RECORD_BYTES {
                return Err(StoreRefusal(KafkaError::new(
                    ResponseError::PolicyViolation,
                    format!(
                        "the users and ACLs would take {size} bytes, more than the {MAX_SECURITY_RECORD_BYTES} the cluster's metadata keeps for them; remove some first"
                    ),
                )));
            }
            Ok(Some(next))
        })
        .await
        .map_err(|StoreRefusal(e)| e);
        match written {
            Ok(Some(v)) => {
                self.until_applied("the security change", |b| {
                    b.view().security.as_ref().is_some_and(|s| s.version >= v)
                })
                .await
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The dynamic broker configs stored for one node or the cluster.
    pub fn dynamic_broker_configs(&self, node: Option<i32>) -> BTreeMap<String, String> {
        self.view()
            .broker_configs(node)
            .map(|c| c.value.configs.clone())
            .unwrap_or_default()
    }

    /// ElectLeaders for one partition: `preferred` moves leadership to the
    /// first replica when it is alive and in sync; unclean elects any live
    /// replica when no in-sync one is alive (the partition is offline).
    /// Written by compare-and-swap, answered once this node has applied it.
    pub async fn elect_leader(&self, topic: &str, partition: i32, preferred: bool) -> KResult<()> {
        let key = PartitionKey::new(topic, partition);
        let rec = self.stored_partition(&key).await?;
        let now = mono_ms();
        let nodes = self.coord.nodes().await.map_err(coord_error)?;
        let alive = |id: i32| nodes.iter().any(|n| n.info.id == id && n.alive(now));
        let current = &rec.value;
        let not_needed = |m: &str| KafkaError::new(ResponseError::ElectionNotNeeded, m);
        let next = if preferred {
            let first = current.replicas.first().copied();
            if current.leader == first {
                return Err(not_needed("the preferred replica leads already"));
            }
            let opts = election::ElectionOptions {
                unclean: false,
                preferred: true,
            };
            election::elect(current, alive, opts)
                .filter(|n| n.leader == first)
                .ok_or_else(|| {
                    KafkaError::new(
                        ResponseError::PreferredLeaderNotAvailable,
                        format!("preferred replica {first:?} is not alive and in sync"),
                    )
                })?
        } else {
            if current.leader.is_some_and(alive) {
                return Err(not_needed("the partition has a live leader"));
            }
            let opts = election::ElectionOptions {
                unclean: true,
                preferred: false,
            };
            election::elect(current, alive, opts)
                .filter(|n| n.leader.is_some())
                .ok_or_else(|| {
                    KafkaError::new(
                        ResponseError::EligibleLeadersNotAvailable,
                        "no replica of the partition is alive",
                    )
                })?
        };
        let leader = next.leader;
        let epoch = next.leader_epoch;
        self.coord
            .update_partition(&key, next, rec.version)
            .await
            .map_err(coord_error)?;
        tracing::info!(
            topic,
            partition,
            ?leader,
            epoch,
            preferred,
            "leader elected on request"
        );
        self.until_applied("the election", |b| {
            b.view()
                .record(topic, partition)
                .is_some_and(|r| r.value.leader_epoch >= epoch)
        })
        .await
    }

    /// AlterPartitionReassignments for one partition: start moving it to
    /// `target`, or cancel the move in progress (`None`). The controller
    /// completes the move once the new replicas are in sync.
    pub async fn reassign(
        &self,
        topic: &str,
        partition: i32,
        target: Option<Vec<i32>>,
        allow_rf_change: bool,
    ) -> KResult<()> {
        refuse_internal(topic)?;
        let key = PartitionKey::new(topic, partition);
        let rec = self.stored_partition(&key).await?;
        let next = match target {
            None => sluice_api::reassign::cancel(&rec.value).map_err(|e| {
                KafkaError::new(ResponseError::NoReassignmentInProgress, e.to_string())
            })?,
            Some(target) => {
                let nodes = self.live_nodes().await?;
                self.check_assignment(std::slice::from_ref(&target), &nodes)?;
                let before = sluice_api::reassign::original(&rec.value);
                if !allow_rf_change && target.len() != before.len() {
                    return Err(KafkaError::new(
                        ResponseError::InvalidReplicationFactor,
                        format!(
                            "{topic}-{partition} has {} replicas; the target has {} and the request does not allow changing it",
                            before.len(),
                            target.len()
                        ),
                    ));
                }
                match sluice_api::reassign::start(&rec.value, &target)
                    .map_err(|e| invalid_assignment(e.to_string()))?
                {
                    Some(n) => n,
                    None => return Ok(()),
                }
            }
        };
        self.coord
            .update_partition(&key, next.clone(), rec.version)
            .await
            .map_err(coord_error)?;
        tracing::info!(topic, partition, replicas = ?next.replicas, adding = ?next.adding, removing = ?next.removing, "reassignment requested");
        // The replication factor is the topic's (its Topic's
        // spec.replicationFactor), which the controller keeps every
        // partition at: a move to another size changes it for the topic.
        let size = sluice_api::reassign::target(&next).len();
        self.set_replication_factor(topic, size as i16).await
    }

    /// Sets a topic's replication factor in its spec, by compare-and-swap.
    async fn set_replication_factor(&self, topic: &str, rf: i16) -> KResult<()> {
        loop {
            let Some(t) = self.coord.topic(topic).await.map_err(coord_error)? else {
                return Err(no_such_topic(topic));
            };
            if t.value.replication_factor == rf {
                return Ok(());
            }
            let mut spec = t.value.clone();
            spec.replication_factor = rf;
            match self.coord.update_topic(spec, t.version).await {
                Ok(_) => return Ok(()),
                Err(CoordError::Conflict(_)) => continue,
                Err(e) => return Err(coord_error(e)),
            }
        }
    }

    /// A partition this node leads, for a client at `current_leader_epoch`
    /// (-1 when the client does not know it).
    pub fn leader_partition(
        &self,
        topic: &Topic,
        partition: i32,
        current_leader_epoch: i32,
    ) -> KResult<Arc<Partition>> {
        let name = &topic.record.name;
        let p = topic
            .partition(partition)
            .ok_or_else(|| no_partition(name, partition))?;
        let role = p.replica.role();
        let Role::Leader { epoch, .. } = role else {
            return Err(not_leader(name, partition, &role));
        };
        if self.fenced() {
            // Its lease may have lapsed: another node may lead by now, and
            // a read here could go back in time (or past this log's end).
            return Err(KafkaError::new(
                ResponseError::NotLeaderOrFollower,
                format!("{name}-{partition}: this node is renewing its lease and does not serve as leader until it has"),
            ));
        }
        match current_leader_epoch {
            e if e < 0 || e == epoch => Ok(p.clone()),
            e if e < epoch => Err(KafkaError::new(
                ResponseError::FencedLeaderEpoch,
                format!("leader epoch {e} of {name}-{partition} is older than {epoch}"),
            )),
            e => Err(KafkaError::new(
                ResponseError::UnknownLeaderEpoch,
                format!("leader epoch {e} of {name}-{partition} is newer than {epoch}"),
            )),
        }
    }

    /// Validates and appends the `records` of one produce partition as its
    /// leader. With `acks=all` the ISR must hold `min.insync.replicas`
    /// first; the caller then waits with [`wait_replicated`](Self::wait_replicated).
    pub fn append(
        &self,
        topic: &Topic,
        partition: i32,
        records: Option<&Bytes>,
        acks: i16,
    ) -> KResult<Appended> {
        self.append_guarded(topic, partition, records, acks, None)
    }

    /// [`append`](Self::append) of a transactional write verified with its
    /// coordinator: refused (INVALID_TXN_STATE) when a marker of its
    /// producer landed since `guard` ([`PartitionLog::txn_guard`]) was taken.
    pub fn append_guarded(
        &self,
        topic: &Topic,
        partition: i32,
        records: Option<&Bytes>,
        acks: i16,
        guard: Option<u64>,
    ) -> KResult<Appended> {
        let name = &topic.record.name;
        let p = topic
            .partition(partition)
            .ok_or_else(|| no_partition(name, partition))?;
        let records = records.ok_or_else(|| {
            KafkaError::new(
                ResponseError::InvalidRecord,
                "produce request without records",
            )
        })?;
        let max = usize::try_from(topic.config.max_message_bytes).unwrap_or(0);
        let batches = batch::split_and_validate(records, max)?;
        if batches.len() != 1 {
            return Err(BatchError::NotOneBatch.into());
        }
        let now = now_ms();
        let rules = validate::Rules {
            compacted: topic.config.cleanup_compact,
            create_time: (topic.config.message_timestamp_type == TimestampType::CreateTime)
                .then_some((now, topic.config.message_timestamp_difference_max_ms)),
            max_decompressed: self.store.max_decompressed,
        };
        let checked = validate::validate(&batches[0], &rules)?;
        let stored = convert(&batches[0], checked, &topic.config)?;
        let b = &stored;
        let h = Header::parse(b)?;
        if self.fenced() {
            return Err(p.refuse(&h, not_leader(name, partition, &p.replica.role())));
        }
        let me = self.node_id();
        let min_isr = topic.config.min_insync_replicas;
        let appended = p
            .replica
            .with_leader(me, |v| {
                if acks == -1 && !isr::enough_replicas(v.isr_len, min_isr) {
                    return Err(p.refuse(&h, KafkaError::new(
                        ResponseError::NotEnoughReplicas,
                        format!(
                            "{name}-{partition} has {} in-sync replica(s); min.insync.replicas is {min_isr}",
                            v.isr_len
                        ),
                    )));
                }
                let ts = topic.config.message_timestamp_type;
                // A replica that is its partition's whole ISR commits at once.
                let r = p.log.append_checked(b, v.epoch, ts, now, v.alone, guard);
                r.map_err(|e| match e {
                    AppendError::Sequence(e) => p.sequence_error(&h, e),
                    e => e.into(),
                })
            })
            .map_err(|role| p.refuse(&h, not_leader(name, partition, &role)))??;
        p.appended_by(&h);
        if !appended.duplicate {
            self.metrics
                .record_append(name, i64::from(h.record_count()), b.len());
            p.replica.leader_appended(me, &p.log)?;
        }
        Ok(appended)
    }

    /// Waits until an append is below the high watermark of a partition
    /// this node leads (an `acks=all` produce), then checks the ISR still
    /// holds `min.insync.replicas`. Only in the epoch it was appended in: a
    /// leader never truncates within its epoch, so the batch at those
    /// offsets is still the one appended. Leadership lost and regained
    /// meanwhile is NOT_LEADER_OR_FOLLOWER (the batch may be gone).
    pub async fn wait_replicated(
        &self,
        topic: &Topic,
        partition: i32,
        appended: &Appended,
        timeout: Duration,
    ) -> KResult<()> {
        let offset = appended.last_offset;
        let name = &topic.record.name;
        let p = topic
            .partition(partition)
            .ok_or_else(|| no_partition(name, partition))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let watch = Watch::new([&*p.log], self.applied.notified());
            let role = p.replica.role();
            let isr = match &role {
                Role::Leader { isr, epoch, .. } if *epoch == appended.leader_epoch => isr,
                _ => return Err(not_leader(name, partition, &role)),
            };
            if p.log.high_watermark() > offset {
                let min_isr = topic.config.min_insync_replicas;
                if !isr::enough_replicas(isr.len(), min_isr) {
                    return Err(KafkaError::new(
                        ResponseError::NotEnoughReplicasAfterAppend,
                        format!(
                            "written, but {name}-{partition} has {} in-sync replica(s) now; min.insync.replicas is {min_isr}",
                            isr.len()
                        ),
                    ));
                }
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(KafkaError::new(
                    ResponseError::RequestTimedOut,
                    format!(
                        "{name}-{partition}: offset {offset} not replicated to the ISR in time"
                    ),
                ));
            }
        }
    }

    /// Appends records written by the node itself (group coordinator state)
    /// as one uncompressed batch: (key, value) pairs, `None` values being
    /// tombstones. Like `acks=all`: wait with [`wait_replicated`](Self::wait_replicated).
    pub fn append_internal(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> KResult<Appended> {
        self.append_internal_as(topic, partition, None, records)
    }

    /// [`append_internal`](Self::append_internal) on behalf of a
    /// transactional producer (producer id, epoch, and the guard of its
    /// verification, see [`append_guarded`](Self::append_guarded)): a
    /// transactional batch without sequences, which its transaction's marker
    /// commits or aborts (offsets committed in a transaction).
    pub fn append_internal_as(
        &self,
        topic: &str,
        partition: i32,
        producer: Option<(i64, i16, Option<u64>)>,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> KResult<Appended> {
        let t = self.topic(topic).ok_or_else(|| no_such_topic(topic))?;
        let now = now_ms();
        let records: Vec<_> = records
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let mut r = batch::plain_record(i as i64, now, Some(k), v);
                if let Some((id, epoch, _)) = producer {
                    r.transactional = true;
                    r.producer_id = id;
                    r.producer_epoch = epoch;
                }
                r
            })
            .collect();
        let batch = batch::encode_v2(&records, kafka_protocol::records::Compression::None)
            .map_err(|e| KafkaError::new(ResponseError::UnknownServerError, e.to_string()))?;
        let guard = producer.and_then(|(_, _, g)| g);
        self.append_guarded(&t, partition, Some(&batch), -1, guard)
    }

    /// DeleteRecords on one partition this node leads: `offset` -1 means
    /// the high watermark. Returns the new log start offset (the low
    /// watermark). Followers keep their own prefix until retention or a
    /// reset moves it; the leader's start offset is what clients see.
    pub fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> KResult<i64> {
        refuse_internal(topic)?;
        let t = self.topic(topic).ok_or_else(|| no_such_topic(topic))?;
        let log = self.leader_partition(&t, partition, -1)?;
        let hw = log.high_watermark();
        let offset = if offset == -1 { hw } else { offset };
        if offset < 0 || offset > hw {
            return Err(KafkaError::new(
                ResponseError::OffsetOutOfRange,
                format!("offset {offset} is outside [0, {hw}] (the high watermark)"),
            ));
        }
        Ok(log.delete_records_before(offset)?)
    }
    /// Reads from a partition for a consumer, checking the offset range.
    pub fn read(
        &self,
        log: &PartitionLog,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
        read_committed: bool,
    ) -> KResult<Read> {
        let hw = if read_committed {
            log.last_stable_offset()
        } else {
            log.high_watermark()
        };
        let end = log.log_end_offset();
        if offset < log.log_start_offset() || offset > end {
            return Err(KafkaError::new(
                ResponseError::OffsetOutOfRange,
                format!(
                    "offset {offset} is outside [{}, {end}]",
                    log.log_start_offset()
                ),
            ));
        }
        // Between the high watermark (for read_committed, the last stable
        // offset) and the log end: nothing visible yet.
        Ok(log.read(offset, max_bytes, hw, at_least_one)?)
    }

    /// Applies `retention.ms` and `retention.bytes` to every partition once.
    pub fn enforce_retention(&self) -> KResult<usize> {
        let now = now_ms();
        let mut deleted = 0;
        let idle_before = now.saturating_sub(self.config.producer_id_expiration_ms);
        for topic in self.topics() {
            for log in &topic.partitions {
                log.expire_producers(idle_before)?;
            }
            let (ms, bytes) = (topic.config.retention_ms, topic.config.retention_bytes);
            // Committed offsets never age out with the log; they go when
            // their group does (offset retention) and compaction drops them.
            if (ms < 0 && bytes < 0)
                || !topic.config.cleanup_delete
                || is_internal(&topic.record.name)
            {
                continue;
            }
            for log in &topic.partitions {
                deleted += log.delete_prefix_while(|h, size| {
                    let by_time = ms >= 0 && h.max_timestamp() < now - ms;
                    let batch_size = i64::from(h.batch_length()) + batch::LOG_OVERHEAD as i64;
                    let by_size = bytes >= 0 && size - batch_size >= bytes;
                    by_time || by_size
                })?;
            }
        }
        if deleted > 0 {
            tracing::info!(batches = deleted, "retention deleted batches");
        }
        Ok(deleted)
    }

    /// Writes every partition's high watermark that moved since its last
    /// checkpoint ([`PartitionLog::checkpoint_high_watermark`]).
    pub fn checkpoint_high_watermarks(&self) {
        for t in self.topics() {
            for p in &t.partitions {
                match p.log.checkpoint_high_watermark() {
                    Ok(()) | Err(crate::log::StoreError::Closed(_)) => {}
                    Err(e) => {
                        tracing::warn!(topic = %t.record.name, partition = p.log.partition, error = %e, "checkpointing the high watermark failed")
                    }
                }
            }
        }
    }

    /// Checkpoints high watermarks every 5 s (Kafka's
    /// `replica.high.watermark.checkpoint.interval.ms`) until the process
    /// ends.
    pub async fn checkpoint_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HW_CHECKPOINT_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.checkpoint_high_watermarks()).await;
        }
    }

    /// Runs retention every `retention_check_interval_ms` until the process ends.
    pub async fn retention_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.retention_check_interval_ms.max(10));
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.enforce_retention()).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "retention pass failed"),
                Err(e) => tracing::warn!(error = %e, "retention task panicked"),
                Ok(Ok(_)) => {}
            }
        }
    }
}
