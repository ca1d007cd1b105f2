//! Transaction markers and the nodes' Transactions gRPC service.
//!
//! A transaction coordinator ends a transaction by having the leader of
//! every partition in it append a commit or abort marker (Kafka's
//! WriteTxnMarkers). Where this node leads the partition the marker is
//! appended in process; elsewhere it travels over the nodes' gRPC (the
//! `Transactions` service next to replication), not the Kafka port: nodes
//! already speak gRPC to each other, and a node has no Kafka client.
//!
//! The same service answers a partition leader that asks whether a
//! transactional producer added the partition to its transaction before
//! writing there (KIP-890's verification), so a produce outside a
//! transaction is refused and no transaction is left open by a stray write.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_api::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::state::Markers;
use super::Coordinator;
use crate::broker::{now_ms, Broker, KafkaError};
use crate::group;
use crate::log::batch;
use crate::replication::proto::transactions_client::TransactionsClient;
use crate::replication::proto::transactions_server::{Transactions, TransactionsServer};
use crate::replication::proto::{
    Marker, VerifyPartitionRequest, VerifyPartitionResponse, WriteMarkersRequest,
    WriteMarkersResponse,
};

/// Appends one marker on a partition this node leads and waits for its
/// ISR. A marker for a topic that no longer exists is done (nothing is
/// left to mark); one from an epoch older than the partition has seen was
/// superseded by a newer producer's (it aborted the transaction already).
pub async fn append_marker(
    broker: &Broker,
    groups: &group::Coordinator,
    m: &Marker,
) -> Result<(), KafkaError> {
    let Some(topic) = broker.topic(&m.topic) else {
        return Ok(());
    };
    let epoch = i16::try_from(m.producer_epoch).unwrap_or(i16::MAX);
    let b = batch::marker_batch(
        m.producer_id,
        epoch,
        m.commit,
        m.coordinator_epoch,
        now_ms(),
    )
    .map_err(|e| KafkaError::new(ResponseError::UnknownServerError, e.to_string()))?;
    let appended = match broker.append(&topic, m.partition, Some(&b), -1) {
        Err(e) if e.code == ResponseError::InvalidProducerEpoch => {
            tracing::info!(topic = %m.topic, partition = m.partition, producer = m.producer_id, "marker from an older producer epoch: superseded");
            return Ok(());
        }
        r => r?,
    };
    let timeout = Duration::from_millis(broker.config.replication_timeout_ms.max(1) as u64);
    broker
        .wait_replicated(&topic, m.partition, &appended, timeout)
        .await?;
    if m.topic == OFFSETS_TOPIC {
        groups.transaction_ended(m.partition, m.producer_id, m.commit, appended.base_offset);
    }
    Ok(())
}

/// gRPC clients to the other nodes' Transactions service, by address.
pub struct Peers {
    clients: tokio::sync::Mutex<HashMap<String, TransactionsClient<Channel>>>,
    /// Mutual TLS to the other nodes, when on.
    tls: Option<Arc<crate::security::grpc::NodeTls>>,
}

impl Peers {
    pub fn new(tls: Option<Arc<crate::security::grpc::NodeTls>>) -> Peers {
        Peers {
            clients: Default::default(),
            tls,
        }
    }

