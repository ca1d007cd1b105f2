//! `sluice group`: list, describe (members, assignments, committed offsets
//! and lag), reset-offsets, delete.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::connect::{block_on, each_result, Conn, Connection, Quiet};
use crate::consume::parse_time;
use crate::output::{print, Table};
use crate::topic::{options, partitions_of};
use crate::Outcome;

#[derive(Args)]
pub struct GroupCmd {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    action: GroupAction,
}

#[derive(Subcommand)]
enum GroupAction {
    /// List consumer groups with their state and member count.
    List,
    /// A group's state, members and their partitions, committed offsets,
    /// log end and lag.
    Describe { group: String },
    /// Move a group's committed offsets. Prints the plan; --execute applies
    /// it. Refused while the group has members.
    ResetOffsets(ResetArgs),
    /// Delete groups and their committed offsets (only without members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(Args)]
struct ResetArgs {
    group: String,
    /// Topics to reset (repeatable; default: every topic the group has
    /// committed offsets for).
    #[arg(short, long)]
    topic: Vec<String>,
    #[command(flatten)]
    to: ResetTo,
    /// Apply the plan (without it, the plan is only printed).
    #[arg(long)]
    execute: bool,
    /// Only print the plan (the default).
    #[arg(long, conflicts_with = "execute")]
    dry_run: bool,
}

/// Where the offsets go: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct ResetTo {
    /// To the first offset of each partition (log start).
    #[arg(long)]
    to_earliest: bool,
    /// To the end of each partition (nothing left to read).
    #[arg(long)]
    to_latest: bool,
    /// To this offset (kept within each partition's log start and end).
    #[arg(long)]
    to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339 or ms).
    #[arg(long)]
    to_datetime: Option<String>,
    /// Forward (positive) or back (negative) from the committed offset.
    #[arg(long, allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

pub fn run(cmd: GroupCmd) -> anyhow::Result<Outcome> {
    let conn = cmd.conn.resolve()?;
    match cmd.action {
        GroupAction::List => list(&conn),
        GroupAction::Describe { group } => describe(&conn, &group),
        GroupAction::ResetOffsets(a) => reset(&conn, a),
        GroupAction::Delete { groups } => delete(&conn, &groups),
    }
}

fn list(conn: &Conn) -> anyhow::Result<Outcome> {
    let c = conn.consumer(None)?;
    let groups = c
        .fetch_group_list(None, conn.timeout)
        .map_err(|e| conn.kafka_error("cannot list groups", e))?;
    let mut table = Table::new(&["Group", "State", "Protocol type", "Members"]);
    let mut all: Vec<&GroupInfo> = groups.groups().iter().collect();
    all.sort_by_key(|g| g.name());
    for g in all {
        table.row(vec![
            json!(g.name()),
            json!(g.state()),
            json!(g.protocol_type()),
            json!(g.members().len()),
        ]);
    }
    let json = table.json();
    print(conn.format, &[table], || json);
    Ok(Outcome::Ok)
}

/// A group's state and, per member, its id, client, host and partitions.
struct GroupState {
    state: String,
    protocol: String,
    members: Vec<Member>,
}

struct Member {
    id: String,
    client_id: String,
    host: String,
    partitions: Vec<(String, i32)>,
}

fn group_state(conn: &Conn, c: &BaseConsumer<Quiet>, group: &str) -> anyhow::Result<GroupState> {
    let list = c
        .fetch_group_list(Some(group), conn.timeout)
        .map_err(|e| conn.kafka_error(&format!("cannot describe group {group}"), e))?;
    // A group the coordinator does not know is not listed: Dead, as
    // DescribeGroups reports it.
    let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupState {
            state: "Dead".into(),
            protocol: String::new(),
            members: vec![],
        });
    };
    let members = g
        .members()
        .iter()
        .map(|m| Member {
            id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            host: m.client_host().to_string(),
            partitions: m.assignment().map(decode_assignment).unwrap_or_default(),
        })
        .collect();
    Ok(GroupState {
        state: g.state().to_string(),
        protocol: g.protocol().to_string(),
        members,
    })
}

