//! Starting nodes: bind the listeners, open the store, join the cluster,
//! run the servers. [`run`] is one standalone node (its own metadata and
//! controller); [`dev_cluster`] runs several nodes in one process, each on
//! its own runtime so one can be stopped and restarted alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::broker::{mono_ms, now_ms, Broker};
use crate::cluster::{self, Fetchers};
use crate::config::NodeConfig;
use crate::coord::controller::{self, ControllerConfig};
use crate::coord::{
    CResult, CoordError, Coordination, InMemory, LockRecord, NodeInfo, NodeLease, PartitionKey,
    PartitionRecord, TopicSpec, Version, Versioned,
};
use crate::group::Coordinator;
use crate::metrics::Metrics;
use crate::protocol::{ListenerInfo, Services};
use crate::replication::leader;
use crate::replication::throttle::Throttle;

/// The addresses a started node actually bound, and its broker.
#[derive(Clone)]
pub struct Ready {
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    pub replication: SocketAddr,
    pub broker: Arc<Broker>,
}

fn controller_config(config: &NodeConfig, expected_nodes: usize) -> ControllerConfig {
    ControllerConfig {
        expected_nodes,
        offsets_partitions: config.groups.offsets_topic_partitions,
        offsets_replication_factor: 3,
        transaction_state_partitions: config.txns.state_topic_partitions,
        lease_duration_ms: config.lease_duration_ms,
        preferred_leader_interval_ms: 300_000,
        max_concurrent_moves: 32,
        members: None,
    }
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// Where a node keeps the cluster's metadata.
#[derive(Debug, Clone)]
pub enum Metadata {
    /// Its own, in `<data-dir>/cluster.json`: a standalone node.
    Local,
    /// Lease objects in a Kubernetes namespace, shared by the cluster's
    /// nodes (`expected_nodes` of them, the StatefulSet's replicas).
    Kubernetes {
        namespace: String,
        cluster: String,
        /// Owner of the Leases of the running cluster (see
        /// `sluice_coord::Kubernetes::with_owner`).
        lease_owner: Option<Box<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
        expected_nodes: usize,
        /// Stand as a candidate for the cluster's controller (the
        /// `<cluster>-controller` lock): for clusters run without the
        /// operator. Under the operator, nodes leave the controller to it.
        controller: bool,
        /// Take the rack from a label of the Kubernetes node the pod runs
        /// on: (label key, node name).
        rack_from: Option<(String, String)>,
        /// On SIGTERM, how long to wait for leadership to move off this
        /// node before stopping.
        shutdown_timeout: Duration,
    },
}

/// The value of label `key` on Kubernetes node `node`: this node's rack.
/// Retried a few times (the API server may be starting too); a refusal or
/// a missing node ends startup with the reason, since a node with the
/// wrong rack would weaken every placement made with it.
async fn rack_from_node(
    client: &kube::Client,
    key: &str,
    node: &str,
) -> anyhow::Result<Option<String>> {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let mut last = None;
    for attempt in 0..5u32 {
        match api.get(node).await {
            Ok(n) => {
                let rack = n.metadata.labels.and_then(|l| l.get(key).cloned());
                if rack.is_none() {
                    tracing::warn!(
                        node,
                        key,
                        "the Kubernetes node has no such label; this node has no rack"
                    );
                }
                return Ok(rack);
            }
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404) => {
                anyhow::bail!(
                    "reading Kubernetes node {node} for its {key} label: {} (the node's \
                     ServiceAccount needs get on nodes; the operator binds it when \
                     rackTopologyKey is set)",
                    e.message
                );
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
    }
    anyhow::bail!(
        "reading Kubernetes node {node} for its {key} label: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}

/// One node, serving until SIGINT or SIGTERM. Prints `sluice ready
/// kafka=ADDR admin=ADDR` on stdout once it accepts connections, with the
/// ports actually bound (useful with port 0).
///
/// With local metadata the node runs the controller beside itself. On
/// Kubernetes exactly one controller is active, elected through the
/// `<cluster>-controller` lock: the operator's replicas are its candidates,
/// and nodes only with `--controller` (a cluster run without the operator).
pub async fn run(mut config: NodeConfig, metadata: Metadata) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let (coord, expected, import_local): (Arc<dyn Coordination>, usize, bool) = match &metadata {
        Metadata::Local => (
            Arc::new(InMemory::persistent(config.data_dir.join("cluster.json"))?),
            1,
            true,
        ),
        Metadata::Kubernetes {
            namespace,
            cluster,
            lease_owner,
            expected_nodes,
            rack_from,
            ..
        } => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| anyhow::anyhow!("no Kubernetes API server reachable: {e}"))?;
            if let Some((key, node)) = rack_from {
                config.rack = rack_from_node(&client, key, node).await?;
                tracing::info!(rack = ?config.rack, node, "rack from the Kubernetes node's label");
            }
            (
                Arc::new(
                    crate::coord::Kubernetes::new(client, namespace, cluster)
                        .await?
                        .with_owner(lease_owner.as_deref().cloned()),
                ),
                *expected_nodes,
                false,
            )
        }
    };
    let controller_config = controller_config(&config, expected);
    match &metadata {
        Metadata::Local => {
            tokio::spawn(controller::run(coord.clone(), controller_config));
        }
        Metadata::Kubernetes {
            cluster,
            controller: true,
            ..
        } => {
            let elector = crate::coord::elector::ElectorConfig {
                name: format!("{cluster}-controller"),
                identity: format!("node-{}", config.node_id),
                duration_ms: config.lease_duration_ms,
                renew_every_ms: (config.lease_duration_ms / 5).max(100),
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(crate::coord::elector::run(coord.clone(), elector, tx));
            let c = coord.clone();
            tokio::spawn(crate::coord::elector::while_leading(rx, move || {
                controller::run(c.clone(), controller_config.clone())
            }));
        }
        Metadata::Kubernetes { .. } => {}
    }
    let (tx, rx) = oneshot::channel();
    let banner_text = config.banner.then(|| config.clone());
    let mut node = tokio::spawn(serve(config, coord, import_local, tx));
    let ready = tokio::select! {
        r = rx => match r {
            Ok(ready) => ready,
            // The node dropped its side: it failed, and says why.
            Err(_) => return Err(start_failure(node.await)),
        },
        r = &mut node => return Err(start_failure(r)),
    };
    println!(
        "sluice ready kafka={} admin={} replication={}",
        ready.kafka, ready.admin, ready.replication
    );
    if let Some(config) = banner_text {
        eprintln!("{}", banner(&config, &[(0, ready.kafka, ready.admin)]));
    }
    tokio::select! {
        r = &mut node => anyhow::bail!("node stopped: {:?}", r?.err()),
        _ = shutdown_signal() => {}
    }
    if let Metadata::Kubernetes {
        shutdown_timeout, ..
    } = metadata
    {
        // Other nodes can lead what this one leads: hand it over first,
        // while still serving, so clients move without a failed request.
        tracing::info!(timeout = ?shutdown_timeout, "shutting down: handing leadership over");
        match cluster::hand_over(&ready.broker, shutdown_timeout).await {
            0 => tracing::info!("every leadership handed over"),
            left => tracing::warn!(
                partitions = left,
                "still leading partitions; stopping anyway"
            ),
        }
    }
    let broker = ready.broker.clone();
    let _ = tokio::task::spawn_blocking(move || broker.checkpoint_high_watermarks()).await;
    tracing::info!("shutting down");
    Ok(())
}

/// Why a node that was starting stopped.
fn start_failure(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Ok(Err(e)) => e.context("the node could not start"),
        Ok(Ok(())) => anyhow::anyhow!("the node stopped while starting"),
        Err(e) => anyhow::anyhow!("the node failed while starting: {e}"),
    }
}

/// Topics this node holds but the metadata does not know (a data directory
/// from before metadata was kept apart): stored with this node as their
/// only replica, so nothing is deleted.
async fn import_local_topics(broker: &Broker) -> anyhow::Result<()> {
    let known = broker.coord.topics().await?;
    for t in broker.topics() {
        if known.iter().any(|k| k.value.name == t.record.name) {
            continue;
        }
        let records = (0..t.record.partitions)
            .map(|_| PartitionRecord::new(vec![broker.node_id()]))
            .collect();
        broker.coord.create_topic(t.record.clone(), records).await?;
        tracing::info!(topic = %t.record.name, "local topic added to the cluster metadata");
    }
    Ok(())
}

/// Runs one node against `coord` until its runtime stops. Sends the bound
/// addresses on `ready` once it serves.
pub async fn serve(
    mut config: NodeConfig,
    coord: Arc<dyn Coordination>,
    import_local: bool,
    ready: oneshot::Sender<Ready>,
) -> anyhow::Result<()> {
    let kafka = bind("Kafka clients", config.kafka_listen).await?;
    let mut extra = vec![];
    for l in config.security.extra_listeners.iter_mut() {
        let bound = bind(&format!("listener {}", l.name), l.addr).await?;
        l.addr = bound.local_addr()?;
        extra.push(bound);
    }
    let security = Arc::new(crate::security::Security::new(&config.security)?);
    let admin = bind("admin HTTP", config.admin_listen).await?;
    let replication = bind("replication", config.replication_listen).await?;
    config.kafka_listen = kafka.local_addr()?;
    config.admin_listen = admin.local_addr()?;
    config.replication_listen = replication.local_addr()?;
    let (kafka_addr, admin_addr, replication_addr) = (
        config.kafka_listen,
        config.admin_listen,
        config.replication_listen,
    );
    let broker = {
        let config = config.clone();
        let coord = coord.clone();
        tokio::task::spawn_blocking(move || Broker::open(config, Arc::new(Metrics::new()), coord))
            .await??
    };
    if let Some(t) = &security.nodes {
        let _ = broker.node_tls.set(t.clone());
    }
    if import_local {
        import_local_topics(&broker).await?;
    }
    let groups = Coordinator::new(broker.clone(), config.groups.clone());
    let txns = crate::txn::Coordinator::new(broker.clone(), groups.clone(), config.txns.clone());
    let services_builder = || {
        tonic::transport::Server::builder()
            .add_service(leader::Service::new(broker.clone()))
            .add_service(crate::txn::markers::Service::new(
                broker.clone(),
                groups.clone(),
                &txns,
            ))
    };
    let repl_server = match &security.nodes {
        // Mutual TLS between nodes: every connection through a handshake
        // that requires a certificate the CA signed.
        Some(t) => tokio::spawn(services_builder().serve_with_incoming(t.incoming(replication))),
        None => tokio::spawn(services_builder().serve_with_incoming(
            // Small messages both ways: Nagle's algorithm would hold each
            // answer for a delayed ACK.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(replication),
                |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            ),
        )),
    };
    let addrs = Ready {
        kafka: kafka_addr,
        admin: admin_addr,
        replication: replication_addr,
        broker: broker.clone(),
    };
    let (kafka_host, kafka_port) = crate::protocol::advertised(&broker);
    let repl_host = config
        .replication_advertised_host
        .clone()
        .unwrap_or_else(|| {
            let ip = addrs.replication.ip();
            if ip.is_unspecified() {
                kafka_host.clone()
            } else {
                ip.to_string()
            }
        });
    let info = NodeInfo {
        id: config.node_id,
        kafka_host,
        kafka_port: kafka_port as u16,
        replication_addr: format!("{repl_host}:{}", addrs.replication.port()),
        rack: config.rack.clone(),
        listeners: std::iter::once(config.security.listener_name.clone())
            .chain(
                config
                    .security
                    .extra_listeners
                    .iter()
                    .map(|l| l.name.clone()),
            )
            .map(|name| {
                let (host, port) = crate::protocol::advertised_for(&broker, &name);
                (name, (host, port as u16))
            })
            .collect(),
        orphans: Default::default(),
        incarnation: uuid::Uuid::new_v4(),
        leaving: false,
    };
    let sent = mono_ms();
    coord
        .renew_node(&info, now_ms(), config.lease_duration_ms)
        .await?;
    broker.lease_renewed(sent);
    tokio::spawn(cluster::run_lease(broker.clone(), info));
    let mut fetchers = Fetchers::new(Throttle::new(
        broker.config.reassignment_throttle_bytes_per_sec,
        broker.metrics.reassignment_fetched_bytes.clone(),
    ));
    let coordinators = cluster::Coordinators {
        groups: groups.clone(),
        txns: txns.clone(),
    };
    cluster::refresh(&broker, &coordinators, &mut fetchers).await;
    tokio::spawn(cluster::run_sync(broker.clone(), coordinators, fetchers));
    ensure_users(&broker).await?;
    tokio::spawn(cluster::run_isr_checks(broker.clone()));
    tokio::spawn(broker.clone().retention_loop());
    tokio::spawn(broker.clone().checkpoint_loop());
    tokio::spawn(broker.clone().storage_watch());
    tokio::spawn(crate::cleaner::run(broker.clone()));
    tokio::spawn(groups.clone().run_timers());
    tokio::spawn(txns.clone().run_timers());
    let http = tokio::spawn(crate::http::serve(broker.clone(), admin));
    let services = Arc::new(Services::new(broker, groups, txns, security));
    let s = &config.security;
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(crate::protocol::serve(
        services.clone(),
        kafka,
        Arc::new(ListenerInfo {
            name: s.listener_name.clone(),
            protocol: s.listener_protocol,
        }),
    ));
    for (l, bound) in s.extra_listeners.iter().zip(extra) {
        servers.spawn(crate::protocol::serve(
            services.clone(),
            bound,
            Arc::new(ListenerInfo {
                name: l.name.clone(),
                protocol: l.protocol,
            }),
        ));
    }
    let kafka_server = async move { servers.join_next().await };
    tracing::info!(kafka = %addrs.kafka, admin = %addrs.admin, replication = %addrs.replication, data_dir = %config.data_dir.display(), node_id = config.node_id, "sluice node ready");
    let _ = ready.send(addrs);
    tokio::select! {
        r = http => anyhow::bail!("admin HTTP server stopped: {r:?}"),
        r = kafka_server => anyhow::bail!("Kafka listener stopped: {r:?}"),
        r = repl_server => anyhow::bail!("replication server stopped: {r:?}"),
    }
}

