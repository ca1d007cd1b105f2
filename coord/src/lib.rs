//! The coordination room: the cluster's metadata behind one trait, shared
//! by the storage nodes and the operator.
//!
//! Node leases (liveness and addresses), topics, one record per partition
//! (replicas, ISR, leader, leader epoch), dynamic broker configs and the
//! security record (users' SCRAM credentials, ACLs), each
//! changed only by
//! compare-and-swap on a version. Two backends implement it: in memory (for
//! `sluice dev` and in-process tests) and, with the operator, Kubernetes
//! `Lease` objects whose `resourceVersion` is the version. Both must pass the
//! contract in [`contract`].
//!
//! Steady-state writes are one lease renewal per node per interval; partition
//! records change only when leadership, ISR or assignment change.

pub mod contract;
pub mod controller;
pub mod elector;
mod kubernetes;
mod memory;
mod view;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
pub use sluice_api::election::PartitionRecord;
pub use sluice_security::SecurityRecord;
use uuid::Uuid;

pub use kubernetes::{
    client_from_kubeconfig, configmap_owner, parse_configmap_owner, winners, Kubernetes,
};
pub use memory::InMemory;
pub use view::View;

/// What a node announces in its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: i32,
    /// Host and port Kafka clients connect to.
    pub kafka_host: String,
    pub kafka_port: u16,
    /// `host:port` of the replication (gRPC) endpoint.
    pub replication_addr: String,
    pub rack: Option<String>,
    /// Host and port of each named Kafka listener, for clients of that
    /// listener (Metadata answers with the address of the listener the
    /// client connected to); the primary one is `kafka_host`/`kafka_port`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, (String, u16)>,
    /// Topics whose data this node keeps although the metadata no longer
    /// names them (their `Topic` objects were lost, not deleted), by name,
    /// with their ids: a topic of that name that comes back takes its old
    /// id and finds its data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orphans: BTreeMap<String, Uuid>,
    /// Chosen afresh by every process at start. A lease renewed under a new
    /// incarnation means the node restarted: the old process is gone (one
    /// process per data directory), and the controller moves leadership off
    /// it at once instead of waiting for a lease to lapse that never will.
    #[serde(default)]
    pub incarnation: Uuid,
    /// Shutting down on purpose (SIGTERM: a roll, a drain): the controller
    /// moves every leadership it holds to another in-sync replica and
    /// elects it nowhere while others can lead; the node waits for that
    /// before it stops (a controlled shutdown).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

impl NodeInfo {
    /// Where clients of listener `name` reach this node (the primary
    /// address if the node has no such listener).
    pub fn address(&self, listener: &str) -> (&str, u16) {
        match self.listeners.get(listener) {
            Some((host, port)) => (host, *port),
            None => (&self.kafka_host, self.kafka_port),
        }
    }
}

/// A node's lease as last renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLease {
    pub info: NodeInfo,
    /// The holder's wall clock when it renewed (what `kubectl` shows; never
    /// compared with another node's clock).
    pub renewed_ms: i64,
    pub duration_ms: i64,
    /// When this process first saw that renewal, on its own monotonic clock
    /// ([`mono_ms`]). A lease this process has never seen renewed counts as
    /// renewed when it first reads it (as client-go's leader election does).
    pub seen_mono_ms: i64,
}

impl NodeLease {
    /// Alive until a lease duration after this process saw it renewed. Only
    /// this process's own monotonic clock is involved, so skewed wall clocks
    /// change nothing; the holder stops leading at 60% of a lease after its
    /// renewal began, well before any observer can count it lapsed.
    pub fn alive(&self, mono_now_ms: i64) -> bool {
        mono_now_ms < self.seen_mono_ms + self.duration_ms
    }
}

/// Milliseconds on a monotonic clock local to this process.
pub fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// When a process saw each node's lease change: the backends' record of
/// what `seen_mono_ms` reports, keyed by node and by a value that changes
/// with every renewal (a resource version, a renewal time).
#[derive(Default)]
pub struct LeaseSightings(std::sync::Mutex<std::collections::HashMap<i32, (String, i64)>>);

