//! The `sluice` command: the servers (`dev`, `serve`) and, with the `cli`
//! feature (on by default), the client commands of `sluice_cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{Args, CommandFactory, Parser, Subcommand};
use sluice_node::config::{BrokerDefaults, CleanerConfig, NodeConfig};
use sluice_node::group::state::Limits;
use sluice_node::group::GroupConfig;
use sluice_node::log::TimestampType;
use sluice_node::txn::TxnConfig;

/// The one place server defaults come from: flags show and fall back to it.
fn d() -> &'static NodeConfig {
    static DEFAULTS: LazyLock<NodeConfig> = LazyLock::new(|| NodeConfig::dev(PathBuf::new()));
    &DEFAULTS
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka-compatible event streaming, native on Kubernetes",
    long_about = "Kafka-compatible event streaming, native on Kubernetes.\n\n\
        `sluice dev` starts a single-node broker on 127.0.0.1:9092 for local work;\n\
        `sluice serve` runs one storage node of a cluster; the other commands\n\
        are clients of any Kafka-compatible cluster (-b/--brokers or\n\
        SLUICE_BROKERS, default localhost:9092)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node broker for local development: Kafka on 127.0.0.1:9092,
    /// data in ./sluice-data, topics auto-created on first use.
    Dev(DevArgs),
    /// Run one storage node (the process inside each StatefulSet pod).
    Serve(ServeArgs),
    #[cfg(feature = "cli")]
    #[command(flatten)]
    Client(sluice_cli::Command),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    /// (e.g. `source <(sluice completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct DevArgs {
    /// Kafka listener address.
    #[arg(long, default_value_t = d().kafka_listen, env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// Admin HTTP address (/metrics, /healthz, /readyz).
    #[arg(long, default_value_t = d().admin_listen, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Directory holding the node's RocksDB data; created if missing.
    #[arg(long, default_value = "sluice-data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
    /// Run a cluster of this many nodes in one process: node i listens on
    /// the base ports plus i and keeps its data in <data-dir>/node-i. Lines
    /// `stop I` and `start I` on stdin stop (as a crash would) and restart
    /// node I; `isolate I` and `heal I` cut node I off from the cluster
    /// metadata and reconnect it; `stats` prints the coordination write count.
    #[arg(long, default_value_t = 1, env = "SLUICE_NODES", value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// This node's id (the StatefulSet ordinal).
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: i32,
    /// Kafka listener address.
    #[arg(long, default_value = "0.0.0.0:9092", env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// Admin HTTP address (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:9644", env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Directory holding the node's RocksDB data (the pod's volume).
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
    /// Rack (zone) of this node, reported to clients.
    #[arg(long, env = "SLUICE_RACK")]
    rack: Option<String>,
    /// Replication (gRPC) listener address followers fetch from.
    #[arg(
        long,
        default_value = "0.0.0.0:9095",
        env = "SLUICE_REPLICATION_LISTEN"
    )]
    replication_listen: SocketAddr,
    /// Where the cluster's metadata lives: `local` (this node alone, in its
    /// data directory) or `kubernetes` (Lease objects in --namespace).
    #[arg(long, default_value = "local", value_parser = ["local", "kubernetes"], env = "SLUICE_METADATA")]
    metadata: String,
    /// Namespace of the Lease objects (with --metadata kubernetes).
    #[arg(long, default_value = "default", env = "SLUICE_NAMESPACE")]
    namespace: String,
    /// Name of the cluster, prefixing its Lease objects.
    #[arg(long, default_value = "sluice", env = "SLUICE_CLUSTER_NAME")]
    cluster_name: String,
    /// The ConfigMap owning this cluster's Leases (node leases, broker
    /// configs), as `<name>/<uid>`: the operator sets it, so they go with
    /// the installation. Partition Leases are kept with the data.
    #[arg(long, env = "SLUICE_LEASE_OWNER", value_parser = lease_owner)]
    lease_owner: Option<Box<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    /// Nodes the cluster is meant to have (the StatefulSet's replicas).
    #[arg(long, default_value_t = 3, env = "SLUICE_EXPECTED_NODES")]
    expected_nodes: usize,
    /// Stand as a candidate for the cluster's controller (with --metadata
    /// kubernetes): for a cluster run without the operator, which
    /// otherwise runs the one controller.
    #[arg(long, env = "SLUICE_CONTROLLER", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    controller: bool,
    /// Take the rack from this label of the Kubernetes node the pod runs
    /// on (with --metadata kubernetes; e.g. topology.kubernetes.io/zone).
    /// The node's name comes from --kubernetes-node.
    #[arg(
        long,
        env = "SLUICE_RACK_FROM_NODE_LABEL",
        requires = "kubernetes_node"
    )]
    rack_from_node_label: Option<String>,
    /// The Kubernetes node this pod runs on (the downward API's
    /// spec.nodeName).
    #[arg(long, env = "SLUICE_KUBERNETES_NODE")]
    kubernetes_node: Option<String>,
    /// On SIGTERM (with --metadata kubernetes), how long to wait for the
    /// controller to move every leadership off this node before stopping
    /// (controlled shutdown); keep it below the pod's grace period.
    #[arg(long, default_value_t = 20_000, env = "SLUICE_SHUTDOWN_TIMEOUT_MS")]
    shutdown_timeout_ms: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    #[command(flatten)]
    security: SecurityArgs,
    /// HOST[:PORT] advertised to clients in metadata, when they must reach
    /// the node through another address (a Service, a proxy). Defaults to
    /// the listen address and the bound port.
    #[arg(long, env = "SLUICE_ADVERTISED_ADDRESS", value_parser = parse_advertised)]
    advertised_address: Option<(String, Option<u16>)>,
    /// Create topics when a client asks for metadata of an unknown one
    /// (auto.create.topics.enable). On by default in dev, off in serve.
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of CreateTopics with -1 (num.partitions).
    #[arg(long, env = "SLUICE_NUM_PARTITIONS", default_value_t = d().num_partitions)]
    num_partitions: i32,
    /// Largest request frame accepted, in bytes (socket.request.max.bytes).
    #[arg(long, env = "SLUICE_SOCKET_REQUEST_MAX_BYTES", default_value_t = d().socket_request_max_bytes)]
    socket_request_max_bytes: usize,
    /// Memory for request frames in flight and fetch answers being built,
    /// across all connections, in bytes (queued.max.request.bytes). When it
    /// is used up, connections wait before reading more.
    #[arg(long, env = "SLUICE_QUEUED_MAX_REQUEST_BYTES", default_value_t = d().queued_max_request_bytes)]
    queued_max_request_bytes: usize,
    /// Most bytes one fetch answer carries, whatever the request asks
    /// (fetch.max.bytes).
    #[arg(long, env = "SLUICE_FETCH_MAX_BYTES", default_value_t = d().fetch_max_bytes)]
    fetch_max_bytes: usize,
    /// Most bytes one record batch may decompress to; larger ones are
    /// refused as corrupt.
    #[arg(long, env = "SLUICE_MAX_DECOMPRESSED_BATCH_BYTES", default_value_t = d().max_decompressed_batch_bytes)]
    max_decompressed_batch_bytes: usize,
    /// Close connections idle this long, in ms (connections.max.idle.ms).
    #[arg(long, env = "SLUICE_CONNECTIONS_MAX_IDLE_MS", default_value_t = d().connections_max_idle_ms)]
    connections_max_idle_ms: u64,
    /// Close a connection whose request frame does not arrive whole within
    /// this long of its first byte, in ms.
    #[arg(long, env = "SLUICE_REQUEST_READ_TIMEOUT_MS", default_value_t = d().request_read_timeout_ms)]
    request_read_timeout_ms: u64,
    /// Most open client connections (max.connections).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = d().max_connections)]
    max_connections: usize,
    /// Most open client connections from one address (max.connections.per.ip).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS_PER_IP", default_value_t = d().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Default largest record batch, in bytes (message.max.bytes).
    #[arg(long, env = "SLUICE_MESSAGE_MAX_BYTES", default_value_t = d().defaults.max_message_bytes)]
    message_max_bytes: i32,
    /// Default retention time in ms, -1 for none (log.retention.ms).
    #[arg(long, env = "SLUICE_LOG_RETENTION_MS", default_value_t = d().defaults.retention_ms)]
    log_retention_ms: i64,
    /// Default retention size per partition in bytes, -1 for none (log.retention.bytes).
    #[arg(long, env = "SLUICE_LOG_RETENTION_BYTES", default_value_t = d().defaults.retention_bytes)]
    log_retention_bytes: i64,
    /// How often retention runs, in ms (log.retention.check.interval.ms).
    #[arg(long, env = "SLUICE_LOG_RETENTION_CHECK_INTERVAL_MS", default_value_t = d().retention_check_interval_ms)]
    log_retention_check_interval_ms: u64,
    /// Bytes per second this node may fetch for replicas a reassignment is
    /// adding here (follower.replication.throttled.rate); 0: unthrottled.
    /// Replicas in the ISR are never throttled.
    #[arg(long, env = "SLUICE_REASSIGNMENT_THROTTLE", default_value_t = d().reassignment_throttle_bytes_per_sec)]
    reassignment_throttle: u64,
    /// Run the log cleaner, which compacts topics with
    /// cleanup.policy=compact (log.cleaner.enable).
    #[arg(long, env = "SLUICE_LOG_CLEANER_ENABLE", default_value_t = d().cleaner.enable, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    log_cleaner_enable: bool,
    /// How long the log cleaner waits when no partition is due, in ms
    /// (log.cleaner.backoff.ms).
    #[arg(long, env = "SLUICE_LOG_CLEANER_BACKOFF_MS", default_value_t = d().cleaner.backoff_ms)]
    log_cleaner_backoff_ms: u64,
    /// Bytes per second the log cleaner may read plus write
    /// (log.cleaner.io.max.bytes.per.second).
    #[arg(long, env = "SLUICE_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND", default_value_t = d().cleaner.io_max_bytes_per_second)]
    log_cleaner_io_max_bytes_per_second: f64,
    /// Memory for the key map of one cleaning pass, in bytes
    /// (log.cleaner.dedupe.buffer.size).
    #[arg(long, env = "SLUICE_LOG_CLEANER_DEDUPE_BUFFER_SIZE", default_value_t = d().cleaner.dedupe_buffer_size)]
    log_cleaner_dedupe_buffer_size: usize,
    /// Default timestamp type of topics: CreateTime or LogAppendTime.
    #[arg(long, env = "SLUICE_LOG_MESSAGE_TIMESTAMP_TYPE", default_value = "CreateTime", value_parser = ["CreateTime", "LogAppendTime"])]
    log_message_timestamp_type: String,
    /// fsync the write-ahead log on every write (off by default, like Kafka,
    /// whose durability comes from replication).
    #[arg(long, env = "SLUICE_SYNC_WRITES", default_value_t = d().sync_writes, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    sync_writes: bool,
    /// Wait before the first rebalance of a new group, so members starting
    /// together land in one generation (group.initial.rebalance.delay.ms).
    /// Default 0 in dev, 3000 in serve.
    #[arg(long, env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<i64>,
    /// Smallest session timeout a member may ask for (group.min.session.timeout.ms).
    #[arg(long, env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS", default_value_t = d().groups.limits.min_session_timeout_ms)]
    group_min_session_timeout_ms: i64,
    /// Largest session timeout a member may ask for (group.max.session.timeout.ms).
    #[arg(long, env = "SLUICE_GROUP_MAX_SESSION_TIMEOUT_MS", default_value_t = d().groups.limits.max_session_timeout_ms)]
    group_max_session_timeout_ms: i64,
    /// Partitions of __consumer_offsets, fixed when it is first created
    /// (offsets.topic.num.partitions).
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_NUM_PARTITIONS", default_value_t = d().groups.offsets_topic_partitions)]
    offsets_topic_num_partitions: i32,
    /// Partitions of __transaction_state, fixed when it is first created
    /// (transaction.state.log.num.partitions).
    #[arg(long, env = "SLUICE_TRANSACTION_STATE_NUM_PARTITIONS", default_value_t = d().txns.state_topic_partitions)]
    transaction_state_num_partitions: i32,
    /// The longest transaction.timeout.ms a producer may ask for
    /// (transaction.max.timeout.ms).
    #[arg(long, env = "SLUICE_TRANSACTION_MAX_TIMEOUT_MS", default_value_t = d().txns.max_timeout_ms)]
    transaction_max_timeout_ms: i32,
    /// How often transactions open past their timeout are aborted
    /// (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    #[arg(long, env = "SLUICE_TRANSACTION_ABORT_CHECK_INTERVAL_MS", default_value_t = d().txns.abort_check_interval_ms)]
    transaction_abort_check_interval_ms: u64,
    /// How long a transactional id without a transaction is remembered
    /// (transactional.id.expiration.ms).
    #[arg(long, env = "SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS", default_value_t = d().txns.id_expiration_ms)]
    transactional_id_expiration_ms: i64,
    /// How long an idle idempotent producer's state is kept, checked with
    /// retention (producer.id.expiration.ms).
    #[arg(long, env = "SLUICE_PRODUCER_ID_EXPIRATION_MS", default_value_t = d().producer_id_expiration_ms)]
    producer_id_expiration_ms: i64,
    /// How long offsets of an empty group are kept (offsets.retention.minutes;
    /// fractions allowed).
    #[arg(long, env = "SLUICE_OFFSETS_RETENTION_MINUTES", default_value_t = d().groups.offsets_retention_ms as f64 / 60_000.0)]
    offsets_retention_minutes: f64,
    /// How often expired offsets are removed (offsets.retention.check.interval.ms).
    #[arg(long, env = "SLUICE_OFFSETS_RETENTION_CHECK_INTERVAL_MS", default_value_t = d().groups.offsets_retention_check_interval_ms)]
    offsets_retention_check_interval_ms: u64,
    /// Default replication factor of new topics (default.replication.factor);
    /// `sluice dev --nodes N` raises it to min(N, 3).
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR", default_value_t = d().default_replication_factor)]
    default_replication_factor: i16,
    /// Default min.insync.replicas of topics.
    #[arg(long, env = "SLUICE_MIN_INSYNC_REPLICAS", default_value_t = d().defaults.min_insync_replicas)]
    min_insync_replicas: i32,
    /// How long a node's lease lasts, in ms; renewed every fifth of it. A node
    /// that cannot renew stops leading after 60% of it.
    #[arg(long, env = "SLUICE_LEASE_DURATION_MS", default_value_t = d().lease_duration_ms)]
    lease_duration_ms: i64,
    /// A follower that has not caught up for this long leaves the ISR
    /// (replica.lag.time.max.ms).
    #[arg(long, env = "SLUICE_REPLICA_LAG_TIME_MAX_MS", default_value_t = d().replica_lag_time_max_ms)]
    replica_lag_time_max_ms: i64,
}