/// The partitions of a consumer-protocol assignment (empty when it is not
/// one, as with other protocol types).
fn decode_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    if bytes.len() < 2 {
        return vec![];
    }
    let mut b = Bytes::copy_from_slice(bytes);
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let _ = bytes::Buf::get_i16(&mut b);
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) else {
        return vec![];
    };
    a.assigned_partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| (tp.topic.to_string(), *p))
        })
        .collect()
}

/// One partition's committed offset and ends.
struct Position {
    committed: Option<i64>,
    log_start: i64,
    log_end: i64,
}

/// Committed offsets of `group` on `topics` (every topic when empty, kept
/// only where it has an offset), with each partition's log start and end.
fn positions(
    conn: &Conn,
    group: &str,
    topics: &[String],
) -> anyhow::Result<BTreeMap<(String, i32), Position>> {
    let c = conn.consumer(Some(group))?;
    let mut tpl = TopicPartitionList::new();
    let explicit = !topics.is_empty();
    if explicit {
        for t in topics {
            for p in partitions_of(conn, &c, t)? {
                tpl.add_partition(t, p);
            }
        }
    } else {
        let md = conn.metadata(&c, None)?;
        for t in md.topics().iter().filter(|t| !t.name().starts_with("__")) {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = if tpl.count() == 0 {
        tpl
    } else {
        c.committed_offsets(tpl, conn.timeout).map_err(|e| {
            conn.kafka_error(&format!("cannot read the offsets of group {group}"), e)
        })?
    };
    // Every partition of a topic the group has offsets for: a partition
    // it has not committed on yet still has records to read.
    let topics_with_offsets: std::collections::BTreeSet<String> = committed
        .elements()
        .iter()
        .filter(|e| matches!(e.offset(), Offset::Offset(_)))
        .map(|e| e.topic().to_string())
        .collect();
    let mut out = BTreeMap::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        if !explicit && !topics_with_offsets.contains(e.topic()) {
            continue;
        }
        let (log_start, log_end) = c
            .fetch_watermarks(e.topic(), e.partition(), conn.timeout)
            .map_err(|err| {
                conn.kafka_error(
                    &format!("cannot read the ends of {}/{}", e.topic(), e.partition()),
                    err,
                )
            })?;
        out.insert(
            (e.topic().to_string(), e.partition()),
            Position {
                committed: offset,
                log_start,
                log_end,
            },
        );
    }
    Ok(out)
}

fn describe(conn: &Conn, group: &str) -> anyhow::Result<Outcome> {
    let c = conn.consumer(None)?;
    let state = group_state(conn, &c, group)?;
    let mut assigned: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in &state.members {
        for tp in &m.partitions {
            assigned.insert(tp.clone(), m.client_id.clone());
        }
    }
    let mut pos = positions(conn, group, &[])?;
    if state.state == "Dead" && state.members.is_empty() && pos.is_empty() {
        bail!("unknown group {group:?}; `sluice group list` shows the groups");
    }
    // Assigned partitions without a committed offset yet.
    let missing: Vec<String> = assigned
        .keys()
        .filter(|k| !pos.contains_key(*k))
        .map(|(t, _)| t.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        for (k, v) in positions(conn, group, &missing)? {
            if assigned.contains_key(&k) {
                pos.insert(k, v);
            }
        }
    }
    let mut summary = Table::new(&["Group", "State", "Protocol", "Members", "Total lag"]);
    let total_lag: i64 = pos.values().map(lag).sum();
    summary.row(vec![
        json!(group),
        json!(state.state),
        json!(state.protocol),
        json!(state.members.len()),
        json!(total_lag),
    ]);
    let mut members = Table::new(&["Member", "Client", "Host", "Partitions"]).titled("Members");
    for m in &state.members {
        let parts: Vec<String> = m
            .partitions
            .iter()
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        members.row(vec![
            json!(m.id),
            json!(m.client_id),
            json!(m.host),
            json!(parts),
        ]);
    }
    let mut offsets = Table::new(&[
        "Topic",
        "Partition",
        "Committed",
        "Log end",
        "Lag",
        "Member",
    ])
    .titled("Offsets");
    for ((t, p), ps) in &pos {
        offsets.row(vec![
            json!(t),
            json!(p),
            json!(ps.committed),
            json!(ps.log_end),
            json!(lag(ps)),
            json!(assigned.get(&(t.clone(), *p))),
        ]);
    }
    let doc = json!({
        "group": group,
        "state": state.state,
        "protocol": state.protocol,
        "total_lag": total_lag,
        "members": members.json(),
        "offsets": offsets.json(),
    });
    print(conn.format, &[summary, members, offsets], || doc);
    Ok(Outcome::Ok)
}

/// Records between the committed offset (or the log start without one)
/// and the log end.
fn lag(p: &Position) -> i64 {
    (p.log_end - p.committed.unwrap_or(p.log_start).max(p.log_start)).max(0)
}

fn reset(conn: &Conn, a: ResetArgs) -> anyhow::Result<Outcome> {
    let c = conn.consumer(None)?;
    let state = group_state(conn, &c, &a.group)?;
    if !state.members.is_empty() || !matches!(state.state.as_str(), "Empty" | "Dead") {
        bail!(
            "group {} has {} active member(s) (state {}); stop its consumers first, then reset its offsets",
            a.group,
            state.members.len(),
            state.state
        );
    }
    let pos = positions(conn, &a.group, &a.topic)?;
    if pos.is_empty() {
        bail!(
            "group {} has no committed offsets; name the topics to reset with --topic",
            a.group
        );
    }
    let by_time = match &a.to.to_datetime {
        Some(t) => {
            let ms = parse_time(t)?;
            let mut tpl = TopicPartitionList::new();
            for (t, p) in pos.keys() {
                tpl.add_partition_offset(t, *p, Offset::Offset(ms))?;
            }
            let found = c
                .offsets_for_times(tpl, conn.timeout)
                .map_err(|e| conn.kafka_error("cannot look up offsets by time", e))?;
            found
                .elements()
                .iter()
                .map(|e| {
                    (
                        (e.topic().to_string(), e.partition()),
                        e.offset().to_raw().filter(|o| *o >= 0),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        }
        None => BTreeMap::new(),
    };
    let mut plan = Table::new(&[
        "Topic",
        "Partition",
        "Current",
        "New",
        "Log start",
        "Log end",
    ]);
    let mut tpl = TopicPartitionList::new();
    for ((t, p), ps) in &pos {
        let target = if a.to.to_earliest {
            ps.log_start
        } else if a.to.to_latest {
            ps.log_end
        } else if let Some(o) = a.to.to_offset {
            o
        } else if let Some(n) = a.to.shift_by {
            ps.committed.unwrap_or(ps.log_start).saturating_add(n)
        } else {
            by_time
                .get(&(t.clone(), *p))
                .copied()
                .flatten()
                .unwrap_or(ps.log_end)
        };
        let new = target.clamp(ps.log_start, ps.log_end.max(ps.log_start));
        plan.row(vec![
            json!(t),
            json!(p),
            json!(ps.committed),
            json!(new),
            json!(ps.log_start),
            json!(ps.log_end),
        ]);
        tpl.add_partition_offset(t, *p, Offset::Offset(new))?;
    }
    if a.execute {
        let g = conn.consumer(Some(&a.group))?;
        g.commit(&tpl, CommitMode::Sync).map_err(|e| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress) => anyhow!(
                "group {} gained members while resetting; stop its consumers first, then reset its offsets",
                a.group
            ),
            _ => conn.kafka_error(&format!("cannot commit the new offsets of group {}", a.group), e),
        })?;
    }
    let json = plan.json();
    let title = if a.execute {
        format!("Offsets of group {} reset", a.group)
    } else {
        format!("Plan for group {} (dry run; --execute applies it)", a.group)
    };
    let plan = plan.titled(title);
    let executed = a.execute;
    print(
        conn.format,
        &[plan],
        || json!({"executed": executed, "partitions": json}),
    );
    Ok(Outcome::Ok)
}

fn delete(conn: &Conn, groups: &[String]) -> anyhow::Result<Outcome> {
    let admin = conn.admin()?;
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let results = block_on(admin.delete_groups(&names, &options(conn)))
        .map_err(|e| conn.kafka_error("cannot delete groups", e))?;
    each_result(
        results,
        |g| format!("deleted group {g}"),
        |g, code| match code {
            RDKafkaErrorCode::NonEmptyGroup => {
                format!("group {g} has active members; stop its consumers first")
            }
            RDKafkaErrorCode::GroupIdNotFound => format!("unknown group {g:?}"),
            code => format!("cannot delete group {g}: {code}"),
        },
    )
}
