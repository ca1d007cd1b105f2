//! Produce: validate each partition's batch, append it, answer with offsets.

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, Client, Services};
use crate::broker::{KafkaError, Topic};
use crate::log::batch::Header;
use sluice_security::Operation;

fn partition_error(index: i32, e: &KafkaError, version: i16) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(e.code())
        .with_base_offset(-1)
        .with_log_append_time_ms(-1);
    if version >= 8 {
        r.error_message = Some(str_bytes(e.message.clone()));
        // KIP-467: the records that failed, so a client fails just those.
        r.record_errors = e
            .record_errors
            .iter()
            .map(|(i, m)| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(*i)
                    .with_batch_index_error_message(Some(str_bytes(m.clone())))
            })
            .collect();
    }
    r
}

/// A produced batch's producer, when it writes in a transaction; control
/// batches are the brokers' own (markers) and refused from clients.
fn transactional_producer(
    records: Option<&bytes::Bytes>,
) -> Result<Option<(i64, i16)>, KafkaError> {
    let Some(h) = records.and_then(|r| Header::parse(r).ok()) else {
        return Ok(None);
    };
    if h.is_control() {
        return Err(KafkaError::new(
            ResponseError::InvalidRecord,
            "control batches are written by brokers, not produced",
        ));
    }
    if h.is_transactional() {
        if h.producer_id() < 0 {
            return Err(KafkaError::new(
                ResponseError::InvalidRecord,
                "a transactional batch without a producer id",
            ));
        }
        return Ok(Some((h.producer_id(), h.producer_epoch())));
    }
    Ok(None)
}

/// Before a transaction's first write to a partition, its coordinator
/// must say the producer added the partition (KIP-890): otherwise the
/// write is refused and nothing is appended. Returns the guard the write
/// is appended under: a marker of the producer landing meanwhile (its
/// transaction ended) refuses it, so a late write cannot open a
/// transaction nobody will end.
async fn verify_transaction(
    svc: &Services,
    topic: &Topic,
    partition: i32,
    transactional_id: Option<&str>,
    producer: (i64, i16),
) -> Result<u64, KafkaError> {
    let Some(p) = topic.partition(partition) else {
        return Ok(0); // the append answers for a partition that is not there
    };
    let name = &topic.record.name;
    let (id, epoch) = (transactional_id.unwrap_or_default(), producer.1);
    svc.txns
        .first_write_guard(&p.log, transactional_id, producer, name, partition)
        .await
        .map_err(|e| match e {
            ResponseError::InvalidTxnState if id.is_empty() => KafkaError::new(
                ResponseError::InvalidTxnState,
                "a transactional batch in a produce request without a transactional id",
            ),
            ResponseError::InvalidTxnState | ResponseError::InvalidProducerIdMapping => {
                KafkaError::new(
                    ResponseError::InvalidTxnState,
                    format!("{name}-{partition} was not added to transaction {id}"),
                )
            }
            ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch => KafkaError::new(
                ResponseError::InvalidProducerEpoch,
                format!("producer epoch {epoch} of transaction {id} was fenced by a newer one"),
            ),
            // The coordinator is moving or busy: retriable, as Kafka answers.
            other => KafkaError::new(
                ResponseError::NotEnoughReplicas,
                format!("could not verify transaction {id} with its coordinator: {other:?}"),
            ),
        })
}