/// Listeners, TLS, SASL and ACLs (Kafka's names where Kafka has them).
#[derive(Args)]
struct SecurityArgs {
    /// Named Kafka listeners, `NAME://host:port,...` (listeners); replaces
    /// --listen. The first is the primary one. An empty host listens on
    /// every interface.
    #[arg(long, env = "SLUICE_LISTENERS")]
    listeners: Option<String>,
    /// Addresses clients of each listener are told, `NAME://host:port,...`
    /// (advertised.listeners).
    #[arg(long, env = "SLUICE_ADVERTISED_LISTENERS", requires = "listeners")]
    advertised_listeners: Option<String>,
    /// `NAME:PROTOCOL,...` for listener names other than PLAINTEXT, SSL,
    /// SASL_PLAINTEXT and SASL_SSL, which name their protocol
    /// (listener.security.protocol.map).
    #[arg(
        long,
        env = "SLUICE_LISTENER_SECURITY_PROTOCOL_MAP",
        default_value = ""
    )]
    listener_security_protocol_map: String,
    /// PEM certificate chain of the TLS listeners (read again when it changes).
    #[arg(long, env = "SLUICE_SSL_CERT")]
    ssl_cert: Option<PathBuf>,
    /// PEM private key of the TLS listeners (read again when it changes).
    #[arg(long, env = "SLUICE_SSL_KEY")]
    ssl_key: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to (mutual TLS).
    #[arg(long, env = "SLUICE_SSL_CA")]
    ssl_ca: Option<PathBuf>,
    /// Ask TLS clients for a certificate (ssl.client.auth); its subject
    /// becomes the principal, `User:CN=...`.
    #[arg(
        long,
        env = "SLUICE_SSL_CLIENT_AUTH",
        value_enum,
        default_value = "none"
    )]
    ssl_client_auth: sluice_node::security::tls::ClientAuth,
    /// SASL mechanisms offered (sasl.enabled.mechanisms): PLAIN,
    /// SCRAM-SHA-256, SCRAM-SHA-512. PLAIN is checked against the stored
    /// SCRAM credentials.
    #[arg(
        long,
        env = "SLUICE_SASL_ENABLED_MECHANISMS",
        default_value = "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN"
    )]
    sasl_enabled_mechanisms: String,
    /// A SASL session lasts this long, in ms; clients re-authenticate
    /// before it ends (connections.max.reauth.ms). 0: no limit.
    #[arg(long, env = "SLUICE_CONNECTIONS_MAX_REAUTH_MS", default_value_t = 0)]
    connections_max_reauth_ms: u64,
    /// A failed SASL login is answered this late, in ms
    /// (connection.failed.authentication.delay.ms).
    #[arg(
        long,
        env = "SLUICE_CONNECTION_FAILED_AUTHENTICATION_DELAY_MS",
        default_value_t = 100
    )]
    connection_failed_authentication_delay_ms: u64,
    /// The CA of the nodes' certificates for --replication-tls, when it is
    /// not --ssl-ca (recommended: then no client certificate passes for a
    /// node).
    #[arg(long, env = "SLUICE_REPLICATION_SSL_CA")]
    replication_ssl_ca: Option<PathBuf>,
    /// With --replication-tls, the name every node's certificate is
    /// checked for, instead of the peer's host (for nodes reached by
    /// addresses their certificates cannot name, such as pod IPs).
    #[arg(long, env = "SLUICE_REPLICATION_SERVER_NAME")]
    replication_server_name: Option<String>,
    /// `name:password` lines: SCRAM users the node makes sure exist at start
    /// (the first administrator).
    #[arg(long, env = "SLUICE_SCRAM_USERS_FILE")]
    scram_users_file: Option<PathBuf>,
    /// Replication and transaction markers between nodes over mutual TLS,
    /// with --ssl-cert, --ssl-key and --ssl-ca (a certificate valid for
    /// the node's replication host, for client and server use).
    #[arg(long, env = "SLUICE_REPLICATION_TLS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    replication_tls: bool,
    /// Check every request against the ACLs; what no ACL allows is denied.
    #[arg(long, env = "SLUICE_AUTHORIZER", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authorizer: bool,
    /// Principals every check lets through, `User:a;User:b` (super.users).
    #[arg(long, env = "SLUICE_SUPER_USERS", default_value = "")]
    super_users: String,
    /// Let everyone at resources no ACL mentions
    /// (allow.everyone.if.no.acl.found).
    #[arg(long, env = "SLUICE_ALLOW_EVERYONE_IF_NO_ACL_FOUND", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    allow_everyone_if_no_acl_found: bool,
}

