//! `sluice cluster info|health`: the nodes (addresses, racks), the
//! controller, topic and partition counts, and what is unhealthy:
//! unreachable nodes, partitions without a leader, under-replicated
//! partitions and replicas on nodes that are gone.

use std::collections::BTreeSet;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Subcommand};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
use serde_json::json;

use crate::connect::{Conn, Connection};
use crate::output::{paint, print, Format, Table, GREEN, RED};
use crate::wire::Wire;
use crate::Outcome;

#[derive(Args)]
pub struct ClusterCmd {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Nodes with their addresses and racks, the controller, topics and
    /// partitions, and partition health counts.
    Info,
    /// Exit 0 when every node answers and every partition has a leader and
    /// a full ISR; otherwise list what is wrong and exit 1.
    Health,
}

/// What the cluster looks like, from one Metadata answer plus a TCP
/// connection attempt to every node.
pub struct Report {
    pub cluster_id: Option<String>,
    pub controller: i32,
    pub nodes: Vec<Node>,
    pub topics: usize,
    pub partitions: usize,
    pub leaderless: Vec<String>,
    pub under_replicated: Vec<String>,
    /// Partitions with a replica on a node that is not in the cluster or
    /// reported offline.
    pub offline_replicas: Vec<String>,
    /// The nodes those replicas are on.
    pub gone: BTreeSet<i32>,
}

pub struct Node {
    pub id: i32,
    pub address: String,
    pub rack: Option<String>,
    pub reachable: Result<(), String>,
}

impl Report {
    fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        for n in &self.nodes {
            if let Err(e) = &n.reachable {
                out.push(format!(
                    "node {} at {} does not answer: {e}",
                    n.id, n.address
                ));
            }
        }
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
            let more = if v.len() > 10 {
                format!(" and {} more", v.len() - 10)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        if !self.leaderless.is_empty() {
            out.push(format!(
                "{} partitions without a leader: {}",
                self.leaderless.len(),
                list(&self.leaderless)
            ));
        }
        if !self.offline_replicas.is_empty() {
            let nodes: Vec<String> = self.gone.iter().map(i32::to_string).collect();
            out.push(format!(
                "{} partitions with a replica on node {}, which is gone: {}",
                self.offline_replicas.len(),
                nodes.join(", node "),
                list(&self.offline_replicas)
            ));
        }
        if !self.under_replicated.is_empty() {
            out.push(format!(
                "{} under-replicated partitions (ISR smaller than the replicas): {}",
                self.under_replicated.len(),
                list(&self.under_replicated)
            ));
        }
        out
    }
}

pub fn report(conn: &Conn) -> anyhow::Result<Report> {
    conn.check_reachable()?;
    let mut wire = Wire::connect(conn)?;
    let req = MetadataRequest::default()
        .with_topics(None)
        .with_allow_auto_topic_creation(false);
    let (_, md): (_, MetadataResponse) = wire.send(&req)?;
    let ids: BTreeSet<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    let probe = conn.timeout.min(Duration::from_secs(3));
    let mut nodes: Vec<Node> = md
        .brokers
        .iter()
        .map(|b| {
            let address = format!("{}:{}", b.host, b.port);
            Node {
                id: b.node_id.0,
                reachable: reach(&address, probe),
                address,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            }
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    let mut r = Report {
        cluster_id: md.cluster_id.as_ref().map(|c| c.to_string()),
        controller: md.controller_id.0,
        nodes,
        topics: 0,
        partitions: 0,
        leaderless: vec![],
        under_replicated: vec![],
        offline_replicas: vec![],
        gone: BTreeSet::new(),
    };
    for t in &md.topics {
        let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
        r.topics += 1;
        for p in &t.partitions {
            r.partitions += 1;
            let id = format!("{name}/{}", p.partition_index);
            if p.leader_id.0 < 0 {
                r.leaderless.push(id.clone());
            }
            if p.replica_nodes.iter().any(|n| !ids.contains(&n.0)) || !p.offline_replicas.is_empty()
            {
                r.offline_replicas.push(id.clone());
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                r.under_replicated.push(id);
            }
        }
    }
    Ok(r)
}

fn reach(address: &str, timeout: Duration) -> Result<(), String> {
    let addrs = address.to_socket_addrs().map_err(|e| e.to_string())?;
    let mut last = "no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

pub fn run(cmd: ClusterCmd) -> anyhow::Result<Outcome> {
    let conn = cmd.conn.resolve()?;
    let r = report(&conn)?;
    let problems = r.problems();
    let healthy = problems.is_empty();
    let mut nodes =
        Table::new(&["Node", "Address", "Rack", "Controller", "Reachable"]).titled("Nodes");
    for n in &r.nodes {
        nodes.row(vec![
            json!(n.id),
            json!(n.address),
            json!(n.rack),
            json!(n.id == r.controller),
            json!(n.reachable.is_ok()),
        ]);
    }
    let doc = || {
        json!({
            "cluster_id": r.cluster_id,
            "controller": r.controller,
            "nodes": nodes.json(),
            "topics": r.topics,
            "partitions": r.partitions,
            "leaderless": r.leaderless,
            "under_replicated": r.under_replicated,
            "offline_replicas": r.offline_replicas,
            "healthy": healthy,
            "problems": problems,
        })
    };
    let info = matches!(cmd.action, ClusterAction::Info);
    match cmd.action {
        ClusterAction::Info => {
            let mut summary = Table::new(&[
                "Cluster",
                "Controller",
                "Nodes",
                "Topics",
                "Partitions",
                "Under-replicated",
                "Leaderless",
                "Offline replicas",
            ]);
            summary.row(vec![
                json!(r.cluster_id),
                json!(r.controller),
                json!(r.nodes.len()),
                json!(r.topics),
                json!(r.partitions),
                json!(r.under_replicated.len()),
                json!(r.leaderless.len()),
                json!(r.offline_replicas.len()),
            ]);
            let d = doc();
            print(conn.format, &[summary, nodes], || d);
        }
        ClusterAction::Health => {
            if conn.format == Format::Json {
                println!("{}", doc());
            } else if healthy {
                println!(
                    "{}: {} nodes, {} topics, {} partitions, every partition led with a full ISR",
                    paint(conn.format, "healthy", GREEN),
                    r.nodes.len(),
                    r.topics,
                    r.partitions
                );
            } else {
                println!("{}", paint(conn.format, "unhealthy", RED));
                for p in &problems {
                    println!("- {p}");
                }
            }
        }
    }
    Ok(if healthy || info {
        Outcome::Ok
    } else {
        Outcome::Unhealthy
    })
}
