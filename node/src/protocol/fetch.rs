//! Fetch (a long poll over stored batches) and ListOffsets.

use std::time::Duration;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use kafka_protocol::ResponseError;

use std::sync::Arc;

use crate::broker::{Broker, KafkaError, Partition, Topic};

/// The partition if this node leads it, checking the client's view of the
/// leader epoch (-1 = not known).
fn leader(
    broker: &Broker,
    topic: Option<&Arc<Topic>>,
    name: &str,
    partition: i32,
    current_leader_epoch: i32,
) -> Result<Arc<Partition>, KafkaError> {
    let t = topic.ok_or_else(|| {
        KafkaError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("{name}-{partition} does not exist"),
        )
    })?;
    broker.leader_partition(t, partition, current_leader_epoch)
}

struct Collected {
    response: FetchResponse,
    bytes: usize,
    errors: bool,
}

fn collect(broker: &Broker, req: &FetchRequest, version: i16) -> Collected {
    let mut remaining = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    let mut total = 0usize;
    let mut errors = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for ft in &req.topics {
        let name = ft.topic.0.to_string();
        let topic = broker.topic(&name);
        let mut parts = Vec::with_capacity(ft.partitions.len());
        for fp in &ft.partitions {
            let mut pd = PartitionData::default().with_partition_index(fp.partition);
            let result = leader(
                broker,
                topic.as_ref(),
                &name,
                fp.partition,
                fp.current_leader_epoch,
            )
            .and_then(|log| {
                let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                // KIP-74: only the first non-empty partition may exceed the limits.
                let read = if total == 0 || limit > 0 {
                    broker.read(&log, fp.fetch_offset, limit, total == 0)?
                } else {
                    Default::default()
                };
                Ok((log, read))
            });
            match result {
                Ok((log, read)) => {
                    let hw = log.high_watermark();
                    pd.high_watermark = hw;
                    pd.last_stable_offset = hw;
                    if version >= 5 {
                        pd.log_start_offset = log.log_start_offset();
                    }
                    total += read.records.len();
                    remaining = remaining.saturating_sub(read.records.len());
                    pd.records = Some(read.records);
                }
                Err(e) => {
                    errors = true;
                    pd.error_code = e.code();
                    pd.high_watermark = -1;
                    pd.last_stable_offset = -1;
                    pd.records = Some(Default::default());
                }
            }
            parts.push(pd);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(ft.topic.clone())
                .with_partitions(parts),
        );
    }
    Collected {
        response: FetchResponse::default().with_responses(topics),
        bytes: total,
        errors,
    }
}

pub async fn fetch(broker: &Broker, req: FetchRequest, version: i16) -> FetchResponse {
    // Incremental fetch sessions (KIP-227) are not offered: session id 0 in the
    // response tells clients to keep sending full fetch requests.
    if version >= 7 && req.session_id != 0 && req.session_epoch > 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        // Register for the next append before looking, so none is missed.
        let notified = broker.appended();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let c = collect(broker, &req, version);
        let done =
            c.errors || c.bytes >= min_bytes.max(1) || tokio::time::Instant::now() >= deadline;
        if done {
            broker.metrics.fetched_bytes.inc_by(c.bytes as u64);
            return c.response;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

pub fn list_offsets(broker: &Broker, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for lt in req.topics {
        let name = lt.name.0.to_string();
        let topic = broker.topic(&name);
        let mut parts = Vec::with_capacity(lt.partitions.len());
        for lp in lt.partitions {
            let epoch = if version >= 4 {
                lp.current_leader_epoch
            } else {
                -1
            };
            let result =
                leader(broker, topic.as_ref(), &name, lp.partition_index, epoch).and_then(|log| {
                    let leader_epoch = log.replica.leader_epoch().unwrap_or(-1);
                    let found = match lp.timestamp {
                        -2 => Some((log.log_start_offset(), -1)),
                        -1 => Some((log.high_watermark(), -1)),
                        -3 if version >= 7 => log.max_timestamp_offset()?,
                        ts if ts >= 0 => log.offset_for_timestamp(ts)?,
                        ts => {
                            return Err(KafkaError::new(
                                ResponseError::InvalidRequest,
                                format!("timestamp {ts} is not a time or a known sentinel"),
                            ))
                        }
                    };
                    Ok((found, leader_epoch))
                });
            let mut r =
                ListOffsetsPartitionResponse::default().with_partition_index(lp.partition_index);
            match result {
                Ok((found, leader_epoch)) => {
                    let (offset, ts) = found.unwrap_or((-1, -1));
                    r.offset = offset;
                    r.timestamp = ts;
                    if version >= 4 {
                        r.leader_epoch = leader_epoch;
                    }
                }
                Err(e) => {
                    r.error_code = e.code();
                    r.offset = -1;
                    r.timestamp = -1;
                }
            }
            parts.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(lt.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// OffsetForLeaderEpoch: where a leader epoch ends in this log, so a client
/// (or a follower) can tell whether its position survived a leader change.
pub fn offset_for_leader_epoch(
    broker: &Broker,
    req: kafka_protocol::messages::OffsetForLeaderEpochRequest,
    _version: i16,
) -> kafka_protocol::messages::OffsetForLeaderEpochResponse {
    use kafka_protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let topic = broker.topic(&name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = EpochEndOffset::default().with_partition(p.partition);
                    match leader(
                        broker,
                        topic.as_ref(),
                        &name,
                        p.partition,
                        p.current_leader_epoch,
                    )
                    .map(|log| log.end_offset_for_epoch(p.leader_epoch))
                    {
                        Ok((epoch, end)) => r.with_leader_epoch(epoch).with_end_offset(end),
                        Err(e) => r
                            .with_error_code(e.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    kafka_protocol::messages::OffsetForLeaderEpochResponse::default().with_topics(topics)
}
