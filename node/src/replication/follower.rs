//! The follower side: one fetch session against one leader node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::proto::replication_client::ReplicationClient;
use super::proto::{FetchError, FetchRequest, PartitionData, PartitionFetch};
use super::throttle::Throttle;
use super::Following;

/// How long a leader may hold a fetch with nothing new.
pub const MAX_WAIT_MS: u32 = 500;
const MAX_BYTES: u32 = 8 << 20;

/// Runs until `following` is closed: fetches every partition it lists from
/// the leader at `leader_addr`, reconnecting after errors.
pub async fn run(
    follower_id: i32,
    leader_addr: String,
    mut following: watch::Receiver<Vec<Following>>,
    throttle: Arc<Throttle>,
    tls: Option<Arc<crate::security::grpc::NodeTls>>,
) {
    let endpoint = format!("http://{leader_addr}");
    loop {
        if following.has_changed().is_err() {
            return;
        }
        match session(
            follower_id,
            &endpoint,
            &leader_addr,
            tls.as_ref(),
            &mut following,
            &throttle,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(leader = %leader_addr, error = %e, "replication session ended; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connected session. `Ok` when there is nothing left to follow.
async fn session(
    follower_id: i32,
    endpoint: &str,
    addr: &str,
    tls: Option<&Arc<crate::security::grpc::NodeTls>>,
    following: &mut watch::Receiver<Vec<Following>>,
    throttle: &Throttle,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_string())?.tcp_nodelay(true);
    let channel = crate::security::grpc::channel(tls, endpoint, addr).await?;
    let mut client = ReplicationClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(1);
    let mut responses = client.fetch(ReceiverStream::new(rx)).await?.into_inner();
    loop {
        if following.has_changed().is_err() {
            // Whoever told us what to follow is gone.
            return Ok(());
        }
        let set = following.borrow_and_update().clone();
        if set.is_empty() {
            if following.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        // Replicas a reassignment is adding share the node's throttle; with
        // too little in its bucket they sit this fetch out.
        let allowance = throttle.allowance(Instant::now());
        let throttled = set.iter().filter(|f| f.throttled).count();
        let share = allowance.map(|a| (a / throttled.max(1)).max(1));
        let fetched: Vec<&Following> = set
            .iter()
            .filter(|f| !f.throttled || allowance.is_none_or(|a| a >= throttle.useful()))
            .collect();
        if fetched.is_empty() {
            let wait = throttle.until_refilled(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = following.changed() => {}
            }
            continue;
        }
        let req = FetchRequest {
            follower_id,
            max_wait_ms: MAX_WAIT_MS,
            max_bytes: MAX_BYTES,
            partitions: fetched
                .iter()
                .map(|f| PartitionFetch {
                    topic: f.topic.clone(),
                    partition: f.partition,
                    leader_epoch: f.leader_epoch,
                    fetch_offset: f.log.log_end_offset(),
                    last_fetched_epoch: f.log.latest_epoch(),
                    max_bytes: match (f.throttled, share) {
                        (true, Some(n)) => n.min(u32::MAX as usize) as u32,
                        _ => 0,
                    },
                })
                .collect(),
        };
        tx.send(req).await?;
        let Some(resp) = responses.message().await? else {
            return Err("leader closed the session".into());
        };
        let throttled_bytes: usize = resp
            .partitions
            .iter()
            .filter(|d| {
                fetched
                    .iter()
                    .any(|f| f.throttled && f.topic == d.topic && f.partition == d.partition)
            })
            .map(|d| d.records.len())
            .sum();
        if throttled_bytes > 0 {
            throttle.spent(throttled_bytes, Instant::now());
        }
        // Store writes on a blocking thread, off the async workers.
        let refused = tokio::task::spawn_blocking(move || -> Result<bool, Error> {
            let mut refused = true;
            for d in resp.partitions {
                if let Some(f) = set
                    .iter()
                    .find(|f| f.topic == d.topic && f.partition == d.partition)
                {
                    refused &= apply(f, &d)? == Applied::Refused;
                }
            }
            Ok(refused)
        })
        .await??;
        if refused {
            // Errors only (not leader, stale epoch): give metadata time to
            // move. An empty answer (a moved high watermark, the wait over)
            // is followed by the next fetch at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Records appended, or the log truncated or reset.
    Progress,
    /// Nothing new.
    Nothing,
    /// The leader (or this node's own state) refused the fetch.
    Refused,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Applies one partition's answer, if this node still follows the
/// partition at the epoch it fetched with (else it moved on: it leads now,
/// or follows another epoch, and the answer is dropped).
fn apply(f: &Following, d: &PartitionData) -> Result<Applied, Error> {
    f.while_current(|| apply_current(f, d))
        .unwrap_or(Ok(Applied::Refused))
}

fn apply_current(f: &Following, d: &PartitionData) -> Result<Applied, Error> {
    let log = &f.log;
    match d.error() {
        FetchError::None => {}
        FetchError::OffsetOutOfRange => {
            if log.log_end_offset() < d.log_start_offset {
                tracing::info!(topic = %f.topic, partition = f.partition, to = d.log_start_offset, "log is behind the leader's start; resetting");
                log.reset_to(d.log_start_offset)?;
            } else {
                let to = log
                    .log_end_offset()
                    .min(d.high_watermark.max(log.log_start_offset()));
                log.truncate_to(to)?;
            }
            return Ok(Applied::Progress);
        }
        other => {
            tracing::debug!(topic = %f.topic, partition = f.partition, error = ?other, "leader refused the fetch");
            return Ok(Applied::Refused);
        }
    }
    if d.diverging {
        let to = if d.diverging_epoch < 0 {
            log.log_start_offset()
        } else {
            let (epoch, end) = log.end_offset_for_epoch(d.diverging_epoch);
            if epoch < 0 {
                log.log_start_offset()
            } else {
                end.min(d.diverging_end_offset)
            }
        };
        tracing::info!(topic = %f.topic, partition = f.partition, from = log.log_end_offset(), to, "truncating a divergent tail");
        log.truncate_to(to)?;
        return Ok(Applied::Progress);
    }
    let progressed = !d.records.is_empty();
    if progressed {
        // The batches and the leader's high watermark in one write.
        log.append_replicated_with_hw(
            &bytes::Bytes::copy_from_slice(&d.records),
            Some(d.high_watermark),
        )?;
    } else {
        log.set_high_watermark(d.high_watermark.min(log.log_end_offset()))?;
    }
    // The leader's log start moved (DeleteRecords, retention): follow it up
    // to what this replica has committed, so records deleted on the leader
    // never come back if this replica leads later.
    let start = d.log_start_offset.min(log.high_watermark());
    if start > log.log_start_offset() {
        log.delete_records_before(start)?;
    }
    Ok(if progressed {
        Applied::Progress
    } else {
        Applied::Nothing
    })
}
