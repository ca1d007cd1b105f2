//! `sluice consume`: records printed through a template or as JSON lines,
//! read by librdkafka's consumer, alone (assigned partitions, no commits)
//! or in a group (subscribed, offsets committed).

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::connect::{Conn, Connection, Quiet};
use crate::output::Format;
use crate::template::{Record, Template};
use crate::topic::partitions_of;
use crate::Outcome;

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: Connection,
    /// Topics to read.
    #[arg(required = true)]
    topics: Vec<String>,
    /// Read as a member of this consumer group, committing its offsets.
    #[arg(short, long)]
    group: Option<String>,
    /// Where to start: beginning, end, stored (a group's committed
    /// offset), N (an offset), -N (N before the end of each partition) or
    /// @TIME (the first record at or after TIME: ms since the epoch or
    /// RFC 3339). With --group: beginning or end, where a partition without
    /// a committed offset starts.
    #[arg(short, long, default_value = "beginning", allow_hyphen_values = true)]
    offset: String,
    /// Only these partitions (repeatable; not with --group).
    #[arg(short, long)]
    partition: Vec<i32>,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Stop at the end of every partition instead of waiting for more.
    #[arg(short = 'e', long = "exit")]
    exit_at_end: bool,
    /// Output template (kcat's): %t %p %o %k %v %T %h %K %S %%, \n \t.
    #[arg(short, long, default_value = "%v\\n")]
    format: String,
    /// read_committed (records of aborted transactions hidden, the
    /// default) or read_uncommitted.
    #[arg(long, default_value = "read_committed", value_parser = ["read_committed", "read_uncommitted"])]
    isolation: String,
}

/// Where reading starts.
#[derive(Clone, Debug, PartialEq)]
enum Start {
    At(Offset),
    /// Milliseconds since the epoch.
    Time(i64),
}

fn parse_start(s: &str) -> anyhow::Result<Start> {
    Ok(match s {
        "beginning" | "start" | "earliest" => Start::At(Offset::Beginning),
        "end" | "latest" => Start::At(Offset::End),
        "stored" | "committed" => Start::At(Offset::Stored),
        _ => {
            if let Some(t) = s.strip_prefix('@').or_else(|| s.strip_prefix("s@")) {
                return Ok(Start::Time(parse_time(t)?));
            }
            match s.parse::<i64>() {
                Ok(n) if n >= 0 => Start::At(Offset::Offset(n)),
                // librdkafka counts back from a base near i64::MIN.
                Ok(n) => Start::At(Offset::OffsetTail(
                    n.checked_neg().unwrap_or(i64::MAX).min(1 << 60),
                )),
                Err(_) => bail!("-o {s:?}: expected beginning, end, stored, N, -N or @TIME"),
            }
        }
    })
}

/// Milliseconds since the epoch from ms or an RFC 3339 time (a date alone
/// is midnight UTC).
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis());
    }
    bail!("{s:?} is not a time: give ms since the epoch or RFC 3339 (2026-12-01T10:00:00Z)")
}

