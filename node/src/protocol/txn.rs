//! Transactions: InitProducerId (both kinds), AddPartitionsToTxn (v0-3 and
//! the batched v4 form), AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
//! DescribeTransactions and ListTransactions. Decoding and encoding only;
//! the rules are the transaction coordinator's ([`crate::txn`]) and the
//! group coordinator's.

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedState,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, Services};
use super::{Authz, Client};
use crate::group::coordinator::CommitPartition;
use crate::group::OFFSETS_TOPIC;
use sluice_security::Operation;

/// InitProducerId. Without a transactional id: a fresh producer id at
/// epoch 0, or, when a producer asks to bump its own epoch (KIP-360, v3+),
/// the same id at the next epoch. With one: the transaction coordinator's
/// answer, which fences older producers with the same id.
pub async fn init_producer_id(
    svc: &Services,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match req.transactional_id.as_ref().map(|t| t.0.as_str()) {
        None => {}
        Some("") => return resp.with_error_code(ResponseError::InvalidRequest.code()),
        Some(id) => {
            let expected = (version >= 3 && req.producer_id.0 >= 0)
                .then_some((req.producer_id.0, req.producer_epoch));
            return match svc
                .txns
                .init_producer_id(id, req.transaction_timeout_ms, expected)
                .await
            {
                Ok((pid, epoch)) => resp
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch),
                Err(e) => resp.with_error_code(fenced_for(e, version - 2).code()),
            };
        }
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match svc.broker.allocate_producer_id() {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => resp.with_error_code(e.code()),
    }
}

/// PRODUCER_FENCED exists from InitProducerId v4, AddPartitionsToTxn v2,
/// AddOffsetsToTxn v2, EndTxn v2 and TxnOffsetCommit v3 (KIP-588); older
/// clients know it as INVALID_PRODUCER_EPOCH.
fn fenced_for(e: ResponseError, version: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < 2 {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}

/// The partitions of a request that exist, or the per-partition answer
/// when one does not: UNKNOWN_TOPIC_OR_PARTITION for it and
/// OPERATION_NOT_ATTEMPTED for the rest, as Kafka answers.
fn existing(
    svc: &Services,
    topics: &[AddPartitionsToTxnTopic],
) -> Result<Vec<(String, i32)>, Vec<AddPartitionsToTxnTopicResult>> {
    let mut all = vec![];
    let mut missing = false;
    for t in topics {
        let topic = svc.broker.topic(&t.name);
        for p in &t.partitions {
            missing |= topic.as_ref().and_then(|tp| tp.partition(*p)).is_none()
                || crate::broker::is_internal(&t.name);
            all.push((t.name.to_string(), *p));
        }
    }
    if !missing {
        return Ok(all);
    }
    Err(topics
        .iter()
        .map(|t| {
            let topic = svc.broker.topic(&t.name);
            let results = t
                .partitions
                .iter()
                .map(|p| {
                    let exists = topic.as_ref().and_then(|tp| tp.partition(*p)).is_some()
                        && !crate::broker::is_internal(&t.name);
                    let code = if exists {
                        ResponseError::OperationNotAttempted
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code.code())
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(results)
        })
        .collect())
}

/// Every partition of `topics` answered with `code` (0 for none).
fn answered(topics: &[AddPartitionsToTxnTopic], code: i16) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect()
}

/// One transaction's AddPartitionsToTxn (or, with `verify_only`, the check
/// that its partitions were added).
#[allow(clippy::too_many_arguments)]
async fn add_one(
    svc: &Services,
    id: &str,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
    version: i16,
    authz: &Authz<'_>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    // WRITE on the transactional id, then on every topic: a topic refused
    // leaves the others not attempted, as Kafka answers.
    if !svc.authorize_txn(authz.client, Operation::Write, id) {
        return answered(
            topics,
            ResponseError::TransactionalIdAuthorizationFailed.code(),
        );
    }
    let denied: Vec<bool> = topics
        .iter()
        .map(|t| authz.topic(Operation::Write, &t.name).is_err())
        .collect();
    if denied.iter().any(|d| *d) {
        return topics
            .iter()
            .zip(denied)
            .flat_map(|(t, d)| {
                let code = if d {
                    ResponseError::TopicAuthorizationFailed
                } else {
                    ResponseError::OperationNotAttempted
                };
                answered(std::slice::from_ref(t), code.code())
            })
            .collect();
    }
    let partitions = match existing(svc, topics) {
        Ok(p) => p,
        Err(results) => return results,
    };
    if verify_only {
        let mut out = vec![];
        for t in topics {
            let mut results = vec![];
            for p in &t.partitions {
                let code = match svc
                    .txns
                    .verify_partition(id, producer_id, epoch, &t.name, *p)
                {
                    Ok(()) => 0,
                    Err(e) => e.code(),
                };
                results.push(
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code),
                );
            }
            out.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(results),
            );
        }
        return out;
    }
    let code = match svc
        .txns
        .add_partitions(id, producer_id, epoch, partitions)
        .await
    {
        Ok(()) => 0,
        Err(e) => fenced_for(e, version).code(),
    };
    answered(topics, code)
}

