//! The transaction coordinator: the transactional ids whose
//! `__transaction_state` partition this node leads (partition
//! hash(id) mod N, as Kafka places them), their state kept as records in
//! that partition and replicated like any other, the marker rounds that end
//! transactions, the timeout that aborts stuck ones, and recovery when a
//! node takes a partition over: every transaction that reached Prepare* is
//! finished, open ones are left to their timeout, so none hangs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use sluice_api::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};

use super::markers::{self, Peers};
use super::state::{self, End, Init, Markers, TxnError, TxnMetadata, TxnState};
use super::TxnConfig;
use crate::broker::{now_ms, Broker};
use crate::group;
use crate::group::coordinator::{coordinator_error, partition_for};
use crate::log::batch::{self, Header};
use crate::log::PartitionLog;
use crate::replication::proto::VerifyPartitionRequest;
use crate::replication::replica::Transition;

/// The key of a transactional id's record in `__transaction_state`.
#[derive(Debug, Serialize, Deserialize)]
struct TxnKey {
    transactional_id: String,
}

fn key_bytes(id: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&TxnKey {
            transactional_id: id.to_string(),
        })
        .expect("keys serialize"),
    )
}

#[derive(Default)]
struct Inner {
    /// `__transaction_state` partitions this node leads and has loaded,
    /// with the leader epoch it leads them in (the coordinator epoch the
    /// markers carry).
    owned: HashMap<i32, i32>,
    txns: HashMap<String, TxnMetadata>,
    /// Ids with a state write in flight: one change at a time per id.
    busy: HashSet<String>,
    /// Ids with a marker round in flight.
    completing: HashSet<String>,
}

/// What DescribeTransactions and ListTransactions report of one id.
pub type Described = TxnMetadata;

/// Marks an id in one of the coordinator's in-flight sets (`busy`,
/// `completing`) for as long as it lives: the mark goes even when the
/// future holding it is dropped (a client gone mid-request).
struct Flag<'a> {
    c: &'a Coordinator,
    id: String,
    set: fn(&mut Inner) -> &mut HashSet<String>,
}

impl<'a> Flag<'a> {
    /// Sets the flag; `None` when it was set already.
    fn take(
        c: &'a Coordinator,
        inner: &mut Inner,
        id: &str,
        set: fn(&mut Inner) -> &mut HashSet<String>,
    ) -> Option<Flag<'a>> {
        set(inner).insert(id.to_string()).then(|| Flag {
            c,
            id: id.to_string(),
            set,
        })
    }
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        (self.set)(&mut self.c.lock()).remove(&self.id);
    }
}

fn busy(i: &mut Inner) -> &mut HashSet<String> {
    &mut i.busy
}

fn completing(i: &mut Inner) -> &mut HashSet<String> {
    &mut i.completing
}

pub struct Coordinator {
    broker: Arc<Broker>,
    groups: Arc<group::Coordinator>,
    pub config: TxnConfig,
    pub peers: Peers,
    inner: Mutex<Inner>,
    me: Weak<Coordinator>,
}

impl Coordinator {
    pub fn new(
        broker: Arc<Broker>,
        groups: Arc<group::Coordinator>,
        config: TxnConfig,
    ) -> Arc<Coordinator> {
        let node_tls = broker.node_tls.get().cloned();
        Arc::new_cyclic(|me| Coordinator {
            broker,
            groups,
            config,
            peers: Peers::new(node_tls),
            inner: Mutex::new(Inner::default()),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("transaction coordinator lock")
    }

    fn partitions(&self) -> i32 {
        self.broker
            .topic(TRANSACTION_STATE_TOPIC)
            .map(|t| t.record.partitions)
            .unwrap_or(self.config.state_topic_partitions)
    }

    /// The `__transaction_state` partition of a transactional id.
    pub fn partition_for(&self, id: &str) -> i32 {
        partition_for(id, self.partitions())
    }

    /// Loads the transactions of partitions this node now leads (and
    /// finishes those that reached Prepare*), drops the others.
    pub fn leadership_changed(&self, transitions: &[(String, i32, Transition)]) {
        for (topic, p, t) in transitions {
            if topic != TRANSACTION_STATE_TOPIC {
                continue;
            }
            match t {
                Transition::BecameLeader(epoch) => match self.load(*p, *epoch) {
                    Ok(pending) => {
                        for (id, mk) in pending {
                            self.spawn_round(id, mk);
                        }
                    }
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "loading transactions failed")
                    }
                },
                _ => self.unload(*p),
            }
        }
    }