impl SecurityArgs {
    fn apply(self, c: &mut NodeConfig) -> anyhow::Result<()> {
        use sluice_node::security::{listener, sasl, tls};
        let s = &mut c.security;
        if let Some(ls) = &self.listeners {
            let map = listener::parse_protocol_map(&self.listener_security_protocol_map)
                .map_err(anyhow::Error::msg)?;
            let mut all = listener::parse_listeners(ls, self.advertised_listeners.as_deref(), &map)
                .map_err(anyhow::Error::msg)?
                .into_iter();
            let first = all.next().expect("at least one listener");
            c.kafka_listen = first.addr;
            if let Some((host, port)) = first.advertised {
                c.advertised_host = Some(host);
                c.advertised_port = Some(port);
            }
            s.listener_name = first.name;
            s.listener_protocol = first.protocol;
            s.extra_listeners = all.collect();
        }
        s.tls = match (self.ssl_cert, self.ssl_key) {
            (Some(cert), Some(key)) => Some(tls::TlsFiles {
                cert,
                key,
                ca: self.ssl_ca,
                client_auth: self.ssl_client_auth,
            }),
            (None, None) => None,
            _ => anyhow::bail!("--ssl-cert and --ssl-key go together"),
        };
        s.sasl_mechanisms =
            sasl::parse_mechanisms(&self.sasl_enabled_mechanisms).map_err(anyhow::Error::msg)?;
        s.max_reauth_ms = self.connections_max_reauth_ms;
        s.failed_authentication_delay_ms = self.connection_failed_authentication_delay_ms;
        s.replication_ca = self.replication_ssl_ca;
        s.replication_server_name = self.replication_server_name;
        s.scram_users_file = self.scram_users_file;
        s.authorizer = self.authorizer;
        s.replication_tls = self.replication_tls;
        s.allow_everyone_if_no_acl = self.allow_everyone_if_no_acl_found;
        s.super_users = self
            .super_users
            .split(';')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if let Some(bad) = s.super_users.iter().find(|u| !u.contains(':')) {
            anyhow::bail!("super user {bad:?} is not of the form User:name");
        }
        Ok(())
    }
}