/// Makes sure the users of `--scram-users-file` exist (the first
/// administrator of a cluster with SASL, a dev setup): a missing one is
/// created with the file's password; existing ones are left as they are.
async fn ensure_users(broker: &Broker) -> anyhow::Result<()> {
    let Some(file) = &broker.config.security.scram_users_file else {
        return Ok(());
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let users = crate::security::parse_users_file(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let users = Arc::new(users);
    broker
        .update_security(|rec| {
            let users = users.clone();
            let mut rec = Some(rec);
            let mut changed = false;
            for (user, pw) in users.iter() {
                let current = rec.take().expect("record");
                match crate::security::with_user(current.clone(), user, pw) {
                    Some(next) => {
                        changed = true;
                        rec = Some(next);
                    }
                    None => rec = Some(current),
                }
            }
            changed.then(|| rec.expect("record"))
        })
        .await
        .map_err(|e| anyhow::anyhow!("storing the users of {}: {}", file.display(), e.message))?;
    tracing::info!(users = users.len(), file = %file.display(), "SCRAM users ensured");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The cluster's metadata as one dev node reaches it: `isolate I` cuts node
/// I off (every call fails, as in a network partition from the API server)
/// while it keeps serving clients and followers; `heal I` reconnects it.
struct Reachable {
    inner: Arc<dyn Coordination>,
    cut: Arc<AtomicBool>,
}

impl Reachable {
    fn check(&self) -> CResult<()> {
        if self.cut.load(Ordering::Acquire) {
            return Err(CoordError::Backend(
                "this node is isolated from the cluster metadata".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Coordination for Reachable {
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()> {
        self.check()?;
        self.inner.renew_node(info, now_ms, duration_ms).await
    }
    async fn nodes(&self) -> CResult<Vec<NodeLease>> {
        self.check()?;
        self.inner.nodes().await
    }
    async fn topics(&self) -> CResult<Vec<Versioned<TopicSpec>>> {
        self.check()?;
        self.inner.topics().await
    }
    async fn topic(&self, name: &str) -> CResult<Option<Versioned<TopicSpec>>> {
        self.check()?;
        self.inner.topic(name).await
    }
    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()> {
        self.check()?;
        self.inner.create_topic(spec, partitions).await
    }
    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version> {
        self.check()?;
        self.inner.update_topic(spec, expected).await
    }
    async fn delete_topic(&self, name: &str) -> CResult<()> {
        self.check()?;
        self.inner.delete_topic(name).await
    }
    async fn topic_dropped(&self, name: &str, id: uuid::Uuid, node: i32) -> CResult<()> {
        self.check()?;
        self.inner.topic_dropped(name, id, node).await
    }
    async fn remove_topic(&self, name: &str, id: uuid::Uuid) -> CResult<()> {
        self.check()?;
        self.inner.remove_topic(name, id).await
    }
    async fn partitions(&self) -> CResult<Vec<(PartitionKey, Versioned<PartitionRecord>)>> {
        self.check()?;
        self.inner.partitions().await
    }
    async fn partition(&self, key: &PartitionKey) -> CResult<Option<Versioned<PartitionRecord>>> {
        self.check()?;
        self.inner.partition(key).await
    }
    async fn create_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version> {
        self.check()?;
        self.inner.create_partition(key, record).await
    }
    async fn create_partitions(
        &self,
        topic: &str,
        first: i32,
        records: Vec<PartitionRecord>,
    ) -> CResult<()> {
        self.check()?;
        self.inner.create_partitions(topic, first, records).await
    }
    async fn update_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
        expected: Version,
    ) -> CResult<Version> {
        self.check()?;
        self.inner.update_partition(key, record, expected).await
    }
    async fn broker_configs(&self) -> CResult<Vec<Versioned<crate::coord::BrokerConfigs>>> {
        self.check()?;
        self.inner.broker_configs().await
    }
    async fn put_broker_configs(
        &self,
        configs: crate::coord::BrokerConfigs,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.check()?;
        self.inner.put_broker_configs(configs, expected).await
    }
    async fn security(&self) -> CResult<Option<Versioned<crate::coord::SecurityRecord>>> {
        self.check()?;
        self.inner.security().await
    }
    async fn put_security(
        &self,
        record: crate::coord::SecurityRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.check()?;
        self.inner.put_security(record, expected).await
    }
    async fn lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>> {
        self.check()?;
        self.inner.lock(name).await
    }
    async fn put_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.check()?;
        self.inner.put_lock(name, record, expected).await
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }
}

/// A node of a dev cluster: its runtime (dropping it stops the node, as a
/// crash would) and its settings, with the ports it bound first so a
/// restart comes back on the same addresses.
struct DevNode {
    config: NodeConfig,
    runtime: Option<tokio::runtime::Runtime>,
    cut: Arc<AtomicBool>,
}

fn offset_port(addr: SocketAddr, by: usize) -> SocketAddr {
    let mut a = addr;
    if a.port() != 0 {
        a.set_port(a.port() + by as u16);
    }
    a
}

impl DevNode {
    async fn start(&mut self, coord: Arc<dyn Coordination>) -> anyhow::Result<Ready> {
        let id = self.config.node_id;
        let coord: Arc<dyn Coordination> = Arc::new(Reachable {
            inner: coord,
            cut: self.cut.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("sluice-node-{id}"))
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let config = self.config.clone();
        runtime.spawn(async move {
            let r = serve(config, coord, false, tx).await;
            let _ = done_tx.send(r);
        });
        self.runtime = Some(runtime);
        let ready = tokio::select! {
            r = rx => r,
            r = done_rx => {
                let e = r.map(|r| r.err()).unwrap_or(None);
                self.stop().await;
                anyhow::bail!("node {id} stopped while starting: {e:?}");
            }
        }?;
        self.config.kafka_listen = ready.kafka;
        self.config.admin_listen = ready.admin;
        self.config.replication_listen = ready.replication;
        Ok(ready)
    }

    /// Stops the node at once, as a crash would: every task ends, nothing
    /// is handed over. Its lease lapses on its own.
    async fn stop(&mut self) -> bool {
        let Some(rt) = self.runtime.take() else {
            return false;
        };
        let _ =
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10))).await;
        true
    }
}

/// `sluice dev --nodes N`: N nodes in one process sharing in-memory
/// metadata (kept in `<data-dir>/cluster.json`), node i in
/// `<data-dir>/node-i` on the base ports plus i, and the controller. Lines
/// on stdin drive faults: `stop I` stops node I as a crash would, `start I`
/// brings it back, `isolate I` cuts it off from the metadata (it keeps
/// serving), `heal I` reconnects it, `stats` prints the coordination write
/// count.
/// `sluice dev`'s start-up banner (on stderr: stdout's first line stays the
/// machine-readable `sluice ready ...`): where to connect, where the data is,
/// how to stop, and a first command to try.
pub fn banner(
    config: &NodeConfig,
    nodes: &[(i32, impl std::fmt::Display, impl std::fmt::Display)],
) -> String {
    let dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let bootstrap = nodes
        .iter()
        .map(|(_, k, _)| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut out = String::from("\n  Sluice is running.\n\n");
    if nodes.len() == 1 {
        out.push_str(&format!("  Kafka bootstrap  {bootstrap}\n"));
        out.push_str(&format!(
            "  Admin (metrics)  http://{}/metrics\n",
            nodes[0].2
        ));
    } else {
        out.push_str(&format!(
            "  Kafka bootstrap  {bootstrap}\n\n  NODE  KAFKA                 ADMIN\n"
        ));
        for (id, k, a) in nodes {
            out.push_str(&format!("  {id:<4}  {:<20}  {a}\n", k.to_string()));
        }
        out.push_str("\n  Type `stop N` / `start N` here to stop or restart node N.\n");
    }
    out.push_str(&format!(
        "  Data directory   {} (delete it to start over)\n",
        dir.display()
    ));
    out.push_str("\n  Try, in another terminal:\n");
    out.push_str("    sluice topic create hello -p 3\n");
    out.push_str("    printf 'one\\ntwo\\n' | sluice produce hello\n");
    out.push_str("    sluice consume hello -e\n");
    out.push_str("\n  Ctrl-C to stop.\n");
    out
}

/// Refuses a `sluice dev` data directory laid out for the other mode: a
/// single node keeps its store in `<dir>/rocksdb`, a dev cluster in
/// `<dir>/node-<i>/` (with the cluster's metadata in `<dir>/cluster.json`),
/// and reading one as the other would hide records and keep internal
/// topics at the wrong replication factor.
pub fn check_dev_layout(dir: &std::path::Path, nodes: usize) -> anyhow::Result<()> {
    let cluster_nodes = (0..)
        .take_while(|i| dir.join(format!("node-{i}")).is_dir())
        .count();
    let single = dir.join("rocksdb").is_dir();
    let d = dir.display();
    if nodes == 1 && cluster_nodes > 0 {
        anyhow::bail!(
            "{d} holds the data of a {cluster_nodes}-node dev cluster; run `sluice dev --nodes {cluster_nodes}`, or give another --data-dir (or delete {d} to start over)"
        );
    }
    if nodes > 1 && single {
        anyhow::bail!(
            "{d} holds the data of a single-node `sluice dev`; run it without --nodes, or give another --data-dir for the cluster (or delete {d} to start over)"
        );
    }
    if nodes > 1 && cluster_nodes > nodes {
        anyhow::bail!(
            "{d} holds the data of a {cluster_nodes}-node dev cluster; run `sluice dev --nodes {cluster_nodes}` (fewer nodes would leave replicas behind), or give another --data-dir"
        );
    }
    Ok(())
}

pub async fn dev_cluster(base: NodeConfig, nodes: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(&base.data_dir)?;
    let memory = Arc::new(InMemory::persistent(base.data_dir.join("cluster.json"))?);
    let coord: Arc<dyn Coordination> = memory.clone();
    let id_file = base.data_dir.join("cluster-id");
    let cluster_id = match std::fs::read_to_string(&id_file) {
        Ok(id) => id.trim().to_string(),
        Err(_) => {
            let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_string();
            std::fs::write(&id_file, &id)?;
            id
        }
    };
    tokio::spawn(controller::run(
        coord.clone(),
        controller_config(&base, nodes),
    ));
    let mut cluster: BTreeMap<i32, DevNode> = BTreeMap::new();
    let mut kafka = vec![];
    let mut admin = vec![];
    let mut replication = vec![];
    for i in 0..nodes {
        let mut c = base.clone();
        c.node_id = i as i32;
        c.data_dir = base.data_dir.join(format!("node-{i}"));
        c.kafka_listen = offset_port(base.kafka_listen, i);
        for l in c.security.extra_listeners.iter_mut() {
            if l.addr.port() != 0 {
                l.addr = offset_port(l.addr, i);
            }
            if let Some((_, port)) = l.advertised.as_mut() {
                *port += i as u16;
            }
        }
        c.admin_listen = offset_port(base.admin_listen, i);
        c.replication_listen = SocketAddr::new(base.kafka_listen.ip(), 0);
        c.default_replication_factor = base.default_replication_factor.max(nodes.min(3) as i16);
        c.cluster_id = Some(cluster_id.clone());
        let mut n = DevNode {
            config: c,
            runtime: None,
            cut: Arc::new(AtomicBool::new(false)),
        };
        let ready = n.start(coord.clone()).await?;
        kafka.push(ready.kafka.to_string());
        admin.push(ready.admin.to_string());
        replication.push(ready.replication.to_string());
        cluster.insert(i as i32, n);
    }
    println!(
        "sluice ready kafka={} admin={} replication={}",
        kafka.join(","),
        admin.join(","),
        replication.join(",")
    );
    if base.banner {
        let rows: Vec<(i32, String, String)> = (0..nodes)
            .map(|i| (i as i32, kafka[i].clone(), admin[i].clone()))
            .collect();
        eprintln!("{}", banner(&base, &rows));
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        let line = tokio::select! {
            l = lines.next_line(), if stdin_open => l,
            _ = shutdown_signal() => break,
        };
        let line = match line {
            Ok(Some(l)) => l,
            _ => {
                stdin_open = false;
                continue;
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = words.get(1).and_then(|w| w.parse::<i32>().ok());
        match (words.first().copied(), node) {
            (Some("stop"), Some(id)) => match cluster.get_mut(&id) {
                Some(n) => {
                    let was = n.stop().await;
                    tracing::warn!(node = id, "node stopped");
                    println!(
                        "stopped {id}{}",
                        if was { "" } else { " (was not running)" }
                    );
                }
                None => println!("error: no node {id}"),
            },
            (Some("start"), Some(id)) => match cluster.get_mut(&id) {
                Some(n) if n.runtime.is_some() => println!("error: node {id} is running"),
                Some(n) => match n.start(coord.clone()).await {
                    Ok(r) => println!("started {id} kafka={} admin={}", r.kafka, r.admin),
                    Err(e) => println!("error: {e}"),
                },
                None => println!("error: no node {id}"),
            },
            (Some(cmd @ ("isolate" | "heal")), Some(id)) => match cluster.get(&id) {
                Some(n) => {
                    let isolate = cmd == "isolate";
                    n.cut.store(isolate, Ordering::Release);
                    let done = if isolate { "isolated" } else { "healed" };
                    tracing::warn!(node = id, "node {done}");
                    println!("{done} {id}");
                }
                None => println!("error: no node {id}"),
            },
            (Some("stats"), _) => println!("coordination writes={}", memory.writes()),
            _ => println!("error: expected `stop N`, `start N`, `isolate N`, `heal N` or `stats`"),
        }
    }
    tracing::info!("shutting down");
    for n in cluster.values_mut() {
        n.stop().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_dev_layout;

    #[test]
    fn a_dev_data_directory_is_refused_by_the_other_mode() {
        let dir = tempfile::tempdir().unwrap();
        check_dev_layout(dir.path(), 1).unwrap();
        check_dev_layout(dir.path(), 3).unwrap();
        std::fs::create_dir(dir.path().join("rocksdb")).unwrap();
        check_dev_layout(dir.path(), 1).unwrap();
        let e = check_dev_layout(dir.path(), 3).unwrap_err().to_string();
        assert!(e.contains("single-node"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            std::fs::create_dir(dir.path().join(format!("node-{i}"))).unwrap();
        }
        check_dev_layout(dir.path(), 3).unwrap();
        check_dev_layout(dir.path(), 4).unwrap();
        let e = check_dev_layout(dir.path(), 1).unwrap_err().to_string();
        assert!(e.contains("--nodes 3"), "{e}");
        assert!(check_dev_layout(dir.path(), 2).is_err());
    }
}
