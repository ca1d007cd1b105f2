//! `sluice topic`: create, list, describe, alter, delete, add-partitions.

use anyhow::bail;
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};

use crate::config::{alter, describe, AlterOp, Resource};
use crate::connect::{block_on, each_result, key_value, unknown_topic, Conn, Connection};
use crate::output::{print, Table};
use crate::suggest::{did_you_mean, TOPIC_CONFIGS};
use crate::Outcome;

#[derive(Args)]
pub struct TopicCmd {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    action: TopicAction,
}

#[derive(Subcommand)]
enum TopicAction {
    /// Create topics.
    Create {
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions (default: the broker's num.partitions).
        #[arg(short, long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// Replicas of each partition (default: the broker's default.replication.factor).
        #[arg(short, long, default_value_t = -1, allow_negative_numbers = true)]
        replicas: i32,
        /// A topic config, KEY=VALUE (repeatable), e.g. -c cleanup.policy=compact.
        #[arg(short = 'c', long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partition and replica counts.
    List {
        /// Include internal topics (__consumer_offsets).
        #[arg(short, long)]
        internal: bool,
    },
    /// Show a topic's configs that differ from the defaults and, per
    /// partition, leader, replicas, ISR, log start and high watermark.
    Describe {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change a topic's configs (Incremental AlterConfigs).
    Alter {
        name: String,
        /// Set KEY=VALUE (repeatable).
        #[arg(short = 'c', long = "config", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Remove a config, back to the default (repeatable).
        #[arg(short = 'd', long = "delete-config")]
        delete: Vec<String>,
    },
    /// Delete topics and their records.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Add partitions to a topic (keys may then map to other partitions).
    AddPartitions {
        name: String,
        /// How many partitions to add.
        #[arg(short, long)]
        num: usize,
    },
}

pub fn run(cmd: TopicCmd) -> anyhow::Result<Outcome> {
    let conn = cmd.conn.resolve()?;
    match cmd.action {
        TopicAction::Create {
            names,
            partitions,
            replicas,
            configs,
        } => create(&conn, &names, partitions, replicas, &configs),
        TopicAction::List { internal } => list(&conn, internal),
        TopicAction::Describe { names } => describe_topics(&conn, &names),
        TopicAction::Alter { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give -c KEY=VALUE or -d KEY");
            }
            let mut ops: Vec<AlterOp> = set.into_iter().map(|(k, v)| AlterOp::Set(k, v)).collect();
            ops.extend(delete.into_iter().map(AlterOp::Delete));
            alter(&conn, &Resource::Topic(name.clone()), &ops)?;
            println!("altered topic {name}");
            Ok(Outcome::Ok)
        }
        TopicAction::Delete { names } => delete(&conn, &names),
        TopicAction::AddPartitions { name, num } => add_partitions(&conn, &name, num),
    }
}

pub fn options(conn: &Conn) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(conn.timeout))
        .operation_timeout(Some(conn.timeout))
}

