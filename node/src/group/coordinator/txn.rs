//! Offsets committed inside a transaction (TxnOffsetCommit): written to the
//! group's offsets partition as a transactional batch of the producer, held
//! aside until that producer's marker lands on the partition, then applied
//! (commit) or dropped (abort), as Kafka's pending transactional offsets.

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::{group_entry, CommitPartition, Coordinator, Inner, OffsetValue, RecordKey};
use crate::broker::now_ms;
use crate::group::state::{Committed, GroupState};
use crate::group::OFFSETS_TOPIC;

/// One offset waiting for its transaction's marker.
#[derive(Debug, Clone)]
pub(super) struct PendingOffset {
    group: String,
    topic: String,
    partition: i32,
    committed: Committed,
}

/// A pending offset from a record of a transactional batch in the offsets
/// partition (replay after a failover).
pub(super) fn pending_from_record(
    key: &[u8],
    value: Option<&Bytes>,
    record_offset: i64,
) -> Option<PendingOffset> {
    let RecordKey::Offset {
        group,
        topic,
        partition,
    } = serde_json::from_slice(key).ok()?
    else {
        return None;
    };
    let v: OffsetValue = serde_json::from_slice(value?).ok()?;
    Some(PendingOffset {
        group,
        topic,
        partition,
        committed: Committed {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata,
            commit_timestamp: v.commit_timestamp,
            record_offset,
        },
    })
}

impl Coordinator {
    /// A producer's transaction ended on offsets partition `partition`
    /// with the marker at `marker_offset`: its offsets pending there from
    /// before the marker become the group's (commit) or go (abort).
    pub fn transaction_ended(
        &self,
        partition: i32,
        producer_id: i64,
        commit: bool,
        marker_offset: i64,
    ) {
        let mut inner = self.inner.lock().expect("coordinator lock");
        self.end_pending(&mut inner, partition, producer_id, commit, marker_offset);
    }

    pub(super) fn end_pending(
        &self,
        inner: &mut Inner,
        partition: i32,
        producer_id: i64,
        commit: bool,
        marker_offset: i64,
    ) {
        let key = (partition, producer_id);
        let Some(all) = inner.txn_offsets.remove(&key) else {
            return;
        };
        let (ended, later): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|p| p.committed.record_offset < marker_offset);
        if !later.is_empty() {
            inner.txn_offsets.insert(key, later);
        }
        if !commit {
            return;
        }
        let limits = self.config.limits;
        let now = now_ms();
        for p in ended {
            let g = group_entry(&mut inner.groups, &p.group, limits, now);
            let key = (p.topic, p.partition);
            // A plain commit written after this one wins.
            if g.offsets
                .get(&key)
                .is_none_or(|c| c.record_offset < p.committed.record_offset)
            {
                g.offsets.insert(key, p.committed);
            }
        }
    }

    /// Partitions of a group with offsets waiting for a transaction: an
    /// OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for
    /// them.
    pub fn unstable(&self, group: &str) -> Vec<(String, i32)> {
        let inner = self.inner.lock().expect("coordinator lock");
        inner
            .txn_offsets
            .values()
            .flatten()
            .filter(|p| p.group == group)
            .map(|p| (p.topic.clone(), p.partition))
            .collect()
    }

    /// TxnOffsetCommit: validates like Kafka (a member id, when given, must
    /// be in the group; a generation, when given, must be the current one),
    /// appends the offsets as the producer's transactional batch (under
    /// `guard`, the verification guard of the offsets partition, see
    /// `Broker::append_guarded`) and waits for the ISR. They wait aside
    /// from the moment they are appended, so a marker landing while they
    /// replicate finds them, and apply when the transaction commits.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_transactional(
        &self,
        group: &str,
        producer_id: i64,
        producer_epoch: i16,
        member: &str,
        generation: i32,
        parts: Vec<CommitPartition>,
        guard: Option<u64>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let partition = self.partition_for(group);
        let (mut results, accepted);
        let appended = {
            let mut inner = self.inner.lock().expect("coordinator lock");
            self.check_owner(&inner, group)?;
            if let Some(g) = inner.groups.get(group) {
                if g.state == GroupState::Dead {
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
                if !member.is_empty() && !g.members.values().any(|m| m.id == member) {
                    return Err(ResponseError::UnknownMemberId);
                }
                if generation >= 0 && generation != g.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
            } else if !member.is_empty() || generation >= 0 {
                return Err(ResponseError::UnknownMemberId);
            }
            let records;
            (results, records, accepted) = self.offset_records(group, parts, now_ms());
            if records.is_empty() {
                return Ok(results);
            }
            let appended = self.broker.append_internal_as(
                OFFSETS_TOPIC,
                partition,
                Some((producer_id, producer_epoch, guard)),
                records,
            );
            if let Ok(a) = &appended {
                let pending = inner
                    .txn_offsets
                    .entry((partition, producer_id))
                    .or_default();
                for (_, p, ts) in &accepted {
                    pending.push(PendingOffset {
                        group: group.to_string(),
                        topic: p.topic.clone(),
                        partition: p.partition,
                        committed: Committed {
                            offset: p.offset,
                            leader_epoch: p.leader_epoch,
                            metadata: p.metadata.clone(),
                            commit_timestamp: *ts,
                            record_offset: a.last_offset,
                        },
                    });
                }
            }
            appended
        };
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                let code = match e.code {
                    ResponseError::InvalidProducerEpoch => ResponseError::ProducerFenced,
                    other => super::coordinator_error(other),
                };
                for (i, _, _) in &accepted {
                    results[*i] = Err(code);
                }
                return Ok(results);
            }
        };
        if let Err(e) = self.wait_replicated(group, &appended).await {
            // Maybe not kept (a truncation may take it): the client retries.
            let mut inner = self.inner.lock().expect("coordinator lock");
            if let Some(pending) = inner.txn_offsets.get_mut(&(partition, producer_id)) {
                pending.retain(|p| p.committed.record_offset != appended.last_offset);
            }
            for (i, _, _) in &accepted {
                results[*i] = Err(e);
            }
        }
        Ok(results)
    }
}