    /// Replays one partition to its log end; returns the marker rounds to
    /// finish.
    fn load(&self, partition: i32, epoch: i32) -> anyhow::Result<Vec<(String, Markers)>> {
        let topic = self
            .broker
            .topic(TRANSACTION_STATE_TOPIC)
            .ok_or_else(|| anyhow::anyhow!("{TRANSACTION_STATE_TOPIC} does not exist"))?;
        let log = topic.partition(partition).ok_or_else(|| {
            anyhow::anyhow!("{TRANSACTION_STATE_TOPIC}-{partition} does not exist")
        })?;
        let mut loaded: HashMap<String, TxnMetadata> = HashMap::new();
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let read = log.read(offset, 4 << 20, end, true)?;
            if read.batches == 0 {
                break;
            }
            for b in batch::framed(&read.records) {
                let Ok(h) = Header::parse(&b) else { break };
                offset = h.last_offset().saturating_add(1);
                let records = match batch::decode_records(
                    &b,
                    self.broker.config.max_decompressed_batch_bytes,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(partition, batch = h.base_offset(), error = %e, "skipping a corrupt batch of transaction records");
                        continue;
                    }
                };
                for r in records {
                    let Some(k) = r
                        .key
                        .and_then(|k| serde_json::from_slice::<TxnKey>(&k).ok())
                    else {
                        continue;
                    };
                    match r
                        .value
                        .and_then(|v| serde_json::from_slice::<TxnMetadata>(&v).ok())
                    {
                        Some(m) => loaded.insert(k.transactional_id, m),
                        None => loaded.remove(&k.transactional_id),
                    };
                }
            }
        }
        let pending: Vec<(String, Markers)> = loaded
            .iter()
            .filter_map(|(id, m)| state::recover(m).map(|mk| (id.clone(), mk)))
            .collect();
        let mut inner = self.lock();
        let n = loaded.len();
        inner
            .txns
            .retain(|id, _| partition_for(id, self.partitions()) != partition);
        inner.txns.extend(loaded);
        inner.owned.insert(partition, epoch);
        if n > 0 {
            tracing::info!(
                partition,
                transactional_ids = n,
                finishing = pending.len(),
                "transactions loaded"
            );
        }
        Ok(pending)
    }

    fn unload(&self, partition: i32) {
        let mut inner = self.lock();
        if inner.owned.remove(&partition).is_some() {
            let partitions = self.partitions();
            inner
                .txns
                .retain(|id, _| partition_for(id, partitions) != partition);
            tracing::info!(
                partition,
                "transactions unloaded: no longer the coordinator"
            );
        }
    }

    /// Writes a transactional id's record (a tombstone for `None`) and waits
    /// for the partition's ISR.
    async fn store(
        &self,
        partition: i32,
        id: &str,
        value: Option<&TxnMetadata>,
    ) -> Result<(), ResponseError> {
        let value = value.map(|m| Bytes::from(serde_json::to_vec(m).expect("metadata serializes")));
        let appended = self
            .broker
            .append_internal(
                TRANSACTION_STATE_TOPIC,
                partition,
                vec![(key_bytes(id), value)],
            )
            .map_err(|e| coordinator_error(e.code))?;
        let topic = self
            .broker
            .topic(TRANSACTION_STATE_TOPIC)
            .ok_or(ResponseError::NotCoordinator)?;
        let timeout =
            Duration::from_millis(self.broker.config.replication_timeout_ms.max(1) as u64);
        self.broker
            .wait_replicated(&topic, partition, &appended, timeout)
            .await
            .map_err(|e| coordinator_error(e.code))
    }

    /// One change to a transactional id: `decide` sees its metadata (if
    /// any) and the time, and returns the answer and, when the state
    /// changes, the metadata to store. The change is visible only once the
    /// ISR has it; one change per id at a time.
    async fn transition<T>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<&TxnMetadata>, i64) -> Result<(T, Option<TxnMetadata>), TxnError>,
    ) -> Result<T, ResponseError> {
        let p = self.partition_for(id);
        let (answer, next, _flag) = {
            let mut inner = self.lock();
            if !inner.owned.contains_key(&p) {
                return Err(ResponseError::NotCoordinator);
            }
            if inner.busy.contains(id) {
                return Err(ResponseError::ConcurrentTransactions);
            }
            let (answer, next) = decide(inner.txns.get(id), now_ms()).map_err(|e| e.code())?;
            let Some(next) = next else { return Ok(answer) };
            let flag = Flag::take(self, &mut inner, id, busy);
            (answer, next, flag)
        };
        let stored = self.store(p, id, Some(&next)).await;
        let mut inner = self.lock();
        stored?;
        if !inner.owned.contains_key(&p) {
            return Err(ResponseError::NotCoordinator);
        }
        inner.txns.insert(id.to_string(), next);
        Ok(answer)
    }

    /// InitProducerId with a transactional id: the producer id and its new
    /// epoch, which fences every older instance. An open transaction is
    /// aborted first.
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        for _ in 0..2 {
            let fresh = self.broker.allocate_producer_id().map_err(|e| e.code)?;
            let max = self.config.max_timeout_ms;
            let outcome = self
                .transition(id, |m, now| {
                    match state::init(m, id, timeout_ms, max, expected, now, || fresh)? {
                        Init::Ready(n) => Ok((Ok((n.producer_id, n.producer_epoch)), Some(n))),
                        Init::AbortFirst(n, mk) => Ok((Err(mk), Some(n))),
                    }
                })
                .await?;
            match outcome {
                Ok(ids) => return Ok(ids),
                Err(mk) => {
                    // The old producer's transaction is aborted under the
                    // bumped epoch (in its own task: it outlives this
                    // request); then this one gets the next.
                    let wait = self.replication_timeout();
                    let done = match self.spawn_round(id.to_string(), mk) {
                        Some(h) => matches!(tokio::time::timeout(wait, h).await, Ok(Ok(true))),
                        None => false,
                    };
                    if !done {
                        break;
                    }
                }
            }
        }
        Err(ResponseError::ConcurrentTransactions)
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn with the group's offsets
    /// partition).
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        self.transition(id, |m, now| {
            let m = m.ok_or(TxnError::InvalidProducerIdMapping)?;
            Ok((
                (),
                state::add_partitions(m, producer_id, epoch, partitions, now)?,
            ))
        })
        .await
    }

    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins
    /// the transaction.
    pub async fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), ResponseError> {
        let p = self.groups.partition_for(group);
        self.add_partitions(id, producer_id, epoch, vec![(OFFSETS_TOPIC.to_string(), p)])
            .await
    }

    /// Whether a partition is part of the producer's ongoing transaction (a
    /// leader's check before the transaction's first write there).
    pub fn verify_partition(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let inner = self.lock();
        if !inner.owned.contains_key(&self.partition_for(id)) {
            return Err(ResponseError::NotCoordinator);
        }
        let m = inner
            .txns
            .get(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        state::verify(m, producer_id, epoch).map_err(|e| e.code())?;
        let added =
            m.state == TxnState::Ongoing && m.partitions.contains(&(topic.to_string(), partition));
        if added {
            Ok(())
        } else {
            Err(ResponseError::InvalidTxnState)
        }
    }

    /// The guard a transactional write to `log` (partition `partition` of
    /// `topic`) is appended under (see `Broker::append_guarded`). Before
    /// the producer's first write of a transaction there, the coordinator
    /// must confirm the partition is in its ongoing transaction (KIP-890);
    /// without a transactional id that cannot be asked: INVALID_TXN_STATE.
    pub async fn first_write_guard(
        &self,
        log: &PartitionLog,
        id: Option<&str>,
        (producer_id, epoch): (i64, i16),
        topic: &str,
        partition: i32,
    ) -> Result<u64, ResponseError> {
        let (open, guard) = log.txn_guard(producer_id);
        if !open {
            let id = id
                .filter(|id| !id.is_empty())
                .ok_or(ResponseError::InvalidTxnState)?;
            self.verify(id, producer_id, epoch, topic, partition)
                .await?;
        }
        Ok(guard)
    }

    /// The check a partition leader makes before a transactional
    /// producer's first write to the partition in a transaction: here when
    /// this node coordinates the id, else over gRPC.
    pub async fn verify(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let p = self.partition_for(id);
        let view = self.broker.view();
        let leader = view
            .record(TRANSACTION_STATE_TOPIC, p)
            .and_then(|r| r.value.leader)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        if leader == self.broker.node_id() {
            return self.verify_partition(id, producer_id, epoch, topic, partition);
        }
        let addr = view
            .node(leader)
            .map(|n| n.info.replication_addr.clone())
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        self.peers
            .verify_remote(
                &addr,
                VerifyPartitionRequest {
                    transactional_id: id.to_string(),
                    producer_id,
                    producer_epoch: i32::from(epoch),
                    topic: topic.to_string(),
                    partition,
                },
            )
            .await
    }

    /// EndTxn. Answers once the decision is stored and, within the
    /// replication timeout, every marker is written (the next transaction
    /// then starts without waiting); markers not written by then are
    /// retried in the background, and the decision stands.
    pub async fn end_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let round = self
            .transition(id, |m, now| {
                let m = m.ok_or(TxnError::InvalidProducerIdMapping)?;
                match state::end(m, producer_id, epoch, commit, now)? {
                    End::Prepare(n, mk) => Ok((Some(mk), Some(n))),
                    End::Complete(n) => Ok((None, Some(n))),
                    End::AlreadyDone => Ok((None, None)),
                }
            })
            .await?;
        if let Some(mk) = round {
            let wait = self.replication_timeout();
            let handle = self.spawn_round(id.to_string(), mk);
            if let Some(h) = handle {
                let _ = tokio::time::timeout(wait, h).await;
            }
        }
        Ok(())
    }

    fn replication_timeout(&self) -> Duration {
        Duration::from_millis(self.broker.config.replication_timeout_ms.max(1) as u64)
    }

    /// Runs a marker round in its own task (it outlives the request that
    /// started it), unless one is running for the id.
    fn spawn_round(&self, id: String, mk: Markers) -> Option<tokio::task::JoinHandle<bool>> {
        let me = self.me.upgrade()?;
        Some(tokio::spawn(async move { me.finish(id, mk).await }))
    }

    /// Writes a Prepare* state's markers until every partition has its
    /// marker, then stores the Complete* state. Gives up only when this
    /// node stops coordinating the id (the next coordinator finishes it).
    /// Returns whether the transaction completed here.
    async fn finish(&self, id: String, mk: Markers) -> bool {
        let p = self.partition_for(&id);
        let (_flag, epoch) = {
            let mut inner = self.lock();
            let Some(epoch) = inner.owned.get(&p).copied() else {
                return false;
            };
            match Flag::take(self, &mut inner, &id, completing) {
                Some(f) => (f, epoch),
                None => return false,
            }
        };
        self.finish_round(&id, mk, epoch).await
    }

    /// The round of one coordinator epoch: it stops when leadership of the
    /// partition moved (the next leader runs its own).
    async fn finish_round(&self, id: &str, mut mk: Markers, epoch: i32) -> bool {
        let p = self.partition_for(id);
        let started = now_ms();
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.lock().owned.get(&p) != Some(&epoch) {
                return false;
            }
            let failed =
                markers::write_markers(&self.broker, &self.groups, &self.peers, &mk, epoch).await;
            if failed.is_empty() {
                break;
            }
            tracing::debug!(
                transactional_id = id,
                failed = failed.len(),
                "markers not written yet; retrying"
            );
            let left: HashSet<(String, i32)> = failed.into_iter().map(|(k, _)| k).collect();
            mk.partitions.retain(|k| left.contains(k));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1_000));
        }
        loop {
            let r = self
                .transition(id, |m, now| {
                    // Only the Prepare state these markers were for.
                    let next = m
                        .filter(|m| {
                            m.state.preparing()
                                && m.producer_id == mk.producer_id
                                && m.producer_epoch == mk.producer_epoch
                                && (m.state == TxnState::PrepareCommit) == mk.commit
                        })
                        .map(|m| state::complete(m, now));
                    Ok(((), next))
                })
                .await;
            match r {
                Ok(()) => {
                    tracing::debug!(
                        transactional_id = id,
                        commit = mk.commit,
                        ms = now_ms() - started,
                        "transaction completed"
                    );
                    return true;
                }
                Err(ResponseError::ConcurrentTransactions) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(ResponseError::NotCoordinator) => return false,
                Err(_) if self.lock().owned.get(&p) != Some(&epoch) => return false,
                Err(e) => {
                    tracing::warn!(transactional_id = id, error = ?e, "storing a completed transaction failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Aborts transactions open past their timeout (fencing their producer
    /// with a bumped epoch) and forgets ids idle past
    /// `transactional.id.expiration.ms`.
    pub async fn run_timers(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.abort_check_interval_ms.max(1));
        loop {
            tokio::time::sleep(every).await;
            self.resume_rounds();
            self.abort_timed_out().await;
            self.expire_ids().await;
        }
    }

    /// Starts again the marker round of every Prepare* transaction without
    /// one running (one that gave up, a failed start).
    fn resume_rounds(&self) {
        let rounds: Vec<(String, Markers)> = {
            let inner = self.lock();
            inner
                .txns
                .iter()
                .filter(|(id, _)| !inner.completing.contains(*id))
                .filter_map(|(id, m)| state::recover(m).map(|mk| (id.clone(), mk)))
                .collect()
        };
        for (id, mk) in rounds {
            self.spawn_round(id, mk);
        }
    }

    async fn abort_timed_out(&self) {
        let now = now_ms();
        let expired: Vec<String> = {
            let inner = self.lock();
            inner
                .txns
                .iter()
                .filter(|(id, m)| !inner.busy.contains(*id) && state::expire(m, now).is_some())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in expired {
            let r = self
                .transition(&id, |m, now| {
                    Ok(match m.and_then(|m| state::expire(m, now)) {
                        Some((n, mk)) => (Some(mk), Some(n)),
                        None => (None, None),
                    })
                })
                .await;
            if let Ok(Some(mk)) = r {
                tracing::info!(transactional_id = %id, "transaction timed out; aborting it");
                self.spawn_round(id, mk);
            }
        }
    }

    async fn expire_ids(&self) {
        let before = now_ms() - self.config.id_expiration_ms;
        let idle: Vec<String> = {
            let inner = self.lock();
            inner
                .txns
                .iter()
                .filter(|(id, m)| {
                    !inner.busy.contains(*id)
                        && matches!(
                            m.state,
                            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                        )
                        && m.updated_ms < before
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in idle {
            let p = self.partition_for(&id);
            let _flag = {
                let mut inner = self.lock();
                // Still idle? (A producer may have come back meanwhile.)
                let idle = inner.txns.get(&id).is_some_and(|m| {
                    matches!(
                        m.state,
                        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    ) && m.updated_ms < before
                });
                if !idle {
                    continue;
                }
                match Flag::take(self, &mut inner, &id, busy) {
                    Some(f) => f,
                    None => continue,
                }
            };
            let r = self.store(p, &id, None).await;
            let mut inner = self.lock();
            if r.is_ok() {
                inner.txns.remove(&id);
                tracing::info!(transactional_id = %id, "transactional id expired");
            }
        }
    }

    /// DescribeTransactions for one id.
    pub fn describe(&self, id: &str) -> Result<Described, ResponseError> {
        let inner = self.lock();
        if !inner.owned.contains_key(&self.partition_for(id)) {
            return Err(ResponseError::NotCoordinator);
        }
        inner
            .txns
            .get(id)
            .cloned()
            .ok_or(ResponseError::TransactionalIdNotFound)
    }

    /// ListTransactions: every id this node coordinates, filtered by state
    /// names, producer ids and a minimum running time (ms, -1 for any).
    pub fn list(
        &self,
        states: &[String],
        producer_ids: &[i64],
        min_duration_ms: i64,
    ) -> Vec<Described> {
        let now = now_ms();
        let inner = self.lock();
        let mut out: Vec<Described> = inner
            .txns
            .values()
            .filter(|m| states.is_empty() || states.iter().any(|s| s == m.state.name()))
            .filter(|m| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .filter(|m| {
                min_duration_ms < 0
                    || (m.state == TxnState::Ongoing && now - m.started_ms >= min_duration_ms)
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }
}