fn create(
    conn: &Conn,
    names: &[String],
    partitions: i32,
    replicas: i32,
    configs: &[(String, String)],
) -> anyhow::Result<Outcome> {
    let admin = conn.admin()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            configs.iter().fold(
                NewTopic::new(n, partitions, TopicReplication::Fixed(replicas)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = block_on(admin.create_topics(&topics, &options(conn)))
        .map_err(|e| conn.kafka_error("cannot create topics", e))?;
    each_result(
        results,
        |name| format!("created topic {name}"),
        |name, code| create_error(name, code, configs),
    )
}

fn create_error(name: &str, code: RDKafkaErrorCode, configs: &[(String, String)]) -> String {
    match code {
        RDKafkaErrorCode::TopicAlreadyExists => format!("topic {name} already exists"),
        RDKafkaErrorCode::InvalidConfig => {
            let unknown: Vec<String> = configs
                .iter()
                .filter(|(k, _)| !TOPIC_CONFIGS.contains(&k.as_str()))
                .map(|(k, _)| {
                    format!(
                        "{k:?} is not a topic config{}",
                        did_you_mean(k, TOPIC_CONFIGS.iter().copied())
                    )
                })
                .collect();
            if unknown.is_empty() {
                format!("cannot create topic {name}: the broker refused a config value ({code})")
            } else {
                format!("cannot create topic {name}: {}", unknown.join(", "))
            }
        }
        other => format!("cannot create topic {name}: {other}"),
    }
}

fn list(conn: &Conn, internal: bool) -> anyhow::Result<Outcome> {
    let c = conn.consumer(None)?;
    let md = conn.metadata(&c, None)?;
    let mut topics: Vec<_> = md
        .topics()
        .iter()
        .filter(|t| internal || !t.name().starts_with("__"))
        .collect();
    topics.sort_by_key(|t| t.name());
    let mut table = Table::new(&["Name", "Partitions", "Replicas"]);
    for t in topics {
        let rf = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .max()
            .unwrap_or(0);
        table.row(vec![
            json!(t.name()),
            json!(t.partitions().len()),
            json!(rf),
        ]);
    }
    let json = table.json();
    print(conn.format, &[table], || json);
    Ok(Outcome::Ok)
}

fn describe_topics(conn: &Conn, names: &[String]) -> anyhow::Result<Outcome> {
    let c = conn.consumer(None)?;
    let admin = conn.admin()?;
    let mut tables = vec![];
    let mut docs = vec![];
    for name in names {
        let md = conn.topic_metadata(&c, name)?;
        let topic = &md.topics()[0];
        let configs = describe(conn, &admin, ResourceSpecifier::Topic(name))?;
        let mut non_default = Table::new(&["Config", "Value", "Source"]).titled(format!(
            "Topic {name}: configs that differ from the defaults"
        ));
        for e in configs.entries.iter().filter(|e| !e.is_default) {
            non_default.row(vec![
                json!(e.name),
                json!(if e.is_sensitive {
                    Some("(sensitive)".to_string())
                } else {
                    e.value.clone()
                }),
                json!(format!("{:?}", e.source)),
            ]);
        }
        let mut parts = Table::new(&[
            "Partition",
            "Leader",
            "Replicas",
            "ISR",
            "Log start",
            "High watermark",
        ])
        .titled(format!(
            "Topic {name}: {} partitions",
            topic.partitions().len()
        ));
        let mut ps: Vec<_> = topic.partitions().iter().collect();
        ps.sort_by_key(|p| p.id());
        for p in ps {
            let (low, high) = match c.fetch_watermarks(name, p.id(), conn.timeout) {
                Ok((l, h)) => (json!(l), json!(h)),
                Err(_) => (Value::Null, Value::Null),
            };
            parts.row(vec![
                json!(p.id()),
                if p.leader() >= 0 {
                    json!(p.leader())
                } else {
                    Value::Null
                },
                json!(p.replicas()),
                json!(p.isr()),
                low,
                high,
            ]);
        }
        docs.push(json!({
            "name": name,
            "configs": non_default.rows.iter().map(|r| (crate::output::cell_text(&r[0]), r[1].clone())).collect::<serde_json::Map<_, _>>(),
            "partitions": parts.json(),
        }));
        tables.push(non_default);
        tables.push(parts);
    }
    print(conn.format, &tables, || Value::Array(docs));
    Ok(Outcome::Ok)
}

fn delete(conn: &Conn, names: &[String]) -> anyhow::Result<Outcome> {
    let admin = conn.admin()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = block_on(admin.delete_topics(&names, &options(conn)))
        .map_err(|e| conn.kafka_error("cannot delete topics", e))?;
    each_result(
        results,
        |name| format!("deleted topic {name}"),
        |name, code| match code {
            RDKafkaErrorCode::UnknownTopicOrPartition => unknown_topic(name).to_string(),
            code => format!("cannot delete topic {name}: {code}"),
        },
    )
}

fn add_partitions(conn: &Conn, name: &str, num: usize) -> anyhow::Result<Outcome> {
    if num == 0 {
        bail!("--num must be at least 1");
    }
    let c = conn.consumer(None)?;
    let md = conn.topic_metadata(&c, name)?;
    let total = md.topics()[0].partitions().len() + num;
    let admin = conn.admin()?;
    let results =
        block_on(admin.create_partitions(&[NewPartitions::new(name, total)], &options(conn)))
            .map_err(|e| conn.kafka_error("cannot add partitions", e))?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("cannot add partitions to {name}: {code}");
        }
    }
    println!("topic {name} now has {total} partitions");
    Ok(Outcome::Ok)
}

/// Every partition id of a topic, checking that it exists.
pub fn partitions_of(
    conn: &Conn,
    c: &rdkafka::consumer::BaseConsumer<crate::connect::Quiet>,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let md = conn.topic_metadata(c, topic)?;
    let mut ids: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(unknown_topic(topic));
    }
    Ok(ids)
}