    /// A client of the node at `addr`. The connection is made outside the
    /// lock, so one node that does not answer holds up only its own calls;
    /// every call has a deadline.
    async fn client(&self, addr: &str) -> Result<TransactionsClient<Channel>, ResponseError> {
        if let Some(c) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        let channel = crate::security::grpc::channel(self.tls.as_ref(), endpoint, addr)
            .await
            .map_err(|e| {
                tracing::debug!(addr, error = %e, "connecting to a node's Transactions service failed");
                ResponseError::CoordinatorNotAvailable
            })?;
        let c = TransactionsClient::new(channel);
        self.clients
            .lock()
            .await
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn forget(&self, addr: &str) {
        self.clients.lock().await.remove(addr);
    }

    /// Per marker: `None` when written, else why not.
    async fn write_remote(&self, addr: &str, markers: Vec<Marker>) -> Vec<Option<ResponseError>> {
        let n = markers.len();
        let failed = |e| vec![Some(e); n];
        let mut c = match self.client(addr).await {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        match c
            .write_markers(Request::new(WriteMarkersRequest { markers }))
            .await
        {
            Ok(r) => {
                let codes = r.into_inner().error_codes;
                (0..n)
                    .map(|i| code_to_error(codes.get(i).copied().unwrap_or(-1)))
                    .collect()
            }
            Err(e) => {
                tracing::debug!(addr, error = %e, "writing markers on a node failed");
                self.forget(addr).await;
                failed(ResponseError::NotLeaderOrFollower)
            }
        }
    }

    /// Asks the coordinator on `addr` whether the partition is in the
    /// producer's ongoing transaction.
    pub async fn verify_remote(
        &self,
        addr: &str,
        req: VerifyPartitionRequest,
    ) -> Result<(), ResponseError> {
        let mut c = self.client(addr).await?;
        match c.verify_partition(Request::new(req)).await {
            Ok(r) => match code_to_error(r.into_inner().error_code) {
                None => Ok(()),
                Some(e) => Err(e),
            },
            Err(e) => {
                tracing::debug!(addr, error = %e, "verifying a transaction on a node failed");
                self.forget(addr).await;
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }
}

/// A Kafka error code from another node: `None` for 0.
fn code_to_error(code: i32) -> Option<ResponseError> {
    match i16::try_from(code) {
        Ok(c) => ResponseError::try_from_code(c),
        Err(_) => Some(ResponseError::UnknownServerError),
    }
}

/// Writes a transaction's markers on every partition's leader, here or on
/// other nodes. Returns the partitions that failed, with why, to retry.
pub async fn write_markers(
    broker: &Broker,
    groups: &group::Coordinator,
    peers: &Peers,
    mk: &Markers,
    coordinator_epoch: i32,
) -> Vec<((String, i32), ResponseError)> {
    let view = broker.view();
    let me = broker.node_id();
    let mut local = vec![];
    let mut remote: HashMap<String, Vec<Marker>> = HashMap::new();
    let mut failed = vec![];
    for (topic, partition) in &mk.partitions {
        let marker = Marker {
            topic: topic.clone(),
            partition: *partition,
            producer_id: mk.producer_id,
            producer_epoch: i32::from(mk.producer_epoch),
            commit: mk.commit,
            coordinator_epoch,
        };
        if !view.topics.contains_key(topic) {
            continue; // deleted: nothing left to mark
        }
        let leader = view.record(topic, *partition).and_then(|r| r.value.leader);
        match leader {
            Some(l) if l == me => local.push(marker),
            Some(l) => match view.node(l) {
                Some(n) => remote
                    .entry(n.info.replication_addr.clone())
                    .or_default()
                    .push(marker),
                None => failed.push((
                    (topic.clone(), *partition),
                    ResponseError::LeaderNotAvailable,
                )),
            },
            None => failed.push((
                (topic.clone(), *partition),
                ResponseError::LeaderNotAvailable,
            )),
        }
    }
    for m in local {
        if let Err(e) = append_marker(broker, groups, &m).await {
            failed.push(((m.topic, m.partition), e.code));
        }
    }
    for (addr, markers) in remote {
        let keys: Vec<(String, i32)> = markers
            .iter()
            .map(|m| (m.topic.clone(), m.partition))
            .collect();
        let results = peers.write_remote(&addr, markers).await;
        for (k, r) in keys.into_iter().zip(results) {
            if let Some(e) = r {
                failed.push((k, e));
            }
        }
    }
    failed
}

/// The Transactions gRPC service of one node.
pub struct Service {
    broker: Arc<Broker>,
    groups: Arc<group::Coordinator>,
    txns: Weak<Coordinator>,
}

impl Service {
    pub fn new(
        broker: Arc<Broker>,
        groups: Arc<group::Coordinator>,
        txns: &Arc<Coordinator>,
    ) -> TransactionsServer<Service> {
        TransactionsServer::new(Service {
            broker,
            groups,
            txns: Arc::downgrade(txns),
        })
    }
}

#[tonic::async_trait]
impl Transactions for Service {
    async fn write_markers(
        &self,
        request: Request<WriteMarkersRequest>,
    ) -> Result<Response<WriteMarkersResponse>, Status> {
        let mut error_codes = vec![];
        for m in request.into_inner().markers {
            if m.topic == TRANSACTION_STATE_TOPIC {
                error_codes.push(i32::from(ResponseError::InvalidTopicException.code()));
                continue;
            }
            let code = match append_marker(&self.broker, &self.groups, &m).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::debug!(topic = %m.topic, partition = m.partition, error = %e, "marker not written");
                    e.code()
                }
            };
            error_codes.push(i32::from(code));
        }
        Ok(Response::new(WriteMarkersResponse { error_codes }))
    }

    async fn verify_partition(
        &self,
        request: Request<VerifyPartitionRequest>,
    ) -> Result<Response<VerifyPartitionResponse>, Status> {
        let r = request.into_inner();
        let Some(txns) = self.txns.upgrade() else {
            return Err(Status::unavailable("the node is stopping"));
        };
        let epoch = i16::try_from(r.producer_epoch).unwrap_or(-1);
        let code = match txns.verify_partition(
            &r.transactional_id,
            r.producer_id,
            epoch,
            &r.topic,
            r.partition,
        ) {
            Ok(()) => 0,
            Err(e) => e.code(),
        };
        Ok(Response::new(VerifyPartitionResponse {
            error_code: i32::from(code),
        }))
    }
}
