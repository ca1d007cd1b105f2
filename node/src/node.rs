//! Starting a node: bind the listeners, open the store, run the servers.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::config::NodeConfig;
use crate::group::Coordinator;
use crate::metrics::Metrics;
use crate::protocol::Services;

/// Binds both listeners, opens storage and serves until the process ends.
/// Prints `sluice ready kafka=ADDR admin=ADDR` on stdout once it accepts
/// connections, with the ports actually bound (useful with port 0).
pub async fn run(mut config: NodeConfig) -> anyhow::Result<()> {
    let kafka = TcpListener::bind(config.kafka_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for Kafka clients on {}: {e}",
            config.kafka_listen
        )
    })?;
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for admin HTTP on {}: {e}",
            config.admin_listen
        )
    })?;
    config.kafka_listen = kafka.local_addr()?;
    config.admin_listen = admin.local_addr()?;
    let (kafka_addr, admin_addr) = (config.kafka_listen, config.admin_listen);
    let (broker, groups) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let broker = Broker::open(config.clone(), Arc::new(Metrics::new()))?;
            let groups = Coordinator::open(broker.clone(), config.groups.clone())?;
            Ok::<_, anyhow::Error>((broker, groups))
        })
        .await??
    };
    tokio::spawn(broker.clone().retention_loop());
    tokio::spawn(groups.clone().run_timers());
    let http = tokio::spawn(crate::http::serve(broker.clone(), admin));
    let services = Arc::new(Services { broker, groups });
    let kafka_server = tokio::spawn(crate::protocol::serve(services, kafka));
    tracing::info!(%kafka_addr, %admin_addr, data_dir = %config.data_dir.display(), node_id = config.node_id, "sluice node ready");
    println!("sluice ready kafka={kafka_addr} admin={admin_addr}");
    tokio::select! {
        r = http => anyhow::bail!("admin HTTP server stopped: {r:?}"),
        r = kafka_server => anyhow::bail!("Kafka listener stopped: {r:?}"),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