/// Returns `None` for acks=0: the client expects no response at all.
/// Every partition is appended first; with `acks=all` the response then
/// waits, up to the request's timeout, for each to reach its ISR.
pub async fn produce(
    svc: &Services,
    req: ProduceRequest,
    version: i16,
    client: &Client,
) -> Option<ProduceResponse> {
    let broker = &svc.broker;
    let transactional_id = req.transactional_id.as_ref().map(|t| t.0.as_str());
    let acks = req.acks;
    let acks_error = (!matches!(acks, -1..=1)).then(|| {
        KafkaError::new(
            ResponseError::InvalidRequiredAcks,
            format!("acks must be -1, 0 or 1, got {acks}"),
        )
    });
    // WRITE on the transactional id and on each topic (before anything
    // about the topic is told).
    let txn_denied = transactional_id
        .is_some_and(|id| !svc.authorize_txn(client, Operation::Write, id))
        .then(|| {
            KafkaError::new(
                ResponseError::TransactionalIdAuthorizationFailed,
                "WRITE on the transactional id is needed",
            )
        });
    // What each partition gets: an error now, or an append. Checks that
    // may wait (a transaction's coordinator) run here, on the async worker.
    let mut plans = Vec::with_capacity(req.topic_data.len());
    for td in &req.topic_data {
        let name = td.name.0.to_string();
        let topic = broker.topic(&name);
        let denied = (!svc.authorize_topic(client, Operation::Write, &name)).then(|| {
            KafkaError::new(
                ResponseError::TopicAuthorizationFailed,
                format!("WRITE on topic {name} is needed"),
            )
        });
        let mut partitions = Vec::with_capacity(td.partition_data.len());
        for pd in &td.partition_data {
            let plan = match (&acks_error, &topic) {
                (Some(e), _) => Err(e.clone()),
                (None, _) if txn_denied.is_some() => Err(txn_denied.clone().expect("checked")),
                (None, _) if denied.is_some() => Err(denied.clone().expect("checked")),
                (None, None) => Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} does not exist"),
                )),
                (None, Some(t)) if crate::broker::is_internal(&t.record.name) => {
                    Err(KafkaError::new(
                        ResponseError::InvalidTopicException,
                        format!("{name} is internal; clients may not produce to it"),
                    ))
                }
                (None, Some(t)) => match transactional_producer(pd.records.as_ref()) {
                    Err(e) => Err(e),
                    Ok(Some(producer)) => {
                        verify_transaction(svc, t, pd.index, transactional_id, producer)
                            .await
                            .map(Some)
                    }
                    Ok(None) => Ok(None),
                },
            };
            partitions.push(plan.map(|guard| (pd.index, pd.records.clone(), guard)));
        }
        plans.push((topic, partitions));
    }
    // The appends themselves (validation, RocksDB writes) run on a blocking
    // thread, all of the request's in one hand-off and in order: a write
    // held up by the disk or a RocksDB stall must not hold up the other
    // connections served by the same async worker.
    let queued = std::time::Instant::now();
    let mut results = {
        let broker = broker.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            broker
                .metrics
                .observe_stage("queue", (started - queued).as_secs_f64());
            let appended = plans
                .into_iter()
                .map(|(topic, partitions)| {
                    let appended = partitions
                        .into_iter()
                        .map(|plan| {
                            let (index, records, guard) = plan?;
                            let t = topic.as_ref().expect("planned appends have a topic");
                            broker.append_guarded(t, index, records.as_ref(), acks, guard)
                        })
                        .collect::<Vec<_>>();
                    (topic, appended)
                })
                .collect::<Vec<_>>();
            broker
                .metrics
                .observe_stage("append", started.elapsed().as_secs_f64());
            appended
        })
        .await
        .expect("appends do not panic")
    };
    if acks == 0 {
        return None;
    }
    if acks == -1 {
        let ms = if req.timeout_ms > 0 {
            i64::from(req.timeout_ms)
        } else {
            broker.config.replication_timeout_ms
        };
        let timeout = std::time::Duration::from_millis(ms as u64);
        let waiting = std::time::Instant::now();
        let mut waited = false;
        for ((topic, partitions), td) in results.iter_mut().zip(&req.topic_data) {
            let Some(t) = topic else { continue };
            for (r, pd) in partitions.iter_mut().zip(&td.partition_data) {
                if let Ok(a) = r {
                    waited = true;
                    if let Err(e) = broker.wait_replicated(t, pd.index, a, timeout).await {
                        *r = Err(e);
                    }
                }
            }
        }
        if waited {
            broker
                .metrics
                .observe_stage("replicate", waiting.elapsed().as_secs_f64());
        }
    }
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for ((_, partitions), td) in results.into_iter().zip(req.topic_data) {
        let name = td.name.0.to_string();
        let partitions = partitions
            .into_iter()
            .zip(&td.partition_data)
            .map(|(result, pd)| match result {
                Ok(a) => {
                    let mut r = PartitionProduceResponse::default()
                        .with_index(pd.index)
                        .with_base_offset(a.base_offset)
                        .with_log_append_time_ms(a.log_append_time);
                    if version >= 5 {
                        r.log_start_offset = a.log_start_offset;
                    }
                    r
                }
                Err(e) => {
                    tracing::debug!(topic = %name, partition = pd.index, error = %e, "produce refused");
                    partition_error(pd.index, &e, version)
                }
            })
            .collect();
        responses.push(
            TopicProduceResponse::default()
                .with_name(td.name)
                .with_partition_responses(partitions),
        );
    }
    Some(ProduceResponse::default().with_responses(responses))
}
