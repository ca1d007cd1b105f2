//! Fetch (a long poll over stored batches) and ListOffsets.

use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use kafka_protocol::ResponseError;

use std::sync::Arc;

use super::limits::Reservation;
use super::{Client, Services};
use crate::broker::{Broker, KafkaError, Partition, Topic};
use crate::log::{seconds_since, PartitionLog, Watch};
use sluice_security::Operation;

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

/// A topic asked for, and its partitions.
struct Wanted<'a> {
    name: String,
    /// The principal may not read the topic.
    denied: bool,
    topic: &'a FetchTopic,
    partitions: Vec<&'a FetchPartition>,
}

/// The partitions of a request, each once. A full fetch names a partition
/// once; a request naming one several times is answered as Kafka answers
/// it (its fetch session keeps one entry per partition): once, at the place
/// it was first named, with the offset and limit it was last given.
fn wanted(req: &FetchRequest) -> Vec<Wanted<'_>> {
    let mut out: Vec<Wanted<'_>> = Vec::new();
    for ft in &req.topics {
        let name = ft.topic.0.to_string();
        let at = match out.iter().position(|w| w.name == name) {
            Some(i) => i,
            None => {
                out.push(Wanted {
                    name,
                    denied: false,
                    topic: ft,
                    partitions: Vec::new(),
                });
                out.len() - 1
            }
        };
        let parts = &mut out[at].partitions;
        for fp in &ft.partitions {
            match parts.iter_mut().find(|p| p.partition == fp.partition) {
                Some(p) => *p = fp,
                None => parts.push(fp),
            }
        }
    }
    out
}

/// Kafka's isolation levels (Fetch v4+, ListOffsets v2+).
const READ_COMMITTED: i8 = 1;

