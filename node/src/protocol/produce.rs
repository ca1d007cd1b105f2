//! Produce: validate each partition's batch, append it, answer with offsets.

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::{Broker, KafkaError};
use crate::log::batch::Header;

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

/// Refuses what this release cannot honour yet rather than half-doing it.
fn check_producer(records: Option<&bytes::Bytes>) -> Result<(), KafkaError> {
    let Some(h) = records.and_then(|r| Header::parse(r).ok()) else {
        return Ok(());
    };
    if h.is_transactional() || h.is_control() {
        return Err(KafkaError::new(
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactional producing is not available in this release",
        ));
    }
    Ok(())
}

/// Returns `None` for acks=0: the client expects no response at all.
/// Every partition is appended first; with `acks=all` the response then
/// waits, up to the request's timeout, for each to reach its ISR.
pub async fn produce(
    broker: &Broker,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let acks_error = (!matches!(acks, -1..=1)).then(|| {
        KafkaError::new(
            ResponseError::InvalidRequiredAcks,
            format!("acks must be -1, 0 or 1, got {acks}"),
        )
    });
    let mut results = Vec::with_capacity(req.topic_data.len());
    for td in &req.topic_data {
        let name = td.name.0.to_string();
        let topic = broker.topic(&name);
        let mut partitions = Vec::with_capacity(td.partition_data.len());
        for pd in &td.partition_data {
            let result = match (&acks_error, &topic) {
                (Some(e), _) => Err(e.clone()),
                (None, None) => Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} does not exist"),
                )),
                (None, Some(t)) if t.record.name == sluice_api::OFFSETS_TOPIC => {
                    Err(KafkaError::new(
                        ResponseError::InvalidTopicException,
                        format!("{name} is internal; clients may not produce to it"),
                    ))
                }
                (None, Some(t)) => check_producer(pd.records.as_ref())
                    .and_then(|_| broker.append(t, pd.index, pd.records.as_ref(), acks)),
            };
            partitions.push(result);
        }
        results.push((topic, partitions));
    }
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
        for ((topic, partitions), td) in results.iter_mut().zip(&req.topic_data) {
            let Some(t) = topic else { continue };
            for (r, pd) in partitions.iter_mut().zip(&td.partition_data) {
                if let Ok(a) = r {
                    if let Err(e) = broker.wait_replicated(t, pd.index, a, timeout).await {
                        *r = Err(e);
                    }
                }
            }
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

/// InitProducerId for idempotent producers: a fresh producer id at epoch 0, or,
/// when a producer asks to bump its own epoch (KIP-360, v3+), the same id at
/// the next epoch. Transactional ids arrive with transactions.
pub fn init_producer_id(
    broker: &Broker,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match req.transactional_id.as_ref().map(|t| t.0.as_str()) {
        None => {}
        Some("") => return resp.with_error_code(ResponseError::InvalidRequest.code()),
        Some(_) => {
            return resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
        }
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match broker.allocate_producer_id() {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => resp.with_error_code(e.code()),
    }
}
