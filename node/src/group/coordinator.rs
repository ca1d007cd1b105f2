//! The group coordinator: runs the pure [`Group`] state machines, parks
//! JoinGroup/SyncGroup requests until their phase completes, and keeps
//! committed offsets and group metadata as records in `__consumer_offsets`.
//!
//! The coordinator of a group is the leader of partition
//! `java_hash(group) mod N` of `__consumer_offsets` (Kafka's rule), so group
//! state lives, replicates and fails over with that partition. On start the
//! coordinator replays the topic to rebuild every group it coordinates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::state::{
    Committed, Group, GroupState, JoinArgs, JoinResult, Limits, Member, Outcome, Reply, SyncResult,
};
use crate::broker::{now_ms, Broker, KafkaError, NewTopic};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

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
                assignment: m.assignment.to_vec(),
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
    groups: HashMap<String, Group>,
    join_waiters: HashMap<(String, String), oneshot::Sender<JoinResult>>,
    sync_waiters: HashMap<(String, String), oneshot::Sender<SyncResult>>,
}

pub struct Coordinator {
    broker: Arc<Broker>,
    pub config: GroupConfig,
    inner: Mutex<Inner>,
}

impl Coordinator {
    /// Creates `__consumer_offsets` if needed and rebuilds every group from it.
    pub fn open(broker: Arc<Broker>, config: GroupConfig) -> anyhow::Result<Arc<Coordinator>> {
        if broker.topic(OFFSETS_TOPIC).is_none() {
            let configs = [("retention.ms".to_string(), "-1".to_string())]
                .into_iter()
                .collect();
            broker
                .create_topic(NewTopic {
                    name: OFFSETS_TOPIC.to_string(),
                    partitions: config.offsets_topic_partitions,
                    replication_factor: 1,
                    configs,
                })
                .map_err(|e| anyhow::anyhow!("creating {OFFSETS_TOPIC}: {e}"))?;
        }
        let c = Arc::new(Coordinator {
            broker,
            config,
            inner: Mutex::new(Inner::default()),
        });
        c.replay()?;
        Ok(c)
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

    fn replay(&self) -> anyhow::Result<()> {
        let topic = self.broker.topic(OFFSETS_TOPIC).expect("created in open");
        let now = now_ms();
        let mut inner = self.inner.lock().expect("coordinator lock");
        let mut records = 0usize;
        for log in &topic.partitions {
            let mut offset = log.log_start_offset();
            let hw = log.high_watermark();
            while offset < hw {
                let read = self.broker.read(log, offset, 4 << 20, true)?;
                if read.batches == 0 {
                    break;
                }
                let mut buf = read.records.clone();
                for set in RecordBatchDecoder::decode_all(&mut buf)? {
                    for r in set.records {
                        offset = r.offset + 1;
                        records += 1;
                        if let Some(k) = r.key {
                            self.apply(&mut inner, &k, r.value.as_ref(), now);
                        }
                    }
                }
            }
        }
        tracing::info!(
            groups = inner.groups.len(),
            records,
            "group coordinator state loaded"
        );
        Ok(())
    }

    fn apply(&self, inner: &mut Inner, key: &[u8], value: Option<&Bytes>, now: i64) {
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
        self.broker.append_internal(
            OFFSETS_TOPIC,
            self.partition_for(&g.id),
            vec![(key, group_value(g))],
        )?;
        Ok(())
    }

    fn deliver(&self, inner: &mut Inner, group: &str) {
        let Some(g) = inner.groups.get_mut(group) else {
            return;
        };
        let replies = g.take_replies();
        if let Err(e) = self.persist_metadata(g) {
            tracing::error!(group, error = %e, "could not persist group metadata");
        }
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
        let g = inner
            .groups
            .get_mut(group)
            .ok_or(ResponseError::UnknownMemberId)?;
        let r = g.leave(who, now_ms());
        self.deliver(&mut inner, group);
        Ok(r)
    }

    /// Commits offsets for a group; per-partition results in request order.
    pub fn commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance_id: &Option<String>,
        parts: Vec<CommitPartition>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let mut inner = self.inner.lock().expect("coordinator lock");
        let now = now_ms();
        let g = group_entry(&mut inner.groups, group, self.config.limits, now);
        if let Err(e) = g.validate_commit(member, generation, instance_id) {
            if g.members.is_empty() && g.offsets.is_empty() {
                inner.groups.remove(group);
            }
            return Err(e);
        }
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
        if !records.is_empty() {
            if let Err(e) =
                self.broker
                    .append_internal(OFFSETS_TOPIC, self.partition_for(group), records)
            {
                tracing::error!(group, error = %e, "could not persist offsets");
                for (i, _, _) in &accepted {
                    results[*i] = Err(ResponseError::CoordinatorNotAvailable);
                }
                return Ok(results);
            }
        }
        let g = inner.groups.get_mut(group).expect("present");
        for (_, p, ts) in accepted {
            g.offsets.insert(
                (p.topic, p.partition),
                Committed {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: p.metadata,
                    commit_timestamp: ts,
                },
            );
        }
        Ok(results)
    }

