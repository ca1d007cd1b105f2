//! `sluice-bench`: the load generator behind `docs/benchmarks.md`.
//!
//! It drives any Kafka-compatible broker through librdkafka (the `rdkafka`
//! crate), so Sluice and its peers get the same load, and it measures the
//! machine's ceilings the figures are read against (RocksDB puts, disk
//! writes, loopback TCP). Every run is bounded in time and count, talks to
//! loopback only, and prints one JSON line of results on stdout.

mod ceilings;
mod load;
mod report;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce records as fast as allowed (or at --rate) and report
    /// records/s, MB/s and acknowledgement latency.
    Produce(load::ProduceArgs),
    /// Consume --records records (from the start, or as a group) and
    /// report records/s and MB/s.
    Consume(load::ConsumeArgs),
    /// Produce at --rate while consuming, and report produce-to-consume
    /// latency percentiles.
    E2e(load::E2eArgs),
    /// The RocksDB ceiling: sequential atomic writes of one batch-sized
    /// value plus a small counter record each, as a node appends.
    Rocksdb(ceilings::RocksdbArgs),
    /// The disk ceiling: sequential writes of 1 MiB blocks, then fdatasync.
    Disk(ceilings::DiskArgs),
    /// The loopback ceiling: one TCP stream over 127.0.0.1.
    Loopback(ceilings::LoopbackArgs),
}

/// Where the broker is and the topic to use.
#[derive(Args, Clone)]
pub struct Target {
    /// Bootstrap servers (loopback addresses only).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Create the topic first with this many partitions.
    #[arg(long)]
    pub create_partitions: Option<i32>,
    /// Replication factor of the created topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Topic configs of the created topic (KEY=VALUE, repeatable).
    #[arg(long = "topic-config", value_parser = parse_kv)]
    pub topic_configs: Vec<(String, String)>,
    /// librdkafka settings: `defaults` (what users run) or `tuned` (deep
    /// producer and consumer queues, no fetch backoff: what the broker can
    /// do when the client never holds back).
    #[arg(long, value_enum, default_value_t = Profile::Defaults)]
    pub client_profile: Profile,
    /// A librdkafka property set on every client after the profile's
    /// (KEY=VALUE, repeatable), as kcat's -X: for measuring one setting.
    #[arg(short = 'X', long = "set", value_parser = parse_kv)]
    pub client_configs: Vec<(String, String)>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Profile {
    Defaults,
    Tuned,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Produce(a) => load::produce(&a)?,
        Command::Consume(a) => load::consume(&a)?,
        Command::E2e(a) => load::e2e(&a)?,
        Command::Rocksdb(a) => ceilings::rocksdb(&a)?,
        Command::Disk(a) => ceilings::disk(&a)?,
        Command::Loopback(a) => ceilings::loopback(&a)?,
    };
    eprintln!("{}", result.human());
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
