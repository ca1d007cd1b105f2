//! Load through librdkafka: producers, consumers, and both at once for
//! end-to-end latency. Every loop ends by count or by time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::report::{histogram, incompressible, Latency, Point, Report};
use crate::{Profile, Target};

#[derive(Args, Clone)]
pub struct ProducerSettings {
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// acks: 0, 1 or all (-1).
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// compression.type of the producer: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// linger.ms of the producer.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// batch.size of the producer, in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: usize,
    /// Turn on enable.idempotence.
    #[arg(long)]
    pub idempotent: bool,
    /// Produce in transactions of this many records (each producer with
    /// its own transactional.id); 0: no transactions.
    #[arg(long, default_value_t = 0)]
    pub transaction_records: u64,
}

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub producer: ProducerSettings,
    /// Records to send in all (the run also ends after --duration-s).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Longest the run may take, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    /// Records per second over all producers; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Producer instances, each on its own thread.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Records to read in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Consumer instances, each on its own thread.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Join this consumer group (subscribe) instead of reading every
    /// partition from its start (assign).
    #[arg(long)]
    pub group: Option<String>,
    /// Longest the run may take, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub duration_s: f64,
}

#[derive(Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub producer: ProducerSettings,
    /// Records per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Width of the windows of the latency series (`series` in the
    /// report), in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub window_ms: f64,
}

fn loopback_only(bootstrap: &str) -> anyhow::Result<()> {
    for server in bootstrap.split(',') {
        let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ok = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !ok {
            bail!("{server} is not a loopback address; sluice-bench only loads loopback brokers");
        }
    }
    Ok(())
}

