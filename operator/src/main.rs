//! `sluice-operator`: see the crate's documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use sluice_operator::config::Settings;
use sluice_operator::metrics::{self, Metrics};
use sluice_operator::run::{self, Operator};

/// Runs Sluice on Kubernetes: the controller (one active replica, elected
/// through a Lease), the storage nodes' StatefulSet and the Topics' status.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The settings file (YAML; the chart mounts its ConfigMap here).
    #[arg(long, env = "SLUICE_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides a setting: `--set minNodes=5` (the value is YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Namespace of the cluster (its Topics, nodes and Leases).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This replica's name in the election (the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Read and check the settings, print them with every default filled
    /// in, and exit (no API server needed).
    #[arg(long)]
    check_config: bool,
    /// A kubeconfig, when the operator runs outside the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        // Logs to stderr; stdout carries only the ready line, which a
        // parent may read and then stop reading.
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let yaml = match &args.config {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let settings = Settings::load(yaml.as_deref(), &args.set)?;
    if args.check_config {
        print!("{}", serde_yaml::to_string(&settings)?);
        return Ok(());
    }
    let client = match &args.kubeconfig {
        Some(p) => sluice_coord::client_from_kubeconfig(p).await?,
        None => kube::Client::try_default().await?,
    };
    // The ConfigMap owning what the operator makes owns the cluster's
    // Leases too (the controller lock, node leases, broker configs).
    let owner = run::ensure_owner(&client, &args.namespace, &settings).await?;
    let coord = Arc::new(
        sluice_coord::Kubernetes::new(client.clone(), &args.namespace, &settings.cluster_name)
            .await?
            .with_owner(Some(sluice_coord::configmap_owner(
                &owner.metadata.name.clone().unwrap_or_default(),
                &owner.metadata.uid.clone().unwrap_or_default(),
            ))),
    );
    let identity = args.identity.unwrap_or_else(|| {
        format!(
            "operator-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.metrics_listen))?;
    let addr = listener.local_addr()?;
    let app = metrics::router(metrics.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let op = Arc::new(Operator {
        kafka: Default::default(),
        recorder: run::recorder(client.clone(), &identity),
        client,
        settings,
        namespace: args.namespace,
        identity: identity.clone(),
        coord,
        metrics,
    });
    println!("sluice-operator ready identity={identity} metrics={addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = op.run() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