impl CommonArgs {
    fn apply(self, c: &mut NodeConfig, dev: bool) -> anyhow::Result<()> {
        self.security.apply(c)?;
        if let Some((host, port)) = self.advertised_address {
            c.advertised_host = Some(host);
            c.advertised_port = port;
        }
        c.auto_create_topics = self.auto_create_topics.unwrap_or(dev);
        c.groups = GroupConfig {
            offsets_topic_partitions: self.offsets_topic_num_partitions,
            limits: Limits {
                min_session_timeout_ms: self.group_min_session_timeout_ms,
                max_session_timeout_ms: self.group_max_session_timeout_ms,
                initial_rebalance_delay_ms: self
                    .group_initial_rebalance_delay_ms
                    .unwrap_or(if dev { 0 } else { 3_000 }),
            },
            offsets_retention_ms: (self.offsets_retention_minutes * 60_000.0) as i64,
            offsets_retention_check_interval_ms: self.offsets_retention_check_interval_ms,
            ..GroupConfig::default()
        };
        c.txns = TxnConfig {
            state_topic_partitions: self.transaction_state_num_partitions,
            max_timeout_ms: self.transaction_max_timeout_ms,
            abort_check_interval_ms: self.transaction_abort_check_interval_ms.max(1),
            id_expiration_ms: self.transactional_id_expiration_ms,
        };
        c.num_partitions = self.num_partitions;
        c.socket_request_max_bytes = self.socket_request_max_bytes;
        c.queued_max_request_bytes = self.queued_max_request_bytes.max(1);
        c.fetch_max_bytes = self.fetch_max_bytes.max(1);
        c.max_decompressed_batch_bytes = self.max_decompressed_batch_bytes.max(1);
        c.connections_max_idle_ms = self.connections_max_idle_ms.max(1);
        c.request_read_timeout_ms = self.request_read_timeout_ms.max(1);
        c.max_connections = self.max_connections.max(1);
        c.max_connections_per_ip = self.max_connections_per_ip.max(1);
        c.retention_check_interval_ms = self.log_retention_check_interval_ms;
        c.reassignment_throttle_bytes_per_sec = self.reassignment_throttle;
        c.cleaner = CleanerConfig {
            enable: self.log_cleaner_enable,
            backoff_ms: self.log_cleaner_backoff_ms.max(10),
            io_max_bytes_per_second: self.log_cleaner_io_max_bytes_per_second.max(1.0),
            dedupe_buffer_size: self.log_cleaner_dedupe_buffer_size.max(1 << 16),
        };
        c.producer_id_expiration_ms = self.producer_id_expiration_ms;
        c.sync_writes = self.sync_writes;
        c.default_replication_factor = self.default_replication_factor;
        c.lease_duration_ms = self.lease_duration_ms.max(100);
        c.replica_lag_time_max_ms = self.replica_lag_time_max_ms.max(10);
        c.defaults = BrokerDefaults {
            retention_ms: self.log_retention_ms,
            retention_bytes: self.log_retention_bytes,
            max_message_bytes: self.message_max_bytes,
            message_timestamp_type: if self.log_message_timestamp_type == "LogAppendTime" {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            min_insync_replicas: self.min_insync_replicas,
            dynamic: Default::default(),
        };
        Ok(())
    }
}

fn parse_advertised(s: &str) -> Result<(String, Option<u16>), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
            let port = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
            Ok((host.trim_matches(['[', ']']).to_string(), Some(port)))
        }
        _ if !s.is_empty() => Ok((s.to_string(), None)),
        _ => Err("the advertised address is empty".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Dev(a) => Server::Dev(a),
        Command::Serve(a) => Server::Serve(a),
        #[cfg(feature = "cli")]
        Command::Client(c) => return sluice_cli::run(c),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
    };
    // `sluice dev` says what matters in its banner and logs warnings;
    // `sluice serve` logs what it does. RUST_LOG overrides both.
    let level = match command {
        Server::Dev(_) => "warn",
        Server::Serve(_) => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match serve(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

enum Server {
    Dev(DevArgs),
    Serve(ServeArgs),
}

fn serve(command: Server) -> anyhow::Result<()> {
    let mut nodes = 1;
    let mut metadata = sluice_node::node::Metadata::Local;
    let config = match command {
        Server::Dev(a) => {
            sluice_node::node::check_dev_layout(&a.data_dir, usize::from(a.nodes))?;
            let mut c = NodeConfig::dev(a.data_dir);
            c.kafka_listen = a.listen;
            c.admin_listen = a.admin_listen;
            c.replication_listen = SocketAddr::new(a.listen.ip(), 0);
            c.banner = true;
            nodes = usize::from(a.nodes);
            a.common.apply(&mut c, true)?;
            c
        }
        Server::Serve(a) => {
            let mut c = NodeConfig::dev(a.data_dir);
            c.node_id = a.node_id;
            c.kafka_listen = a.listen;
            c.admin_listen = a.admin_listen;
            c.rack = a.rack;
            c.replication_listen = a.replication_listen;
            if a.metadata == "kubernetes" {
                c.cluster_id = Some(a.cluster_name.clone());
                metadata = sluice_node::node::Metadata::Kubernetes {
                    namespace: a.namespace,
                    cluster: a.cluster_name,
                    lease_owner: a.lease_owner,
                    expected_nodes: a.expected_nodes,
                    controller: a.controller,
                    rack_from: a.rack_from_node_label.zip(a.kubernetes_node),
                    shutdown_timeout: std::time::Duration::from_millis(a.shutdown_timeout_ms),
                };
            }
            a.common.apply(&mut c, false)?;
            c
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = if nodes > 1 {
        runtime.block_on(sluice_node::node::dev_cluster(config, nodes))
    } else {
        runtime.block_on(sluice_node::node::run(config, metadata))
    };
    // Stop promptly on SIGTERM even when blocking work (a large deletion's
    // space being reclaimed) is still running: it is safe to cut short.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn lease_owner(
    s: &str,
) -> Result<Box<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>, String> {
    sluice_coord::parse_configmap_owner(s).map(Box::new)
}
