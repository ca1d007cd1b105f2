//! `sluice produce`: one record per input line, through librdkafka's
//! producer (idempotent unless acks is not `all`), with a progress bar when
//! a file of known size is read on a terminal.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::connect::{key_value, unknown_topic, Conn, Connection};
use crate::Outcome;

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Connection,
    /// The topic to write to.
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value (lines without
    /// it get no key).
    #[arg(short = 'K', long = "key-separator", value_name = "SEP")]
    key_separator: Option<String>,
    /// A header on every record, KEY=VALUE (repeatable).
    #[arg(short = 'H', long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Write every record to this partition (default: by key, as Kafka's
    /// clients do; records without a key are spread).
    #[arg(short, long)]
    partition: Option<i32>,
    /// Acknowledgements to wait for: all, 1 or 0.
    #[arg(long, default_value = "all", allow_hyphen_values = true, value_parser = ["all", "-1", "1", "0"])]
    acks: String,
    /// Compression of record batches.
    #[arg(short = 'z', long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// Turn off the idempotent producer (on by default with acks=all:
    /// retries never duplicate or reorder records).
    #[arg(long)]
    no_idempotence: bool,
    /// How long a record may take to be acknowledged before it counts as
    /// failed, in seconds.
    #[arg(long, default_value_t = 30.0)]
    delivery_timeout: f64,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Delivery reports: how many records were acknowledged, and which failed.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    failed: Mutex<Vec<(u64, String)>>,
    /// Records refused as too large, by line, with their key, value and
    /// partition: librdkafka fails a whole batch when it is too large, so
    /// each is sent again alone to find the ones that really are.
    too_large: Mutex<Vec<Resend>>,
    /// Set while resending: a too-large record then fails for good.
    resending: AtomicBool,
}

type Resend = (u64, Option<Vec<u8>>, Option<Vec<u8>>, i32);

impl ClientContext for Tally {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl ProducerContext for Tally {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, line: Box<u64>) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), m))
                if !self.resending.load(Ordering::Relaxed) =>
            {
                self.too_large.lock().unwrap().push((
                    *line,
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    m.partition(),
                ));
            }
            Err((e, _)) => self.failed.lock().unwrap().push((*line, e.to_string())),
        }
    }
}