    /// Committed offsets of a group: for the partitions asked, or all of them.
    pub fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, i32)>>,
    ) -> Vec<((String, i32), Option<Committed>)> {
        let inner = self.inner.lock().expect("coordinator lock");
        let g = inner.groups.get(group);
        match wanted {
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
        }
    }

    pub fn describe(&self, group: &str) -> GroupDescription {
        let inner = self.inner.lock().expect("coordinator lock");
        match inner.groups.get(group) {
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
        }
    }

    /// (group id, protocol type, state) of every group.
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

    /// Deletes an empty group with its offsets (DeleteGroups).
    pub fn delete_group(&self, group: &str) -> Result<(), ResponseError> {
        let mut inner = self.inner.lock().expect("coordinator lock");
        let g = inner
            .groups
            .get(group)
            .ok_or(ResponseError::GroupIdNotFound)?;
        if g.state != GroupState::Empty {
            return Err(ResponseError::NonEmptyGroup);
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
        self.broker
            .append_internal(OFFSETS_TOPIC, self.partition_for(group), records)
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        inner.groups.remove(group);
        Ok(())
    }

    /// Deletes committed offsets of partitions the group does not consume
    /// (OffsetDelete).
    pub fn delete_offsets(
        &self,
        group: &str,
        parts: Vec<(String, i32)>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let mut inner = self.inner.lock().expect("coordinator lock");
        let g = inner
            .groups
            .get_mut(group)
            .ok_or(ResponseError::GroupIdNotFound)?;
        let subscribed = subscribed_topics(g);
        let mut results = Vec::with_capacity(parts.len());
        let mut records = Vec::new();
        for (t, p) in parts {
            if g.state != GroupState::Empty && subscribed.contains(&t) {
                results.push(Err(ResponseError::GroupSubscribedToTopic));
                continue;
            }
            if g.offsets.remove(&(t.clone(), p)).is_some() {
                records.push((offset_key(group, &t, p), None));
            }
            results.push(Ok(()));
        }
        if !records.is_empty() {
            self.broker
                .append_internal(OFFSETS_TOPIC, self.partition_for(group), records)
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
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

    fn expire_offsets(&self) {
        let mut inner = self.inner.lock().expect("coordinator lock");
        let now = now_ms();
        let retention = self.config.offsets_retention_ms;
        let mut emptied = vec![];
        for g in inner.groups.values_mut() {
            let expired = g.expire_offsets(now, retention);
            if expired.is_empty() {
                continue;
            }
            let records = expired
                .into_iter()
                .map(|(t, p)| (offset_key(&g.id, &t, p), None))
                .collect();
            if let Err(e) = self.broker.append_internal(
                OFFSETS_TOPIC,
                partition_for(&g.id, self.partitions()),
                records,
            ) {
                tracing::warn!(group = %g.id, error = %e, "could not write expired offsets");
            }
            if g.offsets.is_empty() && g.members.is_empty() {
                emptied.push(g.id.clone());
            }
        }
        for id in emptied {
            tracing::info!(group = %id, "offsets expired; group removed");
            inner.groups.remove(&id);
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
                self.expire_offsets();
                next_expiry = tokio::time::Instant::now() + every;
            }
        }
    }
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
