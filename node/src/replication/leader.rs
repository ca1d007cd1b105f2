//! The leader side: the `Replication` gRPC service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::proto::replication_server::{Replication, ReplicationServer};
use super::proto::{FetchError, FetchRequest, FetchResponse, PartitionData, PartitionFetch};
use super::LeaderLogs;
use crate::log::{seconds_since, PartitionLog, Watch};

pub struct Service<L: LeaderLogs> {
    logs: Arc<L>,
}

impl<L: LeaderLogs> Service<L> {
    pub fn new(logs: Arc<L>) -> ReplicationServer<Service<L>> {
        ReplicationServer::new(Service { logs }).max_decoding_message_size(64 << 20)
    }
}

/// Answers one partition of a fetch. `Some` when there is something to say
/// now (data, an error, a divergence); `None` when the follower is caught up.
fn answer(
    logs: &impl LeaderLogs,
    follower: i32,
    pf: &PartitionFetch,
    budget: &mut usize,
    first: bool,
) -> (PartitionData, bool) {
    let mut d = PartitionData {
        topic: pf.topic.clone(),
        partition: pf.partition,
        diverging_epoch: -1,
        diverging_end_offset: -1,
        ..Default::default()
    };
    let log = match logs.leader_log(&pf.topic, pf.partition, pf.leader_epoch) {
        Ok(l) => l,
        Err(e) => {
            d.set_error(e);
            return (d, true);
        }
    };
    d.log_start_offset = log.log_start_offset();
    // Does the follower's last epoch end where the follower thinks it does?
    if pf.last_fetched_epoch >= 0 {
        let (epoch, end) = log.end_offset_for_epoch(pf.last_fetched_epoch);
        if epoch < pf.last_fetched_epoch || end < pf.fetch_offset {
            d.diverging = true;
            d.diverging_epoch = epoch;
            d.diverging_end_offset = end;
            d.high_watermark = log.high_watermark();
            return (d, true);
        }
    }
    let end = log.log_end_offset();
    if pf.fetch_offset < log.log_start_offset() || pf.fetch_offset > end {
        d.set_error(FetchError::OffsetOutOfRange);
        d.high_watermark = log.high_watermark();
        return (d, true);
    }
    logs.follower_fetched(&pf.topic, pf.partition, follower, pf.fetch_offset);
    d.high_watermark = log.high_watermark();
    // Followers read up to the log end, not the high watermark.
    // One byte budget for the whole response; only the first partition with
    // data may exceed it, by one batch, so a follower always progresses.
    // A throttled partition's own limit; it too gets one whole batch while
    // the response has room, or a small limit would starve it.
    let (limit, first) = match pf.max_bytes {
        0 => (*budget, first),
        n => ((*budget).min(n as usize), first || *budget > 0),
    };
    match log.read(pf.fetch_offset, limit, end, first) {
        Ok(r) => {
            let has_data = r.batches > 0;
            *budget = budget.saturating_sub(r.records.len());
            d.records = r.records.to_vec();
            (d, has_data)
        }
        Err(e) => {
            tracing::error!(error = %e, "replication read failed");
            d.set_error(FetchError::Storage);
            (d, true)
        }
    }
}

async fn serve_one<L: LeaderLogs>(logs: &L, req: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(10_000)));
    let deadline = tokio::time::Instant::now() + wait;
    let max_bytes = (req.max_bytes as usize).max(1);
    let mut last_hw: Vec<i64> = Vec::new();
    // When the partition whose change woke this fetch changed (None when
    // it was last woken by anything else, or not at all).
    let mut woken: Option<u64> = None;
    loop {
        // Register for the next change of these partitions (and of roles)
        // before looking, so none is missed; an append elsewhere does not
        // wake this fetch.
        let watched: Vec<Arc<PartitionLog>> = req
            .partitions
            .iter()
            .filter_map(|pf| {
                logs.leader_log(&pf.topic, pf.partition, pf.leader_epoch)
                    .ok()
            })
            .collect();
        let watch = Watch::new(watched.iter().map(|l| &**l), logs.roles_changed());
        let mut urgent = false;
        let mut budget = max_bytes;
        let mut parts = Vec::with_capacity(req.partitions.len());
        for pf in &req.partitions {
            let first = budget == max_bytes;
            let (d, now) = answer(logs, req.follower_id, pf, &mut budget, first);
            urgent |= now;
            parts.push(d);
        }
        // A moved high watermark is worth telling the follower about too.
        let hws: Vec<i64> = parts.iter().map(|d| d.high_watermark).collect();
        let hw_moved = !last_hw.is_empty() && hws != last_hw;
        if urgent || hw_moved || tokio::time::Instant::now() >= deadline {
            if let (Some(at), true) = (woken, urgent || hw_moved) {
                logs.woke_after(seconds_since(at));
            }
            return FetchResponse { partitions: parts };
        }
        last_hw = hws;
        tokio::select! {
            at = watch.changed() => woken = at,
            _ = tokio::time::sleep_until(deadline) => woken = None,
        }
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<L: LeaderLogs> Replication for Service<L> {
    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<FetchStream>, Status> {
        let mut incoming = request.into_inner();
        let logs = self.logs.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let reply = match next {
                    Ok(req) => Ok(serve_one(logs.as_ref(), req).await),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
