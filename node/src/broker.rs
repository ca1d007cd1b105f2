//! The node's topics and partitions: creation, deletion, growth, appends,
//! reads, and retention. Protocol handlers call in here; nothing in this
//! module knows about the wire format of requests.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{validate_topic_name, ConfigError, NodeConfig, TopicConfig};
use crate::log::batch::{self, BatchError, Header};
use crate::log::producers::SequenceError;
use crate::log::{AppendError, Appended, PartitionLog, Read, Store, StoreError, TimestampType};
use crate::metrics::Metrics;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a topic is, as persisted in the `meta` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A live topic. Immutable: changes replace the whole value in the registry,
/// sharing the partition logs that stay.
pub struct Topic {
    pub record: TopicRecord,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<PartitionLog>>,
}

impl Topic {
    pub fn partition(&self, p: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(p).ok().and_then(|i| self.partitions.get(i))
    }
}

/// An error with the Kafka code it answers with and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct KafkaError {
    pub code: ResponseError,
    pub message: String,
}

impl KafkaError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> KafkaError {
        KafkaError {
            code,
            message: message.into(),
        }
    }
    pub fn code(&self) -> i16 {
        self.code.code()
    }
}

impl From<StoreError> for KafkaError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage error");
        KafkaError::new(ResponseError::KafkaStorageError, e.to_string())
    }
}

impl From<AppendError> for KafkaError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Store(e) => e.into(),
            AppendError::Replication(m) => KafkaError::new(ResponseError::UnknownServerError, m),
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
        let code = match e {
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::NotOneBatch | BatchError::InvalidCount => ResponseError::InvalidRecord,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::UnknownCompression(_) => ResponseError::UnsupportedCompressionType,
            BatchError::TimestampOutOfRange { .. } => ResponseError::InvalidTimestamp,
            BatchError::Truncated | BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage,
        };
        KafkaError::new(code, e.to_string())
    }
}

pub type KResult<T> = Result<T, KafkaError>;

/// UNKNOWN_TOPIC_OR_PARTITION for a topic name.
/// Internal topics (`__consumer_offsets`) are the node's own state: admin
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
    name == crate::group::OFFSETS_TOPIC
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
}

pub struct Broker {
    pub config: NodeConfig,
    pub cluster_id: String,
    pub metrics: Arc<Metrics>,
    store: Arc<Store>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Woken after every append, so long-polling fetches re-check.
    appended: Notify,
    producer_ids: std::sync::Mutex<ProducerIdBlock>,
}

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