/// Creates the topic when asked to; an existing one is an error (a
/// benchmark must know what it writes to).
fn prepare(t: &Target) -> anyhow::Result<()> {
    loopback_only(&t.bootstrap)?;
    let Some(partitions) = t.create_partitions else {
        return Ok(());
    };
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &t.bootstrap);
    // The -X settings (security above all) are the admin client's too.
    for (k, v) in &t.client_configs {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = config.create().context("admin client")?;
    let mut topic = NewTopic::new(
        &t.topic,
        partitions,
        TopicReplication::Fixed(t.replication_factor),
    );
    for (k, v) in &t.topic_configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics([&topic], &opts))?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }
    // Every partition must have a leader before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(&t.topic), Duration::from_secs(5))?;
        let ready = md.topics().iter().any(|tm| {
            tm.partitions().len() == partitions as usize
                && tm.partitions().iter().all(|p| p.leader() >= 0)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("topic {} has no leader for every partition", t.topic);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn producer_config(t: &Target, p: &ProducerSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &t.bootstrap)
        .set("acks", &p.acks)
        .set("compression.type", &p.compression)
        .set("linger.ms", p.linger_ms.to_string())
        .set("batch.size", p.batch_size.to_string())
        .set("enable.idempotence", p.idempotent.to_string())
        .set("message.timeout.ms", "60000");
    if t.client_profile == Profile::Tuned {
        // Room for a million records in flight instead of 100,000.
        c.set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
    }
    for (k, v) in &t.client_configs {
        c.set(k, v);
    }
    c
}

/// Records acknowledgement latency and outcomes of one producer.
struct Acks {
    start: Instant,
    latency: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    errors: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: Box<u64>) {
        match result {
            Ok(_) => {
                let us = (self.start.elapsed().as_nanos() as u64).saturating_sub(*sent_ns) / 1000;
                let _ = self
                    .latency
                    .lock()
                    .expect("histogram lock")
                    .record(us.max(1));
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends `count` records (or until `until`) at `rate` per second (0: as fast
/// as the queue allows), `fill` writing each value. Returns what was sent.
/// Commits the open transaction. Its records are delivered first with
/// short polls: the `rdkafka` crate's own flush polls in 100 ms steps,
/// which would cap a loop of small transactions at about ten a second.
fn commit(producer: &BaseProducer<Acks>, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
    producer.commit_transaction(timeout)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_producer(
    producer: &BaseProducer<Acks>,
    topic: &str,
    size: usize,
    count: u64,
    rate: f64,
    until: Instant,
    transaction_records: u64,
    mut fill: impl FnMut(&mut [u8]),
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut value = incompressible(size.max(8), start.elapsed().as_nanos() as u64 + 7);
    let mut sent = 0u64;
    let txn_timeout = Duration::from_secs(60);
    if transaction_records > 0 {
        producer.init_transactions(txn_timeout)?;
        producer.begin_transaction()?;
    }
    while sent < count && Instant::now() < until {
        if transaction_records > 0 && sent > 0 && sent % transaction_records == 0 {
            commit(producer, txn_timeout)?;
            producer.begin_transaction()?;
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                producer.poll(due - now);
                continue;
            }
        }
        fill(&mut value[..size]);
        let sent_ns = producer.context().start.elapsed().as_nanos() as u64;
        let record = BaseRecord::with_opaque_to(topic, Box::new(sent_ns)).payload(&value[..size]);
        match producer.send::<(), _>(record) {
            Ok(()) => sent += 1,
            Err((_, _)) => {
                // Queue full: serve delivery reports, then try again.
                producer.poll(Duration::from_millis(1));
            }
        }
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    if transaction_records > 0 {
        commit(producer, txn_timeout)?;
    }
    let _ = producer.flush(Duration::from_secs(60));
    Ok(sent)
}

pub fn produce(a: &ProduceArgs) -> anyhow::Result<Report> {
    prepare(&a.target)?;
    let until = Instant::now() + Duration::from_secs_f64(a.duration_s);
    let per = a.records / a.producers as u64;
    let rate = a.rate / a.producers as f64;
    let started = Instant::now();
    let handles: Vec<_> = (0..a.producers)
        .map(|i| {
            let mut cfg = producer_config(&a.target, &a.producer);
            let txn = a.producer.transaction_records;
            if txn > 0 {
                cfg.set(
                    "transactional.id",
                    format!("sluice-bench-{}-{i}", std::process::id()),
                );
            }
            let topic = a.target.topic.clone();
            let size = a.producer.record_size;
            let count = per + u64::from((i as u64) < a.records % a.producers as u64);
            std::thread::spawn(move || -> anyhow::Result<Arc<BaseProducer<Acks>>> {
                let acks = Acks {
                    start: Instant::now(),
                    latency: Mutex::new(histogram()),
                    acked: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                };
                let p: BaseProducer<Acks> = cfg.create_with_context(acks)?;
                run_producer(&p, &topic, size, count, rate, until, txn, |_| {})?;
                Ok(Arc::new(p))
            })
        })
        .collect();
    let mut latency = histogram();
    let (mut acked, mut errors) = (0u64, 0u64);
    for h in handles {
        let p = h.join().expect("producer thread")?;
        let ctx = p.context();
        latency.add(&*ctx.latency.lock().expect("histogram lock"))?;
        acked += ctx.acked.load(Ordering::Relaxed);
        errors += ctx.errors.load(Ordering::Relaxed);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut r = Report::new(
        "produce",
        acked,
        acked * a.producer.record_size as u64,
        secs,
    );
    r.errors = errors;
    r.latency_us = Some(Latency::of(&latency));
    Ok(r)
}

fn consumer(t: &Target, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &t.bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    if t.client_profile == Profile::Tuned {
        // librdkafka stops fetching a partition whose local queue holds
        // queued.min.messages and then waits fetch.queue.backoff.ms (1 s)
        // before the next fetch: with a fast application that cap, not the
        // broker, sets the rate. Keep fetching.
        c.set("queued.min.messages", "1000000")
            .set("fetch.queue.backoff.ms", "1");
    }
    for (k, v) in &t.client_configs {
        c.set(k, v);
    }
    Ok(c.create()?)
}

/// Every partition of `topic` from its start.
fn assign_all(c: &BaseConsumer, topic: &str) -> anyhow::Result<()> {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if tpl.count() == 0 {
        bail!("topic {topic} has no partitions");
    }
    c.assign(&tpl)?;
    Ok(())
}

pub fn consume(a: &ConsumeArgs) -> anyhow::Result<Report> {
    prepare(&a.target)?;
    let total = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(a.duration_s);
    let started = Instant::now();
    let own_group = format!("sluice-bench-{}", std::process::id());
    let handles: Vec<_> = (0..a.consumers)
        .map(|_| {
            let (total, bytes) = (total.clone(), bytes.clone());
            let target = a.target.clone();
            let topic = a.target.topic.clone();
            let group = a.group.clone();
            let own_group = own_group.clone();
            let want = a.records;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = consumer(&target, group.as_deref().unwrap_or(&own_group))?;
                match group {
                    Some(_) => c.subscribe(&[&topic])?,
                    None => assign_all(&c, &topic)?,
                }
                while total.load(Ordering::Relaxed) < want && Instant::now() < until {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            bytes.fetch_add(
                                m.payload().map_or(0, |p| p.len()) as u64,
                                Ordering::Relaxed,
                            );
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => bail!("consume: {e}"),
                        None => {}
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("consumer thread")?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Report::new(
        if a.group.is_some() {
            "consume-group"
        } else {
            "consume"
        },
        total.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        secs,
    ))
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn e2e(a: &E2eArgs) -> anyhow::Result<Report> {
    prepare(&a.target)?;
    let c = consumer(
        &a.target,
        &format!("sluice-bench-e2e-{}", std::process::id()),
    )?;
    assign_all(&c, &a.target.topic)?;
    let sent = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sent, done) = (sent.clone(), done.clone());
        let window = Duration::from_secs_f64(a.window_ms / 1000.0);
        std::thread::spawn(
            move || -> anyhow::Result<(Histogram<u64>, u64, u64, Vec<Point>)> {
                let mut h = histogram();
                // The latency of each window of receive time, for a plot.
                let (start, mut w, mut series) = (Instant::now(), histogram(), Vec::new());
                let mut w_end = start + window;
                let (mut got, mut bytes) = (0u64, 0u64);
                let mut quiet_since = Instant::now();
                loop {
                    if Instant::now() >= w_end || got >= sent.load(Ordering::Relaxed) {
                        if !w.is_empty() {
                            series.push(Point::of(w_end.duration_since(start).as_secs_f64(), &w));
                            w.reset();
                        }
                        w_end += window;
                    }
                    if got >= sent.load(Ordering::Relaxed)
                        || (done.load(Ordering::Relaxed)
                            && quiet_since.elapsed() > Duration::from_secs(10))
                    {
                        return Ok((h, got, bytes, series));
                    }
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            let p = m.payload().unwrap_or_default();
                            if p.len() >= 8 {
                                let ts = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                                let us = unix_ns().saturating_sub(ts) / 1000;
                                h.record(us.max(1))?;
                                w.record(us.max(1))?;
                            }
                            got += 1;
                            bytes += p.len() as u64;
                            quiet_since = Instant::now();
                        }
                        Some(Err(e)) => bail!("consume: {e}"),
                        None => {}
                    }
                }
            },
        )
    };
    let acks = Acks {
        start: Instant::now(),
        latency: Mutex::new(histogram()),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    let p: BaseProducer<Acks> =
        producer_config(&a.target, &a.producer).create_with_context(acks)?;
    let until = Instant::now() + Duration::from_secs_f64(a.duration_s);
    let started = Instant::now();
    let n = run_producer(
        &p,
        &a.target.topic,
        a.producer.record_size.max(8),
        u64::MAX,
        a.rate,
        until,
        0,
        |v| v[..8].copy_from_slice(&unix_ns().to_be_bytes()),
    )?;
    sent.store(n, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let (h, got, bytes, series) = reader.join().expect("consumer thread")?;
    let secs = started.elapsed().as_secs_f64();
    let mut r = Report::new("e2e", got, bytes, secs);
    r.errors = n.saturating_sub(got) + p.context().errors.load(Ordering::Relaxed);
    r.latency_us = Some(Latency::of(&h));
    r.series = Some(series);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_brokers_are_loaded() {
        assert!(loopback_only("127.0.0.1:9092,localhost:9093,[::1]:9094").is_ok());
        assert!(loopback_only("10.0.0.1:9092").is_err());
        assert!(loopback_only("127.0.0.1:9092,example.com:9092").is_err());
    }
}