impl LeaseSightings {
    /// The monotonic time `node`'s lease was first seen as `stamp`.
    pub fn seen(&self, node: i32, stamp: &str) -> i64 {
        let mut m = self.0.lock().expect("lease sightings lock");
        match m.get(&node) {
            Some((s, at)) if s == stamp => *at,
            _ => {
                let at = mono_ms();
                m.insert(node, (stamp.to_string(), at));
                at
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Being deleted on purpose (DeleteTopics, `kubectl delete topic`):
    /// every node drops its data and says so
    /// ([`Coordination::topic_dropped`]); the controller then removes the
    /// topic. A topic that is merely absent from the metadata keeps its
    /// data on every node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// Nodes that dropped the data of a topic being deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_on: Vec<i32>,
}

impl TopicSpec {
    pub fn new(
        name: &str,
        id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> TopicSpec {
        TopicSpec {
            name: name.to_string(),
            id,
            partitions,
            replication_factor,
            configs,
            deleting: false,
            dropped_on: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

impl PartitionKey {
    pub fn new(topic: &str, partition: i32) -> PartitionKey {
        PartitionKey {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// Dynamic broker configs (Kafka's AlterConfigs on a broker resource):
/// the cluster-wide defaults (`node: None`, the resource named "") or one
/// node's (`node: Some(id)`), under Kafka's broker config names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BrokerConfigs {
    pub node: Option<i32>,
    pub configs: BTreeMap<String, String>,
}

/// A lock that one process holds at a time (the controller's), renewed by
/// its holder; like a Kubernetes `Lease` used for leader election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Who holds it (an operator pod's name, a node's id).
    pub holder: String,
    pub duration_ms: i64,
    /// The holder's wall clock at its last renewal (for people; observers
    /// judge expiry on their own clock, see [`elector`]).
    pub renewed_ms: i64,
    /// How many times it changed hands.
    pub transitions: i32,
}

/// A version of a stored object (a Kubernetes resourceVersion).
pub type Version = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    #[error("{0} changed since it was read")]
    Conflict(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("coordination backend: {0}")]
    Backend(String),
}

pub type CResult<T> = Result<T, CoordError>;

#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Creates or renews this node's lease for `duration_ms` from now.
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()>;
    /// Every node lease, alive or lapsed.
    async fn nodes(&self) -> CResult<Vec<NodeLease>>;

    async fn topics(&self) -> CResult<Vec<Versioned<TopicSpec>>>;
    /// One topic as stored now (not as a cache last saw it), for a
    /// compare-and-swap based on it.
    async fn topic(&self, name: &str) -> CResult<Option<Versioned<TopicSpec>>>;
    /// Topics declared but not set up yet (a `Topic` object applied with
    /// kubectl): no id (nil), no partition records. The controller sets them
    /// up with [`adopt_topic`](Self::adopt_topic). None where topics are only
    /// made by [`create_topic`](Self::create_topic).
    async fn pending_topics(&self) -> CResult<Vec<Versioned<TopicSpec>>> {
        Ok(vec![])
    }
    /// Sets up a pending topic: gives it `spec.id` and the records of its
    /// partitions, if it is still at `expected`.
    async fn adopt_topic(
        &self,
        spec: TopicSpec,
        _partitions: Vec<PartitionRecord>,
        _expected: Version,
    ) -> CResult<()> {
        Err(CoordError::NotFound(format!("pending topic {}", spec.name)))
    }
    /// The topic ids partition records remember, by topic name (a topic
    /// whose spec was lost and is declared again takes its old id).
    async fn partition_topic_ids(&self) -> CResult<BTreeMap<String, Uuid>> {
        Ok(BTreeMap::new())
    }
    /// Upkeep particular to the backend, run by the controller on every pass
    /// (on Kubernetes: deciding what the deletion of a `Topic` object means).
    async fn housekeeping(&self) -> CResult<()> {
        Ok(())
    }
    /// Creates a topic and the records of its partitions.
    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()>;
    /// Replaces a topic's spec if it is still at `expected`.
    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version>;
    /// Starts deleting a topic on purpose: it is marked
    /// [`deleting`](TopicSpec::deleting) and its data goes from every node.
    async fn delete_topic(&self, name: &str) -> CResult<()>;
    /// Node `node` dropped the data of topic `id` (being deleted).
    async fn topic_dropped(&self, name: &str, id: Uuid, node: i32) -> CResult<()>;
    /// Removes a deleted topic and its partition records (the controller,
    /// once every node that held it dropped its data).
    async fn remove_topic(&self, name: &str, id: Uuid) -> CResult<()>;

    async fn partitions(&self) -> CResult<Vec<(PartitionKey, Versioned<PartitionRecord>)>>;
    /// One partition's record, if it exists.
    async fn partition(&self, key: &PartitionKey) -> CResult<Option<Versioned<PartitionRecord>>>;
    async fn create_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version>;
    /// Creates the records of a topic's new partitions, `first` onwards,
    /// skipping any that exist (a retried CreatePartitions). One write where
    /// the backend can batch.
    async fn create_partitions(
        &self,
        topic: &str,
        first: i32,
        records: Vec<PartitionRecord>,
    ) -> CResult<()> {
        for (i, r) in records.into_iter().enumerate() {
            let key = PartitionKey::new(topic, first + i as i32);
            match self.create_partition(&key, r).await {
                Ok(_) | Err(CoordError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// Replaces a partition record if it is still at `expected`.
    async fn update_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
        expected: Version,
    ) -> CResult<Version>;

    /// Every stored set of dynamic broker configs.
    async fn broker_configs(&self) -> CResult<Vec<Versioned<BrokerConfigs>>>;
    /// Creates a set of dynamic broker configs (`expected: None`) or
    /// replaces it if it is still at `expected`.
    async fn put_broker_configs(
        &self,
        configs: BrokerConfigs,
        expected: Option<Version>,
    ) -> CResult<Version>;

    /// Users' SCRAM credentials and the ACLs, if any were ever stored.
    async fn security(&self) -> CResult<Option<Versioned<SecurityRecord>>>;
    /// Stores them (`expected: None`: none may exist yet) or replaces them
    /// if they are still at `expected`.
    async fn put_security(
        &self,
        record: SecurityRecord,
        expected: Option<Version>,
    ) -> CResult<Version>;

    /// The lock called `name`, if anyone ever took it.
    async fn lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>>;
    /// Takes the lock (`expected: None`: it must not exist) or renews or
    /// takes it over if it is still at `expected`.
    async fn put_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version>;

    /// A counter that moves whenever anything stored changes.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The most the security record (users' SCRAM credentials and the ACLs)
/// may take: it is one Lease annotation on Kubernetes, which holds 256 KiB.
pub const MAX_SECURITY_RECORD_BYTES: usize = 192 << 10;

/// Changes the users and ACLs by compare-and-swap: `change` gets the
/// record as stored and returns the next one (`None`: nothing to change,
/// or an error to give up with); retried, backing off, while others change
/// it meanwhile. Returns the version written, if any.
pub async fn update_security<E: From<CoordError>>(
    coord: &dyn Coordination,
    change: impl Fn(SecurityRecord) -> Result<Option<SecurityRecord>, E>,
) -> Result<Option<Version>, E> {
    for attempt in 0..16u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
        }
        let current = coord.security().await?;
        let expected = current.as_ref().map(|c| c.version);
        let Some(next) = change(current.map(|c| c.value).unwrap_or_default())? else {
            return Ok(None);
        };
        match coord.put_security(next, expected).await {
            Ok(v) => return Ok(Some(v)),
            Err(CoordError::Conflict(_) | CoordError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CoordError::Conflict("the security record kept changing meanwhile; it".into()).into())
}