impl Broker {
    /// Opens the node's store and loads every topic it holds.
    pub fn open(config: NodeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Broker>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("rocksdb"), config.sync_writes)?;
        let cluster_id = match store.get_meta("cluster_id")? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = Uuid::new_v4().simple().to_string()[..22].to_string();
                store.put_meta("cluster_id", id.as_bytes())?;
                id
            }
        };
        let mut topics = BTreeMap::new();
        for (name, json) in store.list_topics()? {
            let record: TopicRecord = serde_json::from_slice(&json)
                .map_err(|e| anyhow::anyhow!("topic {name} has unreadable metadata: {e}"))?;
            let config = config.defaults.resolve(&record.configs)?;
            let partitions = (0..record.partitions)
                .map(|p| PartitionLog::open(store.clone(), &record.id, p).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            topics.insert(
                name,
                Arc::new(Topic {
                    record,
                    config,
                    partitions,
                }),
            );
        }
        tracing::info!(topics = topics.len(), cluster_id, "store opened");
        Ok(Arc::new(Broker {
            config,
            cluster_id,
            metrics,
            store,
            topics: RwLock::new(topics),
            appended: Notify::new(),
            producer_ids: std::sync::Mutex::new(ProducerIdBlock { next: 0, end: 0 }),
        }))
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
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

    /// Number of nodes replicas can be placed on. One until replication lands.
    pub fn live_nodes(&self) -> i32 {
        1
    }

    fn persist(&self, record: &TopicRecord) -> KResult<()> {
        let json = serde_json::to_vec(record).expect("topic record serializes");
        let mut wb = rocksdb::WriteBatch::default();
        self.store.put_topic(&mut wb, &record.name, &json);
        self.store.write(wb)?;
        Ok(())
    }

    /// Checks a creation request without changing anything.
    pub fn validate_new_topic(&self, t: &NewTopic) -> KResult<TopicConfig> {
        validate_topic_name(&t.name)
            .map_err(|m| KafkaError::new(ResponseError::InvalidTopicException, m))?;
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
        if t.replication_factor < 1 || i32::from(t.replication_factor) > self.live_nodes() {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is not possible with {} live node(s)",
                    t.replication_factor,
                    self.live_nodes()
                ),
            ));
        }
        Ok(self.config.defaults.resolve(&t.configs)?)
    }

    pub fn create_topic(&self, t: NewTopic) -> KResult<Arc<Topic>> {
        let config = self.validate_new_topic(&t)?;
        let mut topics = self.topics.write().expect("topics lock");
        if topics.contains_key(&t.name) {
            return Err(KafkaError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} already exists", t.name),
            ));
        }
        let record = TopicRecord {
            name: t.name.clone(),
            id: Uuid::new_v4(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            configs: t.configs,
        };
        let partitions = (0..record.partitions)
            .map(|p| PartitionLog::open(self.store.clone(), &record.id, p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        self.persist(&record)?;
        tracing::info!(topic = %record.name, partitions = record.partitions, "topic created");
        let topic = Arc::new(Topic {
            record,
            config,
            partitions,
        });
        topics.insert(t.name, topic.clone());
        Ok(topic)
    }

    /// Creates a topic with the node's defaults when auto-creation is on.
    pub fn auto_create(&self, name: &str) -> KResult<Arc<Topic>> {
        match self.create_topic(NewTopic {
            name: name.to_string(),
            partitions: self.config.num_partitions,
            replication_factor: self.config.default_replication_factor,
            configs: BTreeMap::new(),
        }) {
            Err(e) if e.code == ResponseError::TopicAlreadyExists => self
                .topic(name)
                .ok_or_else(|| KafkaError::new(ResponseError::UnknownTopicOrPartition, name)),
            other => other,
        }
    }

    pub fn delete_topic(&self, name: &str) -> KResult<Uuid> {
        refuse_internal(name)?;
        let topic = {
            let mut topics = self.topics.write().expect("topics lock");
            let topic = topics.remove(name).ok_or_else(|| no_such_topic(name))?;
            let mut wb = rocksdb::WriteBatch::default();
            self.store.delete_topic(&mut wb, name);
            self.store.write(wb)?;
            topic
        };
        for p in &topic.partitions {
            p.destroy()?;
        }
        // Fetches waiting on the deleted partitions re-check and see it gone.
        self.appended.notify_waiters();
        tracing::info!(topic = name, "topic deleted");
        Ok(topic.record.id)
    }

    /// Grows a topic to `count` partitions (CreatePartitions).
    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> KResult<()> {
        refuse_internal(name)?;
        let mut topics = self.topics.write().expect("topics lock");
        let topic = topics
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_topic(name))?;
        let have = topic.record.partitions;
        if count <= have || count > MAX_PARTITIONS_PER_TOPIC {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {have} partitions; the new count must be larger (and at most {MAX_PARTITIONS_PER_TOPIC}), got {count}"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let mut record = topic.record.clone();
        record.partitions = count;
        let mut partitions = topic.partitions.clone();
        for p in have..count {
            partitions.push(Arc::new(PartitionLog::open(
                self.store.clone(),
                &record.id,
                p,
            )?));
        }
        self.persist(&record)?;
        tracing::info!(topic = name, from = have, to = count, "partitions added");
        topics.insert(
            name.to_string(),
            Arc::new(Topic {
                record,
                config: topic.config.clone(),
                partitions,
            }),
        );
        Ok(())
    }

    /// Validates and appends the `records` of one produce partition.
    pub fn append(
        &self,
        topic: &Topic,
        partition: i32,
        records: Option<&Bytes>,
    ) -> KResult<Appended> {
        let log = topic.partition(partition).ok_or_else(|| {
            KafkaError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic {} has no partition {partition}", topic.record.name),
            )
        })?;
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
        let b = &batches[0];
        let now = now_ms();
        let h = Header::parse(b)?;
        if topic.config.message_timestamp_type == TimestampType::CreateTime {
            let max_diff = topic.config.message_timestamp_difference_max_ms;
            for ts in [h.base_timestamp(), h.max_timestamp()] {
                if ts >= 0 && (ts - now).abs() > max_diff {
                    return Err(BatchError::TimestampOutOfRange {
                        timestamp: ts,
                        now,
                        max_diff,
                    }
                    .into());
                }
            }
        }
        // A single replica is its own ISR: what it writes is committed.
        let appended = log.append_committed(b, 0, topic.config.message_timestamp_type, now)?;
        if !appended.duplicate {
            self.metrics
                .record_append(&topic.record.name, i64::from(h.record_count()), b.len());
            self.appended.notify_waiters();
        }
        Ok(appended)
    }

    /// Appends records written by the node itself (group coordinator state)
    /// as one uncompressed batch: (key, value) pairs, `None` values being
    /// tombstones.
    pub fn append_internal(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> KResult<Appended> {
        let t = self.topic(topic).ok_or_else(|| no_such_topic(topic))?;
        let records = records.into_iter().map(|(k, v)| (Some(k), v)).collect();
        let batch = batch::encode_records(
            records,
            now_ms(),
            kafka_protocol::records::Compression::None,
        )
        .map_err(|e| KafkaError::new(ResponseError::UnknownServerError, e.to_string()))?;
        self.append(&t, partition, Some(&batch))
    }

    /// Replaces a topic's dynamic configs as a whole (AlterConfigs, and
    /// IncrementalAlterConfigs after its operations are applied). Validated
    /// first; nothing changes unless everything is valid. Takes effect at once:
    /// appends, fetches and retention read the topic's config on every use.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> KResult<()> {
        refuse_internal(name)?;
        let mut topics = self.topics.write().expect("topics lock");
        let topic = topics
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_topic(name))?;
        let config = self.config.defaults.resolve(&configs)?;
        if validate_only {
            return Ok(());
        }
        let mut record = topic.record.clone();
        record.configs = configs;
        self.persist(&record)?;
        tracing::info!(topic = name, configs = ?record.configs, "topic configs changed");
        topics.insert(
            name.to_string(),
            Arc::new(Topic {
                record,
                config,
                partitions: topic.partitions.clone(),
            }),
        );
        Ok(())
    }

    /// DeleteRecords on one partition: `offset` -1 means the high watermark.
    /// Returns the new log start offset (the low watermark).
    pub fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> KResult<i64> {
        refuse_internal(topic)?;
        let t = self.topic(topic).ok_or_else(|| no_such_topic(topic))?;
        let log = t.partition(partition).ok_or_else(|| {
            KafkaError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("{topic}-{partition} does not exist"),
            )
        })?;
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
    ) -> KResult<Read> {
        let hw = log.high_watermark();
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
        // Between the high watermark and the log end: nothing visible yet.
        Ok(log.read(offset, max_bytes, hw, at_least_one)?)
    }

    /// A future that completes on the next append; create it before checking
    /// for data so no append can slip between check and wait.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
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
            // Committed offsets must never age out with the log; they go when
            // their group does (offset retention) until compaction lands.
            if (ms < 0 && bytes < 0) || is_internal(&topic.record.name) {
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