pub async fn add_partitions_to_txn(
    svc: &Services,
    req: AddPartitionsToTxnRequest,
    version: i16,
    authz: &Authz<'_>,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_one(
            svc,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            false,
            &req.v3_and_below_topics,
            version,
            authz,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = vec![];
    for t in &req.transactions {
        let results = add_one(
            svc,
            &t.transactional_id,
            t.producer_id.0,
            t.producer_epoch,
            t.verify_only,
            &t.topics,
            version,
            authz,
        )
        .await;
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

pub async fn add_offsets_to_txn(
    svc: &Services,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let code = match svc
        .txns
        .add_offsets(
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            &req.group_id,
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => fenced_for(e, version).code(),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn end_txn(svc: &Services, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let code = match svc
        .txns
        .end_txn(
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => fenced_for(e, version).code(),
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub async fn txn_offset_commit(
    svc: &Services,
    req: TxnOffsetCommitRequest,
    version: i16,
    authz: &Authz<'_>,
) -> TxnOffsetCommitResponse {
    // WRITE on the transactional id, READ on the group, then READ on each
    // topic (refused topics are answered alone, the rest committed).
    let whole = if !svc.authorize_txn(authz.client, Operation::Write, &req.transactional_id) {
        Some(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !svc.authorize_group(authz.client, Operation::Read, &req.group_id) {
        Some(ResponseError::GroupAuthorizationFailed)
    } else {
        None
    };
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| whole.is_none() && authz.topic(Operation::Read, &t.name).is_ok())
        .collect();
    let parts: Vec<CommitPartition> = req
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, ok)| **ok)
        .flat_map(|(t, _)| {
            t.partitions.iter().map(|p| CommitPartition {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let (member, generation) = if version >= 3 {
        (req.member_id.to_string(), req.generation_id)
    } else {
        (String::new(), -1)
    };
    let results = match verify_offsets(svc, &req).await {
        _ if parts.is_empty() => Ok(vec![]),
        Ok(guard) => {
            svc.groups
                .commit_transactional(
                    &req.group_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    &member,
                    generation,
                    parts,
                    guard,
                )
                .await
        }
        Err(e) => Err(e),
    };
    let mut codes = match results {
        Ok(r) => r
            .into_iter()
            .map(|r| r.err().map_or(0, |e| fenced_for(e, version - 1).code()))
            .collect::<Vec<_>>()
            .into_iter(),
        Err(e) => {
            let n = req.topics.iter().map(|t| t.partitions.len()).sum();
            vec![fenced_for(e, version - 1).code(); n].into_iter()
        }
    };
    let topics = req
        .topics
        .iter()
        .zip(&readable)
        .map(|(t, ok)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = match (whole, ok) {
                                (Some(e), _) => e.code(),
                                (None, false) => ResponseError::TopicAuthorizationFailed.code(),
                                (None, true) => codes.next().unwrap_or(0),
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

/// The first offsets a transaction commits in a group's offsets partition
/// are checked with the transaction coordinator, like a produce (KIP-890):
/// the partition must be in the ongoing transaction (AddOffsetsToTxn).
/// Returns the guard of the offsets partition's write; `None` where this
/// node does not hold the partition (the group coordinator answers).
async fn verify_offsets(
    svc: &Services,
    req: &TxnOffsetCommitRequest,
) -> Result<Option<u64>, ResponseError> {
    let p = svc.groups.partition_for(&req.group_id);
    let Some(log) = svc
        .broker
        .topic(OFFSETS_TOPIC)
        .and_then(|t| t.partition(p).map(|x| x.log.clone()))
    else {
        return Ok(None);
    };
    let producer = (req.producer_id.0, req.producer_epoch);
    let id = Some(req.transactional_id.0.as_str());
    match svc
        .txns
        .first_write_guard(&log, id, producer, OFFSETS_TOPIC, p)
        .await
    {
        Ok(guard) => Ok(Some(guard)),
        Err(ResponseError::InvalidProducerIdMapping) => Err(ResponseError::InvalidTxnState),
        Err(e @ (ResponseError::InvalidTxnState | ResponseError::ProducerFenced)) => Err(e),
        Err(_) => Err(ResponseError::CoordinatorNotAvailable),
    }
}

pub fn describe_transactions(
    svc: &Services,
    req: DescribeTransactionsRequest,
    _version: i16,
    client: &Client,
) -> DescribeTransactionsResponse {
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let described = if svc.authorize_txn(client, Operation::Describe, &id) {
                svc.txns.describe(&id)
            } else {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            };
            match described {
                Ok(m) => {
                    let mut topics: Vec<TopicData> = vec![];
                    for (t, p) in m
                        .partitions
                        .iter()
                        .filter(|(t, _)| svc.authorize_topic(client, Operation::Describe, t))
                    {
                        match topics.iter_mut().find(|d| d.topic.0.as_str() == t) {
                            Some(d) => d.partitions.push(*p),
                            None => topics.push(
                                TopicData::default()
                                    .with_topic(TopicName(str_bytes(t.clone())))
                                    .with_partitions(vec![*p]),
                            ),
                        }
                    }
                    DescribedState::default()
                        .with_transactional_id(id)
                        .with_transaction_state(str_bytes(m.state.name().to_string()))
                        .with_transaction_timeout_ms(m.timeout_ms)
                        .with_transaction_start_time_ms(m.started_ms)
                        .with_producer_id(ProducerId(m.producer_id))
                        .with_producer_epoch(m.producer_epoch)
                        .with_topics(topics)
                }
                Err(e) => DescribedState::default()
                    .with_transactional_id(id)
                    .with_error_code(e.code())
                    .with_transaction_state(str_bytes(String::new()))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// The states ListTransactions may filter on.
const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub fn list_transactions(
    svc: &Services,
    req: ListTransactionsRequest,
    version: i16,
    client: &Client,
) -> ListTransactionsResponse {
    let filters: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<_> = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let pids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let listed = svc
        .txns
        .list(&filters, &pids, min_duration)
        .into_iter()
        .filter(|m| svc.authorize_txn(client, Operation::Describe, &m.transactional_id))
        .map(|m| {
            ListedState::default()
                .with_transactional_id(TransactionalId(str_bytes(m.transactional_id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(str_bytes(m.state.name().to_string()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
