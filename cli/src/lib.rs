//! The client side of the `sluice` command: `topic`, `produce`, `consume`,
//! `group`, `cluster` and `config`, in the spirit of Kafka's shell scripts
//! and `rpk`. It speaks the Kafka protocol only, so it works against any
//! Kafka-compatible broker: records and most admin calls go through
//! librdkafka (the `rdkafka` crate), the few admin calls that crate does not
//! wrap (IncrementalAlterConfigs, a Metadata answer with racks and the
//! controller) are single `kafka-protocol` requests ([`wire`]).
//!
//! Output is a table when stdout is a terminal, aligned plain text when it
//! is piped, and JSON with `--json`; errors are one line on stderr and a
//! non-zero exit ([`run`]).

pub mod cluster;
pub mod config;
pub mod connect;
pub mod consume;
pub mod group;
pub mod output;
pub mod produce;
pub mod secure;
pub mod suggest;
pub mod template;
pub mod topic;
pub mod wire;

use std::process::ExitCode;

use clap::Subcommand;

pub use connect::Connection;

/// The client subcommands, flattened into the `sluice` command.
#[derive(Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    Topic(topic::TopicCmd),
    /// Write records, one per line, from stdin or a file.
    Produce(produce::ProduceArgs),
    /// Read records and print them (kcat-style templates or JSON lines).
    Consume(consume::ConsumeArgs),
    /// Consumer groups: list, describe (lag), reset offsets, delete.
    Group(group::GroupCmd),
    /// The cluster's nodes, controller and partition health.
    Cluster(cluster::ClusterCmd),
    /// Read and change broker and topic configs.
    Config(config::ConfigCmd),
}

/// What a command asks of the process when it ends.
pub enum Outcome {
    Ok,
    /// The command ran but found something wrong (`cluster health`).
    Unhealthy,
}

/// Runs one client command; errors are printed as one line on stderr.
pub fn run(cmd: Command) -> ExitCode {
    let result = match cmd {
        Command::Topic(c) => topic::run(c),
        Command::Produce(a) => produce::run(a),
        Command::Consume(a) => consume::run(a),
        Command::Group(c) => group::run(c),
        Command::Cluster(c) => cluster::run(c),
        Command::Config(c) => config::run(c),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Unhealthy) => ExitCode::from(1),
        Err(e) => {
            // One line: the error and its causes, joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
