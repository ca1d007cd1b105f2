//! `sluice config get|set`: broker and topic configs. Reads go through
//! librdkafka's DescribeConfigs; changes are Incremental AlterConfigs
//! (set or delete one key without touching the others), a single
//! `kafka-protocol` request since the `rdkafka` crate only wraps the
//! replace-everything AlterConfigs.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::IncrementalAlterConfigsRequest;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::admin::{AdminClient, ConfigResource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

use crate::connect::{block_on, key_value, unknown_topic, Conn, Connection};
use crate::output::{print, Table};
use crate::suggest::{did_you_mean, TOPIC_CONFIGS};
use crate::topic::options;
use crate::wire::Wire;
use crate::Outcome;

#[derive(Args)]
pub struct ConfigCmd {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Show configs with their values and where each comes from.
    Get {
        #[command(subcommand)]
        target: GetTarget,
    },
    /// Set or delete configs (Incremental AlterConfigs): only the named
    /// keys change.
    Set {
        #[command(subcommand)]
        target: SetTarget,
    },
}

#[derive(Subcommand)]
enum GetTarget {
    /// A topic's configs.
    Topic {
        name: String,
        /// Only these keys.
        keys: Vec<String>,
    },
    /// A broker's configs.
    Broker {
        /// Only these keys.
        keys: Vec<String>,
        /// The node to ask (default: the lowest node id).
        #[arg(long)]
        node: Option<i32>,
    },
}

#[derive(Subcommand)]
enum SetTarget {
    /// Change a topic's configs.
    Topic {
        name: String,
        /// KEY=VALUE pairs to set.
        #[arg(value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Keys to remove, back to the default (repeatable).
        #[arg(short = 'd', long = "delete")]
        delete: Vec<String>,
    },
    /// Change broker configs: cluster-wide, or one node's with --node.
    Broker {
        /// KEY=VALUE pairs to set.
        #[arg(value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Keys to remove (repeatable).
        #[arg(short = 'd', long = "delete")]
        delete: Vec<String>,
        /// Only this node (default: the cluster-wide default of every node).
        #[arg(long)]
        node: Option<i32>,
    },
}

/// What a config change applies to.
pub enum Resource {
    Topic(String),
    /// One node, or the cluster-wide default (`None`).
    Broker(Option<i32>),
}

impl Resource {
    fn kafka_type(&self) -> i8 {
        match self {
            Resource::Topic(_) => 2,
            Resource::Broker(_) => 4,
        }
    }

    fn name(&self) -> String {
        match self {
            Resource::Topic(t) => t.clone(),
            Resource::Broker(Some(id)) => id.to_string(),
            Resource::Broker(None) => String::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Resource::Topic(t) => format!("topic {t}"),
            Resource::Broker(Some(id)) => format!("broker {id}"),
            Resource::Broker(None) => "the cluster-wide broker configs".into(),
        }
    }
}

pub enum AlterOp {
    Set(String, String),
    Delete(String),
}

impl AlterOp {
    fn key(&self) -> &str {
        match self {
            AlterOp::Set(k, _) | AlterOp::Delete(k) => k,
        }
    }
}

pub fn run(cmd: ConfigCmd) -> anyhow::Result<Outcome> {
    let conn = cmd.conn.resolve()?;
    match cmd.action {
        ConfigAction::Get { target } => {
            let admin = conn.admin()?;
            let (res, keys, title) = match &target {
                GetTarget::Topic { name, keys } => (
                    describe(&conn, &admin, ResourceSpecifier::Topic(name))?,
                    keys,
                    format!("topic {name}"),
                ),
                GetTarget::Broker { keys, node } => {
                    let id = match node {
                        Some(id) => *id,
                        None => lowest_node(&conn)?,
                    };
                    (
                        describe(&conn, &admin, ResourceSpecifier::Broker(id))?,
                        keys,
                        format!("broker {id}"),
                    )
                }
            };
            let valid: Vec<&str> = res.entries.iter().map(|e| e.name.as_str()).collect();
            for k in keys {
                if !valid.contains(&k.as_str()) {
                    bail!(
                        "{title} has no config {k:?}{}",
                        did_you_mean(k, valid.iter().copied())
                    );
                }
            }
            let mut table = Table::new(&["Name", "Value", "Source", "Default"]);
            for e in res
                .entries
                .iter()
                .filter(|e| keys.is_empty() || keys.contains(&e.name))
            {
                table.row(vec![
                    json!(e.name),
                    if e.is_sensitive {
                        json!("(sensitive)")
                    } else {
                        json!(e.value)
                    },
                    json!(format!("{:?}", e.source)),
                    json!(e.is_default),
                ]);
            }
            let json = table.json();
            print(conn.format, &[table], || json);
        }
        ConfigAction::Set { target } => {
            let (resource, set, delete) = match target {
                SetTarget::Topic { name, set, delete } => (Resource::Topic(name), set, delete),
                SetTarget::Broker { set, delete, node } => (Resource::Broker(node), set, delete),
            };
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give KEY=VALUE pairs or -d KEY");
            }
            let mut ops: Vec<AlterOp> = set.into_iter().map(|(k, v)| AlterOp::Set(k, v)).collect();
            ops.extend(delete.into_iter().map(AlterOp::Delete));
            alter(&conn, &resource, &ops)?;
            println!("altered {}", resource.describe());
        }
    }
    Ok(Outcome::Ok)
}