fn collect(
    broker: &Broker,
    wanted: &[Wanted<'_>],
    budget: usize,
    version: i16,
    read_committed: bool,
) -> Collected {
    let mut remaining = budget;
    let mut total = 0usize;
    let mut errors = false;
    let mut topics = Vec::with_capacity(wanted.len());
    for w in wanted {
        let name = &w.name;
        let topic = broker.topic(name);
        let mut parts = Vec::with_capacity(w.partitions.len());
        for fp in &w.partitions {
            let mut pd = PartitionData::default().with_partition_index(fp.partition);
            let result = if w.denied {
                Err(KafkaError::new(
                    ResponseError::TopicAuthorizationFailed,
                    format!("READ on topic {name} is needed"),
                ))
            } else {
                leader(
                    broker,
                    topic.as_ref(),
                    name,
                    fp.partition,
                    fp.current_leader_epoch,
                )
            }
            .and_then(|log| {
                let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                // KIP-74: only the first non-empty partition may exceed the limits.
                let read = if total == 0 || limit > 0 {
                    broker.read(&log, fp.fetch_offset, limit, total == 0, read_committed)?
                } else {
                    Default::default()
                };
                Ok((log, read))
            });
            match result {
                Ok((log, read)) => {
                    let hw = log.high_watermark();
                    let lso = log.last_stable_offset();
                    pd.high_watermark = hw;
                    pd.last_stable_offset = lso;
                    // What a read_committed client must drop: the aborted
                    // transactions among the records returned (Kafka sends
                    // null to read_uncommitted clients).
                    pd.aborted_transactions = (read_committed && version >= 4).then(|| {
                        if read.records.is_empty() {
                            return vec![];
                        }
                        log.aborted_in(fp.fetch_offset, lso)
                            .into_iter()
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(a.producer_id.into())
                                    .with_first_offset(a.first_offset)
                            })
                            .collect()
                    });
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
                .with_topic(w.topic.topic.clone())
                .with_topic_id(w.topic.topic_id)
                .with_partitions(parts),
        );
    }
    Collected {
        response: FetchResponse::default().with_responses(topics),
        bytes: total,
        errors,
    }
}

/// The smallest pool reservation a fetch settles for when memory is short.
const MIN_FETCH_RESERVATION: usize = 1 << 20;

/// Fetch: a long poll over stored batches. The answer carries at most the
/// broker's `fetch.max.bytes` whatever the request asks, and is built in
/// memory reserved from the node's pool (`held`, kept until the answer is
/// written); when the pool is short the answer is smaller.
pub async fn fetch(
    svc: &Services,
    req: FetchRequest,
    version: i16,
    held: &mut Option<Reservation>,
    client: &Client,
) -> FetchResponse {
    let broker = &svc.broker;
    // Incremental fetch sessions (KIP-227) are not offered: session id 0 in the
    // response tells clients to keep sending full fetch requests.
    if version >= 7 && req.session_id != 0 && req.session_epoch > 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let mut wanted = wanted(&req);
    for w in wanted.iter_mut() {
        w.denied = !svc.authorize_topic(client, Operation::Read, &w.name);
    }
    let read_committed = version >= 4 && req.isolation_level == READ_COMMITTED;
    let asked = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    let per_partition: usize = wanted
        .iter()
        .flat_map(|w| &w.partitions)
        .map(|p| p.partition_max_bytes.max(0) as usize)
        .fold(0usize, usize::saturating_add);
    let want = asked.min(broker.config.fetch_max_bytes).min(per_partition);
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    // When the partition whose change woke this fetch changed (None when
    // it was last woken by anything else, or not at all).
    let mut woken: Option<u64> = None;
    loop {
        // Register for the next change of the wanted partitions (and of
        // roles) before looking, so none is missed; appends to other
        // partitions do not wake this fetch.
        let watched: Vec<Arc<PartitionLog>> = wanted
            .iter()
            .filter_map(|w| broker.topic(&w.name).map(|t| (t, w)))
            .flat_map(|(t, w)| {
                w.partitions
                    .iter()
                    .filter_map(|p| t.partition(p.partition).map(|p| p.log.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let watch = Watch::new(watched.iter().map(|l| &**l), broker.next_view());
        // Room for the records and their copy in the encoded answer.
        let mut reserved = svc
            .pool
            .reserve_up_to(want.saturating_mul(2), MIN_FETCH_RESERVATION)
            .await;
        let budget = reserved.bytes() / 2;
        let c = collect(broker, &wanted, budget, version, read_committed);
        let done =
            c.errors || c.bytes >= min_bytes.max(1) || tokio::time::Instant::now() >= deadline;
        if done {
            // KIP-74 may have let one batch past the budget: account for it.
            if c.bytes * 2 > reserved.bytes() {
                reserved.absorb(svc.pool.reserve(c.bytes * 2 - reserved.bytes()).await);
            }
            reserved.shrink_to(c.bytes * 2);
            *held = Some(reserved);
            broker.metrics.fetched_bytes.inc_by(c.bytes as u64);
            if let (Some(at), true) = (woken, c.bytes > 0) {
                broker.metrics.observe_wake("consumer", seconds_since(at));
            }
            return c.response;
        }
        drop(reserved);
        let _parked = Parked::new(&broker.metrics.fetches_waiting);
        tokio::select! {
            at = watch.changed() => woken = at,
            _ = tokio::time::sleep_until(deadline) => woken = None,
        }
    }
}

/// Counts a fetch as parked while it lives (a dropped request included).
struct Parked<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn list_offsets(
    svc: &Services,
    req: ListOffsetsRequest,
    version: i16,
    client: &Client,
) -> ListOffsetsResponse {
    let broker = &svc.broker;
    let read_committed = version >= 2 && req.isolation_level == READ_COMMITTED;
    let mut topics = Vec::with_capacity(req.topics.len());
    for lt in req.topics {
        let name = lt.name.0.to_string();
        let topic = broker.topic(&name);
        let denied = !svc.authorize_topic(client, Operation::Describe, &name);
        let mut parts = Vec::with_capacity(lt.partitions.len());
        for lp in lt.partitions {
            let epoch = if version >= 4 {
                lp.current_leader_epoch
            } else {
                -1
            };
            let found = if denied {
                Err(KafkaError::new(
                    ResponseError::TopicAuthorizationFailed,
                    format!("DESCRIBE on topic {name} is needed"),
                ))
            } else {
                leader(broker, topic.as_ref(), &name, lp.partition_index, epoch)
            };
            let result = found.and_then(|log| {
                let leader_epoch = log.replica.leader_epoch().unwrap_or(-1);
                let found = match lp.timestamp {
                    -2 => Some((log.log_start_offset(), -1)),
                    -1 if read_committed => Some((log.last_stable_offset(), -1)),
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
    svc: &Services,
    req: kafka_protocol::messages::OffsetForLeaderEpochRequest,
    _version: i16,
    client: &Client,
) -> kafka_protocol::messages::OffsetForLeaderEpochResponse {
    let broker = &svc.broker;
    use kafka_protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let topic = broker.topic(&name);
            let denied = !svc.authorize_topic(client, Operation::Describe, &name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = EpochEndOffset::default().with_partition(p.partition);
                    let found = if denied {
                        Err(KafkaError::new(
                            ResponseError::TopicAuthorizationFailed,
                            format!("DESCRIBE on topic {name} is needed"),
                        ))
                    } else {
                        leader(
                            broker,
                            topic.as_ref(),
                            &name,
                            p.partition,
                            p.current_leader_epoch,
                        )
                    };
                    match found.map(|log| log.end_offset_for_epoch(p.leader_epoch)) {
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
