//! The group coordinator: runs the pure [`Group`] state machines, parks
//! JoinGroup/SyncGroup requests until their phase completes, and keeps
//! committed offsets and group metadata as records in `__consumer_offsets`.
//!
//! The coordinator of a group is the leader of partition
//! `java_hash(group) mod N` of `__consumer_offsets` (Kafka's rule), so group
//! state lives, replicates and fails over with that partition. When this
//! node becomes the leader of an offsets partition, the coordinator replays
//! it to rebuild that partition's groups; when it stops leading, it drops
//! them. Requests for groups it does not own answer NOT_COORDINATOR, and
//! writes wait for the partition's ISR (`acks=all`) before answering.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::state::{
    Committed, Group, GroupState, JoinArgs, JoinResult, Limits, Member, Outcome, Reply, SyncResult,
};
use crate::broker::{now_ms, Broker, KafkaError};
use crate::log::batch::{self, Header};
use crate::log::Appended;
use crate::replication::replica::Transition;

pub use sluice_api::OFFSETS_TOPIC;

mod txn;

/// Committed offsets by (topic, partition); `None` where nothing is committed.
pub type FetchedOffsets = Vec<((String, i32), Option<Committed>)>;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`
    pub offsets_topic_partitions: i32,
    pub limits: Limits,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: 50,
            limits: Limits::default(),
            offsets_retention_ms: 7 * 24 * 3_600_000,
            offset_metadata_max_bytes: 4096,
            offsets_retention_check_interval_ms: 600_000,
        }
    }
}

/// Java's `String.hashCode`, which Kafka uses to place groups.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The `__consumer_offsets` partition that holds a group (Kafka's
/// `Utils.abs(hash) % partitions`, where abs(MIN_VALUE) is 0).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let h = java_string_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions
}

/// A coordinator's write to its internal partition failed: what its
/// clients are told (find the new coordinator, or retry).
pub fn coordinator_error(code: ResponseError) -> ResponseError {
    match code {
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::NotEnoughReplicas
        | ResponseError::RequestTimedOut
        | ResponseError::UnknownTopicOrPartition => ResponseError::CoordinatorNotAvailable,
        other => other,
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct OffsetValue {
    offset: i64,
    leader_epoch: i32,
    metadata: Option<String>,
    commit_timestamp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberValue {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    metadata: Vec<u8>,
    assignment: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GroupValue {
    protocol_type: Option<String>,
    generation: i32,
    protocol: Option<String>,
    leader: Option<String>,
    members: Vec<MemberValue>,
}

fn key_bytes(k: &RecordKey) -> Bytes {
    Bytes::from(serde_json::to_vec(k).expect("keys serialize"))
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    key_bytes(&RecordKey::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    })
}

fn group_value(g: &Group) -> Option<Bytes> {
    if g.state == GroupState::Dead {
        return None;
    }
    let protocol = g.protocol.clone().unwrap_or_default();
    let v = GroupValue {
        protocol_type: g.protocol_type.clone(),
        generation: g.generation,
        protocol: g.protocol.clone(),
        leader: g.leader.clone(),
        members: g
            .members
            .values()
            .map(|m| MemberValue {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                metadata: m.metadata(&protocol).to_vec(),
                assignment: g.assignment_to_store(m).to_vec(),
            })
            .collect(),
    };
    Some(Bytes::from(
        serde_json::to_vec(&v).expect("values serialize"),
    ))
}

/// One partition of an offset commit, as asked.
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// What DescribeGroups reports about one group.
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

/// The group named `id`, created empty if it is new.
fn group_entry<'a>(
    groups: &'a mut HashMap<String, Group>,
    id: &str,
    limits: Limits,
    now: i64,
) -> &'a mut Group {
    groups
        .entry(id.to_string())
        .or_insert_with(|| Group::new(id, limits, now))
}

#[derive(Default)]
struct Inner {
    /// Offsets partitions this node leads and has loaded.
    owned: HashSet<i32>,
    groups: HashMap<String, Group>,
    join_waiters: Waiters<JoinResult>,
    sync_waiters: Waiters<SyncResult>,
    /// Offsets committed in transactions not decided yet, by offsets
    /// partition and producer id.
    txn_offsets: HashMap<(i32, i64), Vec<txn::PendingOffset>>,
}

pub struct Coordinator {
    broker: Arc<Broker>,
    pub config: GroupConfig,
    inner: Mutex<Inner>,
    me: std::sync::Weak<Coordinator>,
}

impl Coordinator {
    /// A coordinator owning no groups yet: they arrive with leadership of
    /// offsets partitions ([`leadership_changed`](Self::leadership_changed)).
    pub fn new(broker: Arc<Broker>, config: GroupConfig) -> Arc<Coordinator> {
        Arc::new_cyclic(|me| Coordinator {
            broker,
            config,
            inner: Mutex::new(Inner::default()),
            me: me.clone(),
        })
    }

    fn partitions(&self) -> i32 {
        self.broker
            .topic(OFFSETS_TOPIC)
            .map(|t| t.record.partitions)
            .unwrap_or(self.config.offsets_topic_partitions)
    }

    pub fn partition_for(&self, group: &str) -> i32 {
        partition_for(group, self.partitions())
    }

    /// NOT_COORDINATOR unless this node owns the group's offsets partition.
    fn check_owner(&self, inner: &Inner, group: &str) -> Result<(), ResponseError> {
        if inner.owned.contains(&self.partition_for(group)) {
            Ok(())
        } else {
            Err(ResponseError::NotCoordinator)
        }
    }

    /// Loads the groups of offsets partitions this node now leads and drops
    /// those of partitions it no longer leads.
    pub fn leadership_changed(&self, transitions: &[(String, i32, Transition)]) {
        for (topic, p, t) in transitions {
            if topic != OFFSETS_TOPIC {
                continue;
            }
            match t {
                Transition::BecameLeader(_) => {
                    if let Err(e) = self.load(*p) {
                        tracing::error!(partition = p, error = %e, "loading groups failed");
                    }
                }
                _ => self.unload(*p),
            }
        }
    }

    /// Replays one offsets partition, to its log end (a new leader's tail
    /// above the high watermark was written by the previous leader and is
    /// committed as soon as the ISR has it).
    fn load(&self, partition: i32) -> anyhow::Result<()> {
        let topic = self
            .broker
            .topic(OFFSETS_TOPIC)
            .ok_or_else(|| anyhow::anyhow!("{OFFSETS_TOPIC} does not exist"))?;
        let log = topic
            .partition(partition)
            .ok_or_else(|| anyhow::anyhow!("{OFFSETS_TOPIC}-{partition} does not exist"))?;
        let now = now_ms();
        let mut inner = self.inner.lock().expect("coordinator lock");
        self.drop_groups(&mut inner, partition);
        let mut records = 0usize;
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let read = log.read(offset, 4 << 20, end, true)?;
            if read.batches == 0 {
                break;
            }
            for b in batch::framed(&read.records) {
                let Ok(h) = Header::parse(&b) else { break };
                // Past the batch, even one without records (compaction's
                // last) or one that does not decode.
                offset = h.last_offset().saturating_add(1);
                if h.is_control() {
                    if let Some(commit) = batch::marker_of(&b) {
                        let (pid, at) = (h.producer_id(), h.base_offset());
                        self.end_pending(&mut inner, partition, pid, commit, at);
                    }
                    continue;
                }
                let decoded =
                    batch::decode_records(&b, self.broker.config.max_decompressed_batch_bytes);
                let set = match decoded {
                    Ok(set) => set,
                    Err(e) => {
                        tracing::error!(partition, batch = h.base_offset(), error = %e, "skipping a corrupt batch of group records");
                        continue;
                    }
                };
                for r in set {
                    records += 1;
                    let Some(k) = r.key else { continue };
                    if h.is_transactional() {
                        // Offsets of a transaction: they wait for its marker.
                        if let Some(p) = txn::pending_from_record(&k, r.value.as_ref(), r.offset) {
                            inner
                                .txn_offsets
                                .entry((partition, h.producer_id()))
                                .or_default()
                                .push(p);
                        }
                        continue;
                    }
                    self.apply(&mut inner, &k, r.value.as_ref(), r.offset, now);
                }
            }
        }
        inner.owned.insert(partition);
        let groups = inner
            .groups
            .keys()
            .filter(|g| self.partition_for(g) == partition)
            .count();
        if records > 0 {
            tracing::info!(partition, groups, records, "groups loaded");
        }
        Ok(())
    }

    fn unload(&self, partition: i32) {
        let mut inner = self.inner.lock().expect("coordinator lock");
        if inner.owned.remove(&partition) {
            self.drop_groups(&mut inner, partition);
            tracing::info!(partition, "groups unloaded: no longer the coordinator");
        }
    }

    /// Forgets the groups of one partition; parked requests answer
    /// NOT_COORDINATOR so their clients find the new coordinator.
    fn drop_groups(&self, inner: &mut Inner, partition: i32) {
        let mine = |g: &str| self.partition_for(g) == partition;
        inner.groups.retain(|g, _| !mine(g));
        inner.txn_offsets.retain(|(p, _), _| *p != partition);
        for ((_, member), tx) in take_waiters(&mut inner.join_waiters, mine) {
            let _ = tx.send(JoinResult::error(ResponseError::NotCoordinator, &member));
        }
        for (_, tx) in take_waiters(&mut inner.sync_waiters, mine) {
            let _ = tx.send(SyncResult::error(ResponseError::NotCoordinator));
        }
    }

    /// Appends a group's records to its offsets partition.
    fn append(
        &self,
        group: &str,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<Appended, KafkaError> {
        self.broker
            .append_internal(OFFSETS_TOPIC, self.partition_for(group), records)
    }

    /// Waits until an append to a group's partition is replicated to the ISR.
    pub async fn wait_replicated(
        &self,
        group: &str,
        appended: &Appended,
    ) -> Result<(), ResponseError> {
        let Some(topic) = self.broker.topic(OFFSETS_TOPIC) else {
            return Err(ResponseError::NotCoordinator);
        };
        let timeout =
            Duration::from_millis(self.broker.config.replication_timeout_ms.max(1) as u64);
        self.broker
            .wait_replicated(&topic, self.partition_for(group), appended, timeout)
            .await
            .map_err(|e| coordinator_error(e.code))
    }

    fn apply(
        &self,
        inner: &mut Inner,
        key: &[u8],
        value: Option<&Bytes>,
        record_offset: i64,
        now: i64,
    ) {
        let Ok(k) = serde_json::from_slice::<RecordKey>(key) else {
            tracing::warn!("unreadable key in {OFFSETS_TOPIC}, skipped");
            return;
        };
        let limits = self.config.limits;
        match k {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                let g = group_entry(&mut inner.groups, &group, limits, now);
                match value.and_then(|v| serde_json::from_slice::<OffsetValue>(v).ok()) {
                    Some(v) => {
                        g.offsets.insert(
                            (topic, partition),
                            Committed {
                                offset: v.offset,
                                leader_epoch: v.leader_epoch,
                                metadata: v.metadata,
                                commit_timestamp: v.commit_timestamp,
                                record_offset,
                            },
                        );
                    }
                    None => {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            }
            RecordKey::Group { group } => {
                match value.and_then(|v| serde_json::from_slice::<GroupValue>(v).ok()) {
                    Some(v) => {
                        let offsets = inner
                            .groups
                            .remove(&group)
                            .map(|g| g.offsets)
                            .unwrap_or_default();
                        let members = v
                            .members
                            .into_iter()
                            .map(|m| {
                                Member::restored(
                                    m.id,
                                    m.instance_id,
                                    m.client_id,
                                    m.client_host,
                                    (m.session_timeout_ms, m.rebalance_timeout_ms),
                                    (
                                        v.protocol.clone().unwrap_or_default(),
                                        Bytes::from(m.metadata),
                                    ),
                                    Bytes::from(m.assignment),
                                )
                            })
                            .collect();
                        let mut g = Group::restore(
                            &group,
                            limits,
                            now,
                            v.generation,
                            v.protocol_type,
                            v.protocol,
                            v.leader,
                            members,
                        );
                        g.offsets = offsets;
                        inner.groups.insert(group, g);
                    }
                    None => {
                        inner.groups.remove(&group);
                    }
                }
            }
        }
    }

    /// Writes what changed about a group: its metadata record if the state
    /// machine says so.
    fn persist_metadata(&self, g: &mut Group) -> Result<(), KafkaError> {
        if !g.metadata_changed {
            return Ok(());
        }
        g.metadata_changed = false;
        let key = key_bytes(&RecordKey::Group {
            group: g.id.clone(),
        });
        self.append(&g.id, vec![(key, group_value(g))])?;
        Ok(())
    }

    /// Writes a group's metadata record when the state machine asks for a
    /// durable one ([`Group::store_request`]) and, in the background, tells
    /// the group once the ISR has it.
    fn store(&self, g: &mut Group, token: u64) {
        g.metadata_changed = false;
        let key = key_bytes(&RecordKey::Group {
            group: g.id.clone(),
        });
        let appended = match self.append(&g.id, vec![(key, group_value(g))]) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(group = %g.id, error = %e, "could not write group metadata");
                let code = if e.code == ResponseError::NotLeaderOrFollower {
                    ResponseError::NotCoordinator
                } else {
                    ResponseError::CoordinatorNotAvailable
                };
                g.stored(token, Err(code), now_ms());
                return;
            }
        };
        let Some(me) = self.me.upgrade() else { return };
        let group = g.id.clone();
        tokio::spawn(async move {
            // Kafka's mapping of a failed store for the waiting members.
            let result = me
                .wait_replicated(&group, &appended)
                .await
                .map_err(|e| match e {
                    ResponseError::RequestTimedOut => ResponseError::RebalanceInProgress,
                    ResponseError::NotCoordinator => ResponseError::NotCoordinator,
                    _ => ResponseError::CoordinatorNotAvailable,
                });
            let mut inner = me.inner.lock().expect("coordinator lock");
            if let Some(g) = inner.groups.get_mut(&group) {
                g.stored(token, result, now_ms());
            }
            me.deliver(&mut inner, &group);
        });
    }

    fn deliver(&self, inner: &mut Inner, group: &str) {
        let Some(g) = inner.groups.get_mut(group) else {
            return;
        };
        if let Some(token) = g.store_request() {
            self.store(g, token);
        } else if let Err(e) = self.persist_metadata(g) {
            tracing::error!(group, error = %e, "could not persist group metadata");
        }
        let replies = g.take_replies();
        for r in replies {
            match r {
                Reply::Join(m, result) => {
                    if let Some(tx) = inner.join_waiters.remove(&(group.to_string(), m)) {
                        let _ = tx.send(result);
                    }
                }
                Reply::Sync(m, result) => {
                    if let Some(tx) = inner.sync_waiters.remove(&(group.to_string(), m)) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
    }

    pub async fn join(&self, group: &str, args: JoinArgs) -> JoinResult {
        let member_hint = args.member_id.clone();
        let rx = {
            let mut inner = self.inner.lock().expect("coordinator lock");
            if let Err(e) = self.check_owner(&inner, group) {
                return JoinResult::error(e, &member_hint);
            }
            let now = now_ms();
            let g = group_entry(&mut inner.groups, group, self.config.limits, now);
            match g.join(args, now) {
                Outcome::Now(r) => {
                    self.deliver(&mut inner, group);
                    return r;
                }
                Outcome::Wait(member) => {
                    let (tx, rx) = oneshot::channel();
                    inner.join_waiters.insert((group.to_string(), member), tx);
                    self.deliver(&mut inner, group);
                    rx
                }
            }
        };
        // A dropped sender means a newer JoinGroup from the same member took
        // this one's place.
        rx.await
            .unwrap_or_else(|_| JoinResult::error(ResponseError::RebalanceInProgress, &member_hint))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance_id: &Option<String>,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncResult, ResponseError> {
        let rx = {
            let mut inner = self.inner.lock().expect("coordinator lock");
            self.check_owner(&inner, group)?;
            let Some(g) = inner.groups.get_mut(group) else {
                return Err(ResponseError::UnknownMemberId);
            };
            match g.sync(
                member,
                generation,
                instance_id,
                protocol_type,
                protocol,
                assignments,
                now_ms(),
            ) {
                Outcome::Now(r) => {
                    self.deliver(&mut inner, group);
                    return Ok(r);
                }
                Outcome::Wait(m) => {
                    let (tx, rx) = oneshot::channel();
                    inner.sync_waiters.insert((group.to_string(), m), tx);
                    self.deliver(&mut inner, group);
                    rx
                }
            }
        };
        Ok(rx.await.unwrap_or(SyncResult {
            error: Some(ResponseError::RebalanceInProgress),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }))
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance_id: &Option<String>,
    ) -> Result<(), ResponseError> {
        let mut inner = self.inner.lock().expect("coordinator lock");
        self.check_owner(&inner, group)?;
        let g = inner
            .groups
            .get_mut(group)
            .ok_or(ResponseError::UnknownMemberId)?;
        let r = g.heartbeat(member, generation, instance_id, now_ms());
        self.deliver(&mut inner, group);
        r
    }

    pub fn leave(
        &self,
        group: &str,
        who: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let mut inner = self.inner.lock().expect("coordinator lock");
        self.check_owner(&inner, group)?;
        let g = inner
            .groups
            .get_mut(group)
            .ok_or(ResponseError::UnknownMemberId)?;
        let r = g.leave(who, now_ms());
        self.deliver(&mut inner, group);
        Ok(r)
    }

    /// Commits offsets for a group; per-partition results in request order.
    /// Answered, and visible to OffsetFetch, only once the ISR of the
    /// group's offsets partition has them: an offset a coordinator failover
    /// could roll back is never served.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance_id: &Option<String>,
        parts: Vec<CommitPartition>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let (mut results, written) =
            self.commit_locally(group, member, generation, instance_id, parts)?;
        let Some((appended, accepted)) = written else {
            return Ok(results);
        };
        let replicated = self.wait_replicated(group, &appended).await;
        let mut inner = self.inner.lock().expect("coordinator lock");
        let owned = self.check_owner(&inner, group).is_ok();
        let g = inner.groups.get_mut(group).filter(|_| owned);
        if let Some(g) = g {
            g.pending_commits = g.pending_commits.saturating_sub(1);
            if replicated.is_ok() {
                for (_, p, ts) in &accepted {
                    let newer = g
                        .offsets
                        .get(&(p.topic.clone(), p.partition))
                        .is_none_or(|c| c.record_offset < appended.last_offset);
                    if newer {
                        g.offsets.insert(
                            (p.topic.clone(), p.partition),
                            Committed {
                                offset: p.offset,
                                leader_epoch: p.leader_epoch,
                                metadata: p.metadata.clone(),
                                commit_timestamp: *ts,
                                record_offset: appended.last_offset,
                            },
                        );
                    }
                }
            }
        }
        if let Err(e) = replicated {
            for (i, _, _) in accepted {
                results[i] = Err(e);
            }
        }
        Ok(results)
    }

    /// Validates and appends a commit; returns the results and, when
    /// something was written, the append and what it holds (result index,
    /// partition, commit time). Nothing enters memory here.
    #[allow(clippy::type_complexity)]
    fn commit_locally(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance_id: &Option<String>,
        parts: Vec<CommitPartition>,
    ) -> Result<
        (
            Vec<Result<(), ResponseError>>,
            Option<(Appended, Vec<(usize, CommitPartition, i64)>)>,
        ),
        ResponseError,
    > {
        let mut inner = self.inner.lock().expect("coordinator lock");
        self.check_owner(&inner, group)?;
        if generation >= 0 && !inner.groups.contains_key(group) {
            // A member of a generation of a group that does not exist (any
            // more): a stale commit, refused as Kafka refuses it.
            return Err(ResponseError::IllegalGeneration);
        }
        let now = now_ms();
        let g = group_entry(&mut inner.groups, group, self.config.limits, now);
        if let Err(e) = g.validate_commit(member, generation, instance_id) {
            if g.members.is_empty() && g.offsets.is_empty() && g.pending_commits == 0 {
                inner.groups.remove(group);
            }
            return Err(e);
        }
        let (mut results, records, accepted) = self.offset_records(group, parts, now);
        if records.is_empty() {
            return Ok((results, None));
        }
        match self.append(group, records) {
            Ok(a) => {
                if let Some(g) = inner.groups.get_mut(group) {
                    g.pending_commits += 1;
                }
                Ok((results, Some((a, accepted))))
            }
            Err(e) => {
                tracing::warn!(group, error = %e, "could not persist offsets");
                let code = if e.code == ResponseError::NotLeaderOrFollower {
                    ResponseError::NotCoordinator
                } else {
                    ResponseError::CoordinatorNotAvailable
                };
                for (i, _, _) in &accepted {
                    results[*i] = Err(code);
                }
                Ok((results, None))
            }
        }
    }

    /// The records of an offset commit: each partition's result (an unknown
    /// partition, metadata too large) and, for those accepted, the record
    /// to write and (result index, partition, commit time).
    #[allow(clippy::type_complexity)]
    fn offset_records(
        &self,
        group: &str,
        parts: Vec<CommitPartition>,
        now: i64,
    ) -> (
        Vec<Result<(), ResponseError>>,
        Vec<(Bytes, Option<Bytes>)>,
        Vec<(usize, CommitPartition, i64)>,
    ) {
        let mut results = Vec::with_capacity(parts.len());
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        for p in parts {
            let exists = self
                .broker
                .topic(&p.topic)
                .is_some_and(|t| t.partition(p.partition).is_some());
            if !exists {
                results.push(Err(ResponseError::UnknownTopicOrPartition));
                continue;
            }
            if p.metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                results.push(Err(ResponseError::OffsetMetadataTooLarge));
                continue;
            }
            let value = OffsetValue {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata: p.metadata.clone(),
                commit_timestamp: now,
            };
            records.push((
                offset_key(group, &p.topic, p.partition),
                Some(Bytes::from(serde_json::to_vec(&value).expect("serializes"))),
            ));
            accepted.push((results.len(), p, now));
            results.push(Ok(()));
        }
        (results, records, accepted)
    }

    /// Committed offsets of a group: for the partitions asked, or all of them.
    pub fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, i32)>>,
    ) -> Result<FetchedOffsets, ResponseError> {
        let inner = self.inner.lock().expect("coordinator lock");
        self.check_owner(&inner, group)?;
        let g = inner.groups.get(group);
        Ok(match wanted {
            Some(list) => list
                .into_iter()
                .map(|k| {
                    let c = g.and_then(|g| g.offsets.get(&k).cloned());
                    (k, c)
                })
                .collect(),
            None => g
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    pub fn describe(&self, group: &str) -> Result<GroupDescription, ResponseError> {
        let inner = self.inner.lock().expect("coordinator lock");
        self.check_owner(&inner, group)?;
        Ok(match inner.groups.get(group) {
            None => GroupDescription {
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: vec![],
            },
            Some(g) => {
                let protocol = g.protocol.clone().unwrap_or_default();
                GroupDescription {
                    state: g.state.name(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    protocol: protocol.clone(),
                    members: g
                        .members
                        .values()
                        .map(|m| {
                            (
                                m.id.clone(),
                                m.instance_id.clone(),
                                m.client_id.clone(),
                                m.client_host.clone(),
                                m.metadata(&protocol),
                                m.assignment.clone(),
                            )
                        })
                        .collect(),
                }
            }
        })
    }

    /// (group id, protocol type, state) of every group this node coordinates.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let inner = self.inner.lock().expect("coordinator lock");
        let mut out: Vec<_> = inner
            .groups
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes an empty group with its offsets (DeleteGroups). Answered
    /// once the tombstones are replicated; meanwhile the group is Dead (it
    /// takes no joins or commits) and still serves its offsets. If the
    /// write fails the group is Empty again, and a retry writes anew.
    pub async fn delete_group(&self, group: &str) -> Result<(), ResponseError> {
        let appended = {
            let mut inner = self.inner.lock().expect("coordinator lock");
            self.check_owner(&inner, group)?;
            let g = inner
                .groups
                .get_mut(group)
                .ok_or(ResponseError::GroupIdNotFound)?;
            match g.state {
                GroupState::Empty if g.pending_commits == 0 => {}
                GroupState::Empty | GroupState::Dead => {
                    return Err(ResponseError::CoordinatorLoadInProgress)
                }
                _ => return Err(ResponseError::NonEmptyGroup),
            }
            let mut records: Vec<(Bytes, Option<Bytes>)> = g
                .offsets
                .keys()
                .map(|(t, p)| (offset_key(group, t, *p), None))
                .collect();
            records.push((
                key_bytes(&RecordKey::Group {
                    group: group.to_string(),
                }),
                None,
            ));
            let appended = self
                .append(group, records)
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
            if let Some(g) = inner.groups.get_mut(group) {
                g.state = GroupState::Dead;
            }
            appended
        };
        let replicated = self.wait_replicated(group, &appended).await;
        let mut inner = self.inner.lock().expect("coordinator lock");
        let dead = inner
            .groups
            .get(group)
            .is_some_and(|g| g.state == GroupState::Dead);
        if dead {
            if replicated.is_ok() {
                inner.groups.remove(group);
            } else if let Some(g) = inner.groups.get_mut(group) {
                g.state = GroupState::Empty;
            }
        }
        replicated
    }

    /// Deletes committed offsets of partitions the group does not consume
    /// (OffsetDelete). Memory forgets them once their tombstones are
    /// replicated, and only those no commit replaced meanwhile.
    pub async fn delete_offsets(
        &self,
        group: &str,
        parts: Vec<(String, i32)>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let (results, gone, appended) = {
            let mut inner = self.inner.lock().expect("coordinator lock");
            self.check_owner(&inner, group)?;
            let g = inner
                .groups
                .get_mut(group)
                .ok_or(ResponseError::GroupIdNotFound)?;
            if g.state == GroupState::Dead {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            let subscribed = subscribed_topics(g);
            let mut results = Vec::with_capacity(parts.len());
            let mut records = Vec::new();
            let mut gone = Vec::new();
            for (t, p) in parts {
                if g.state != GroupState::Empty && subscribed.contains(&t) {
                    results.push(Err(ResponseError::GroupSubscribedToTopic));
                    continue;
                }
                if g.offsets.contains_key(&(t.clone(), p)) {
                    records.push((offset_key(group, &t, p), None));
                    gone.push((t, p));
                }
                results.push(Ok(()));
            }
            if records.is_empty() {
                return Ok(results);
            }
            let appended = self
                .append(group, records)
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
            (results, gone, appended)
        };
        self.wait_replicated(group, &appended).await?;
        let mut inner = self.inner.lock().expect("coordinator lock");
        if let Some(g) = inner.groups.get_mut(group) {
            g.forget_offsets(&gone, appended.last_offset);
        }
        Ok(results)
    }

    /// Expires sessions and rebalance deadlines.
    pub fn tick(&self) {
        let mut inner = self.inner.lock().expect("coordinator lock");
        let now = now_ms();
        let ids: Vec<String> = inner.groups.keys().cloned().collect();
        for id in ids {
            if let Some(g) = inner.groups.get_mut(&id) {
                g.tick(now);
            }
            self.deliver(&mut inner, &id);
        }
    }

    /// Expires the offsets of empty groups past `offsets.retention.ms`:
    /// tombstones first, memory forgets them once those are replicated
    /// (a write that fails is tried again at the next check).
    async fn expire_offsets(&self) {
        let now = now_ms();
        let retention = self.config.offsets_retention_ms;
        let mut written = vec![];
        {
            let inner = self.inner.lock().expect("coordinator lock");
            for g in inner.groups.values() {
                let expired = g.expired_offsets(now, retention);
                if expired.is_empty() || self.check_owner(&inner, &g.id).is_err() {
                    continue;
                }
                let keys: Vec<(String, i32)> = expired.into_iter().map(|(k, _)| k).collect();
                let records = keys
                    .iter()
                    .map(|(t, p)| (offset_key(&g.id, t, *p), None))
                    .collect();
                match self.append(&g.id, records) {
                    Ok(appended) => written.push((g.id.clone(), keys, appended)),
                    Err(e) => {
                        tracing::warn!(group = %g.id, error = %e, "could not write expired offsets")
                    }
                }
            }
        }
        for (group, keys, appended) in written {
            if let Err(e) = self.wait_replicated(&group, &appended).await {
                tracing::warn!(group = %group, error = ?e, "expired offsets not replicated");
                continue;
            }
            let mut inner = self.inner.lock().expect("coordinator lock");
            let Some(g) = inner.groups.get_mut(&group) else {
                continue;
            };
            g.forget_offsets(&keys, appended.last_offset);
            if g.offsets.is_empty()
                && g.members.is_empty()
                && g.pending_commits == 0
                && g.state == GroupState::Empty
            {
                tracing::info!(group = %group, "offsets expired; group removed");
                inner.groups.remove(&group);
            }
        }
    }

    /// Session and rebalance deadlines every 100 ms; offset retention every
    /// `offsets_retention_check_interval_ms`.
    pub async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let every = Duration::from_millis(self.config.offsets_retention_check_interval_ms.max(10));
        let mut next_expiry = tokio::time::Instant::now() + every;
        loop {
            tick.tick().await;
            self.tick();
            if tokio::time::Instant::now() >= next_expiry {
                self.expire_offsets().await;
                next_expiry = tokio::time::Instant::now() + every;
            }
        }
    }
}

type Waiters<T> = HashMap<(String, String), oneshot::Sender<T>>;

/// Removes the parked requests of the groups `mine` selects.
fn take_waiters<T>(
    waiters: &mut Waiters<T>,
    mine: impl Fn(&str) -> bool,
) -> Vec<((String, String), oneshot::Sender<T>)> {
    let keys: Vec<_> = waiters.keys().filter(|(g, _)| mine(g)).cloned().collect();
    keys.into_iter()
        .filter_map(|k| waiters.remove(&k).map(|tx| (k, tx)))
        .collect()
}

/// Topics a consumer group's members subscribe to, from their "consumer"
/// protocol metadata.
fn subscribed_topics(g: &Group) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if g.protocol_type.as_deref() != Some("consumer") {
        return vec![];
    }
    let protocol = g.protocol.clone().unwrap_or_default();
    let mut topics = vec![];
    for m in g.members.values() {
        let mut b = m.metadata(&protocol);
        if b.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([b[0], b[1]]);
        let _ = bytes::Buf::get_i16(&mut b);
        if let Ok(s) = ConsumerProtocolSubscription::decode(&mut b, version.clamp(0, 3)) {
            topics.extend(s.topics.iter().map(|t| t.to_string()));
        }
    }
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_kafka() {
        // Values computed with java.lang.String#hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // Overflowing hashes wrap as Java ints do.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for g in ["a", "hello", "group-with-a-long-name-0123456789"] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p));
        }
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
    }
}