pub fn run(a: ConsumeArgs) -> anyhow::Result<Outcome> {
    let conn = a.conn.resolve()?;
    let template = Template::parse(&a.format)?;
    let start = parse_start(&a.offset)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while closing ends the process at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let mut out = Output {
        w: BufWriter::new(std::io::stdout().lock()),
        template,
        json: conn.format == Format::Json,
        printed: 0,
        limit: a.count,
    };
    if let Some(group) = &a.group {
        if !a.partition.is_empty() {
            bail!("-p picks partitions by hand; a group's members get theirs assigned (drop -p or --group)");
        }
        if a.exit_at_end && a.topics.len() > 1 {
            bail!("with --group, -e takes one topic (run one command per topic)");
        }
        let reset = match start {
            Start::At(Offset::Beginning | Offset::Stored) => "earliest",
            Start::At(Offset::End) => "latest",
            _ => bail!("with --group, -o takes beginning or end (where a partition without a committed offset starts); move a group's offsets with `sluice group reset-offsets`"),
        };
        let c = consumer(&conn, &a, Some((group, reset)))?;
        for t in &a.topics {
            partitions_of(&conn, &c, t)?;
        }
        let topics: Vec<&str> = a.topics.iter().map(String::as_str).collect();
        c.subscribe(&topics)
            .map_err(|e| anyhow!("cannot subscribe: {e}"))?;
        let result = read(&c, &mut out, a.exit_at_end, &stop);
        if out.printed > 0 && result.is_ok() {
            match c.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => eprintln!("warning: cannot commit the group's offsets: {e}"),
            }
        }
        result?;
    } else {
        if matches!(start, Start::At(Offset::Stored)) {
            bail!("-o stored reads a group's committed offsets; give --group");
        }
        // With -e, one topic at a time: librdkafka reports the end of a
        // partition by number only.
        let runs: Vec<Vec<String>> = if a.exit_at_end {
            a.topics.iter().map(|t| vec![t.clone()]).collect()
        } else {
            vec![a.topics.clone()]
        };
        for topics in runs {
            let c = consumer(&conn, &a, None)?;
            let mut tpl = TopicPartitionList::new();
            for t in &topics {
                let all = partitions_of(&conn, &c, t)?;
                let chosen: Vec<i32> = if a.partition.is_empty() {
                    all.clone()
                } else {
                    if let Some(p) = a.partition.iter().find(|p| !all.contains(p)) {
                        bail!("topic {t} has no partition {p} (it has {})", all.len());
                    }
                    a.partition.clone()
                };
                for p in chosen {
                    let offset = match start {
                        Start::At(o) => o,
                        Start::Time(ms) => Offset::Offset(ms),
                    };
                    tpl.add_partition_offset(t, p, offset)?;
                }
            }
            if let Start::Time(_) = start {
                tpl = c
                    .offsets_for_times(tpl, conn.timeout)
                    .map_err(|e| conn.kafka_error("cannot look up offsets by time", e))?;
                // No record at or after the time: start at the end.
                for e in tpl.clone().elements() {
                    if matches!(e.offset(), Offset::Invalid) || e.offset().to_raw() == Some(-1) {
                        tpl.set_partition_offset(e.topic(), e.partition(), Offset::End)?;
                    }
                }
            }
            c.assign(&tpl)
                .map_err(|e| anyhow!("cannot assign partitions: {e}"))?;
            read(&c, &mut out, a.exit_at_end, &stop)?;
            if out.done() || stop.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    out.w.flush().ok();
    Ok(Outcome::Ok)
}

fn consumer(
    conn: &Conn,
    a: &ConsumeArgs,
    group: Option<(&str, &str)>,
) -> anyhow::Result<BaseConsumer<Quiet>> {
    conn.check_reachable()?;
    let mut c = conn.config();
    c.set("allow.auto.create.topics", "false")
        .set("isolation.level", &a.isolation)
        .set(
            "enable.partition.eof",
            if a.exit_at_end { "true" } else { "false" },
        );
    match group {
        Some((g, reset)) => {
            c.set("group.id", g)
                .set("auto.offset.reset", reset)
                .set("enable.auto.commit", "true");
        }
        None => {
            c.set("enable.auto.commit", "false")
                .set("group.id", "sluice-cli-unused");
        }
    }
    c.create_with_context(Quiet)
        .map_err(|e| anyhow!("cannot configure the consumer: {e}"))
}

struct Output<W: Write> {
    w: W,
    template: Template,
    json: bool,
    printed: u64,
    limit: Option<u64>,
}

impl<W: Write> Output<W> {
    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    fn write(&mut self, m: &BorrowedMessage) -> std::io::Result<()> {
        let headers: Vec<(&str, Option<&[u8]>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        if self.json {
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let line = json!({
                "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
                "timestamp": m.timestamp().to_millis(),
                "key": text(m.key()),
                "value": text(m.payload()),
                "headers": headers.iter().map(|(k, v)| json!({"key": k, "value": text(*v)})).collect::<Vec<_>>(),
            });
            writeln!(self.w, "{line}")?;
        } else {
            let mut buf = Vec::with_capacity(m.payload_len() + 16);
            self.template.render(
                &Record {
                    topic: m.topic(),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key(),
                    value: m.payload(),
                    headers,
                },
                &mut buf,
            );
            self.w.write_all(&buf)?;
        }
        self.printed += 1;
        Ok(())
    }
}

/// Reads until the count is reached, every partition is at its end (with
/// `-e`), or Ctrl-C.
fn read<W: Write>(
    c: &BaseConsumer<Quiet>,
    out: &mut Output<W>,
    exit_at_end: bool,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // Partitions (by number: what librdkafka's end-of-partition event says)
    // that reached their end and got nothing since.
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    while !out.done() && !stop.load(Ordering::SeqCst) {
        match c.poll(Duration::from_millis(100)) {
            None => {
                out.w.flush().or_else(ignore_broken_pipe)?;
            }
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                if let Err(e) = out.write(&m) {
                    return ignore_broken_pipe(e);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if exit_at_end {
                    let assigned = c.assignment().map_err(|e| anyhow!("{e}"))?;
                    let all: BTreeSet<i32> =
                        assigned.elements().iter().map(|e| e.partition()).collect();
                    if !all.is_empty() && all.is_subset(&at_end) {
                        break;
                    }
                }
            }
            // librdkafka recovers from transport errors on its own; only
            // what it cannot recover from ends the command.
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(anyhow!("{e}")).context("cannot read records")
            }
            Some(Err(KafkaError::MessageConsumption(code)))
                if matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                ) =>
            {
                return Err(anyhow!("{code}")).context("cannot read records")
            }
            Some(Err(_)) => {}
        }
    }
    out.w.flush().or_else(ignore_broken_pipe)
}

/// `sluice consume | head` ends quietly when the reader goes away.
fn ignore_broken_pipe(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    Err(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_as_kcat_reads_them() {
        assert_eq!(
            parse_start("beginning").unwrap(),
            Start::At(Offset::Beginning)
        );
        assert_eq!(parse_start("end").unwrap(), Start::At(Offset::End));
        assert_eq!(parse_start("42").unwrap(), Start::At(Offset::Offset(42)));
        assert_eq!(
            parse_start("-10").unwrap(),
            Start::At(Offset::OffsetTail(10))
        );
        assert_eq!(parse_start("@1000").unwrap(), Start::Time(1000));
        assert_eq!(
            parse_start("@2026-12-01T00:00:00Z").unwrap(),
            Start::Time(1_796_083_200_000)
        );
        assert_eq!(
            parse_start("@2026-12-01").unwrap(),
            Start::Time(1_796_083_200_000)
        );
        assert!(parse_start("soon").is_err());
        assert!(parse_start("@yesterday").is_err());
    }
}