fn lowest_node(conn: &Conn) -> anyhow::Result<i32> {
    let c = conn.consumer(None)?;
    let md = conn.metadata(&c, None)?;
    md.brokers()
        .iter()
        .map(|b| b.id())
        .min()
        .ok_or_else(|| anyhow!("the cluster reports no brokers"))
}

/// One resource's configs through DescribeConfigs.
pub fn describe(
    conn: &Conn,
    admin: &AdminClient<DefaultClientContext>,
    spec: ResourceSpecifier,
) -> anyhow::Result<ConfigResource> {
    let what = match &spec {
        ResourceSpecifier::Topic(t) => format!("topic {t}"),
        ResourceSpecifier::Broker(b) => format!("broker {b}"),
        ResourceSpecifier::Group(g) => format!("group {g}"),
    };
    let topic = match &spec {
        ResourceSpecifier::Topic(t) => Some(t.to_string()),
        _ => None,
    };
    let mut results = block_on(admin.describe_configs([&spec], &options(conn)))
        .map_err(|e| conn.kafka_error(&format!("cannot read the configs of {what}"), e))?;
    match results.pop() {
        Some(Ok(r)) => Ok(r),
        Some(Err(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) if topic.is_some() => {
            Err(unknown_topic(&topic.unwrap()))
        }
        Some(Err(code)) => bail!("cannot read the configs of {what}: {code}"),
        None => bail!("cannot read the configs of {what}: no answer"),
    }
}

/// Applies `ops` to `resource` in one Incremental AlterConfigs request.
pub fn alter(conn: &Conn, resource: &Resource, ops: &[AlterOp]) -> anyhow::Result<()> {
    conn.check_reachable()?;
    // A node's own configs go to that node, as Kafka requires.
    let mut wire = match resource {
        Resource::Broker(Some(id)) => {
            let c = conn.consumer(None)?;
            let md = conn.metadata(&c, None)?;
            let b = md
                .brokers()
                .iter()
                .find(|b| b.id() == *id)
                .ok_or_else(|| anyhow!("the cluster has no node {id}"))?;
            Wire::connect_any(conn, [format!("{}:{}", b.host(), b.port()).as_str()])?
        }
        _ => Wire::connect(conn)?,
    };
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource.kafka_type())
            .with_resource_name(StrBytes::from_string(resource.name()))
            .with_configs(
                ops.iter()
                    .map(|op| match op {
                        AlterOp::Set(k, v) => AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_string(v.clone()))),
                        AlterOp::Delete(k) => AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_config_operation(1),
                    })
                    .collect(),
            ),
    ]);
    let (_, resp) = wire.send(&req)?;
    let Some(r) = resp.responses.first() else {
        bail!("the broker did not answer for {}", resource.describe());
    };
    let Some(err) = ResponseError::try_from_code(r.error_code) else {
        return Ok(());
    };
    if err == ResponseError::UnknownTopicOrPartition {
        if let Resource::Topic(t) = resource {
            return Err(unknown_topic(t));
        }
    }
    let detail = r
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| err.to_string());
    let mut msg = format!("cannot change {}: {detail}", resource.describe());
    if err == ResponseError::InvalidConfig {
        msg.push_str(&suggest_keys(conn, resource, ops));
    }
    Err(anyhow!(msg))
}

/// Suggestions for keys the resource does not have: its own config names
/// (DescribeConfigs), and Kafka's topic config names for topics.
fn suggest_keys(conn: &Conn, resource: &Resource, ops: &[AlterOp]) -> String {
    let mut valid: Vec<String> = match resource {
        Resource::Topic(_) => TOPIC_CONFIGS.iter().map(|s| s.to_string()).collect(),
        Resource::Broker(_) => vec![],
    };
    if let Ok(admin) = conn.admin() {
        let described = match resource {
            Resource::Topic(t) => describe(conn, &admin, ResourceSpecifier::Topic(t)),
            Resource::Broker(id) => match id.map(Ok).unwrap_or_else(|| lowest_node(conn)) {
                Ok(id) => describe(conn, &admin, ResourceSpecifier::Broker(id)),
                Err(e) => Err(e),
            },
        };
        if let Ok(r) = described {
            valid.extend(r.entries.into_iter().map(|e| e.name));
        }
    }
    let mut out = String::new();
    for op in ops {
        if !valid.iter().any(|v| v == op.key()) {
            out.push_str(
                &did_you_mean(op.key(), valid.iter().map(String::as_str)).replacen(
                    "; did you mean",
                    &format!("; {} is not a config here, did you mean", op.key()),
                    1,
                ),
            );
        }
    }
    out
}