pub fn run(a: ProduceArgs) -> anyhow::Result<Outcome> {
    let conn = a.conn.resolve()?;
    let delivery_timeout = crate::connect::seconds("--delivery-timeout", a.delivery_timeout)?;
    conn.check_reachable()?;
    let idempotent = !a.no_idempotence && matches!(a.acks.as_str(), "all" | "-1");
    let mut config = conn.config();
    config
        .set("acks", &a.acks)
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set(
            "compression.type",
            format!("{:?}", a.compression).to_lowercase(),
        )
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        )
        .set("linger.ms", "5")
        // Keys land where Kafka's Java client (and Sluice's docs) put them:
        // murmur2, not librdkafka's default CRC32.
        .set("partitioner", "murmur2_random");
    let producer: BaseProducer<Tally> = config
        .create_with_context(Tally::default())
        .map_err(|e| anyhow!("cannot configure the producer: {e}"))?;
    let partitions = wait_for_topic(&conn, &producer, &a.topic)?;
    if let Some(p) = a.partition {
        if p < 0 || p as usize >= partitions {
            bail!(
                "topic {} has {partitions} partitions (0 to {}); -p {p} is not one of them",
                a.topic,
                partitions - 1
            );
        }
    }

    let (input, size): (Box<dyn Read>, Option<u64>) = match &a.file {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = f.metadata().ok().map(|m| m.len());
            (Box::new(f), size)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let terminal = std::io::stderr().is_terminal();
    let bar = match size {
        Some(size) if terminal => {
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let mut reader = BufReader::with_capacity(1 << 16, bar.wrap_read(input));
    let mut headers = OwnedHeaders::new();
    for (k, v) in &a.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let started = Instant::now();
    let mut line = Vec::new();
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut last_tick = Instant::now();
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .context("cannot read the input")?
            == 0
        {
            break;
        }
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        sent += 1;
        bytes += line.len() as u64;
        let (key, value) = split_key(&line, a.key_separator.as_deref().map(str::as_bytes));
        let mut record: BaseRecord<[u8], [u8], Box<u64>> =
            BaseRecord::with_opaque_to(&a.topic, Box::new(sent))
                .payload(value)
                .headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = a.partition {
            record = record.partition(p);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    producer
                        .context()
                        .failed
                        .lock()
                        .unwrap()
                        .push((sent, e.to_string()));
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
        if last_tick.elapsed() > Duration::from_millis(100) {
            last_tick = Instant::now();
            bar.set_message(format!(
                "{} records",
                producer.context().acked.load(Ordering::Relaxed)
            ));
        }
    }
    let mut flushed = producer.flush(delivery_timeout + Duration::from_secs(5));
    let tally = producer.context();
    tally.resending.store(true, Ordering::Relaxed);
    let resend = std::mem::take(&mut *tally.too_large.lock().unwrap());
    for (line, key, value, partition) in resend {
        let mut record: BaseRecord<[u8], [u8], Box<u64>> =
            BaseRecord::with_opaque_to(&a.topic, Box::new(line))
                .partition(partition)
                .headers(headers.clone());
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = value.as_deref() {
            record = record.payload(v);
        }
        if let Err((e, _)) = producer.send(record) {
            tally.failed.lock().unwrap().push((line, e.to_string()));
        }
        flushed = producer.flush(delivery_timeout + Duration::from_secs(5));
    }
    bar.finish_and_clear();
    let acked = tally.acked.load(Ordering::Relaxed);
    let mut failed = tally.failed.lock().unwrap().clone();
    failed.sort();
    if failed.is_empty() && acked < sent {
        let missing = sent - acked;
        let why = flushed
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no acknowledgement".into());
        bail!("{missing} of {sent} records were not acknowledged ({why})");
    }
    if !failed.is_empty() {
        let shown: Vec<String> = failed
            .iter()
            .take(5)
            .map(|(line, e)| format!("line {line}: {e}"))
            .collect();
        let more = if failed.len() > 5 {
            format!(" and {} more", failed.len() - 5)
        } else {
            String::new()
        };
        bail!(
            "{} of {sent} records to {} were not delivered: {}{more}",
            failed.len(),
            a.topic,
            shown.join("; ")
        );
    }
    if terminal {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "produced {acked} records ({bytes} bytes) to {} in {secs:.2} s ({:.0} records/s)",
            a.topic,
            acked as f64 / secs
        );
    }
    Ok(Outcome::Ok)
}

/// Key and value of a line: split at the first separator, or no key.
fn split_key<'a>(line: &'a [u8], sep: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

/// The topic's partition count, once it exists. The producer's metadata
/// request lets a broker that creates topics on first use do so; a topic
/// still missing after that is an error rather than records that wait.
fn wait_for_topic(
    conn: &Conn,
    producer: &BaseProducer<Tally>,
    topic: &str,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + conn.timeout;
    loop {
        let md = producer
            .client()
            .fetch_metadata(Some(topic), conn.timeout)
            .map_err(|e| conn.kafka_error("cannot read the cluster's metadata", e))?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t.map(|t| (t.error().map(RDKafkaErrorCode::from), t.partitions().len())) {
            Some((None, n)) if n > 0 => return Ok(n),
            Some((Some(RDKafkaErrorCode::UnknownTopicOrPartition), _)) | None => {
                return Err(anyhow!(
                    "{} (this broker does not create topics on first use)",
                    unknown_topic(topic)
                ))
            }
            Some((Some(RDKafkaErrorCode::InvalidTopic), _)) => {
                bail!("{topic:?} is not a valid topic name")
            }
            Some((Some(e), _)) if Instant::now() > deadline => bail!("topic {topic}: {e}"),
            _ if Instant::now() > deadline => bail!("topic {topic} has no partitions yet"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split_key(b"user1:hello:x", Some(b":")),
            (Some(&b"user1"[..]), &b"hello:x"[..])
        );
        assert_eq!(split_key(b"no-key", Some(b":")), (None, &b"no-key"[..]));
        assert_eq!(
            split_key(b"a::b", Some(b"::")),
            (Some(&b"a"[..]), &b"b"[..])
        );
        assert_eq!(split_key(b"x", None), (None, &b"x"[..]));
    }
}
