//! Where the brokers are and how to reach them: `-b/--brokers`,
//! `SLUICE_BROKERS`, a profile file, and the librdkafka clients built from
//! them.
//!
//! The profile file (`$SLUICE_CONFIG`, else `$XDG_CONFIG_HOME/sluice/config.toml`,
//! else `~/.config/sluice/config.toml`) names connection profiles:
//!
//! ```toml
//! profile = "local"            # the one used when --profile is not given
//! [profiles.local]
//! brokers = "localhost:9092"
//! [profiles.local.properties]  # librdkafka properties (TLS, SASL, ...)
//! "client.id" = "me"
//! ```
//!
//! Brokers come from `-b`, else `SLUICE_BROKERS`, else the profile, else
//! `localhost:9092`.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use serde::Deserialize;

use crate::output::Format;

pub const DEFAULT_BROKERS: &str = "localhost:9092";

/// Connection and output options every client command takes.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(short = 'b', long, env = "SLUICE_BROKERS", global = true)]
    pub brokers: Option<String>,
    /// Profile of the profile file to use (see `docs/cli.md`).
    #[arg(long, env = "SLUICE_PROFILE", global = true)]
    pub profile: Option<String>,
    /// A librdkafka property, KEY=VALUE (repeatable), e.g. -X client.id=me.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = key_value, global = true)]
    pub property: Vec<(String, String)>,
    /// How long to wait for the cluster to answer, in seconds.
    #[arg(long, default_value_t = 10.0, global = true)]
    pub timeout: f64,
    /// JSON output (one document, or one line per record for consume).
    #[arg(long, global = true, conflicts_with = "plain")]
    pub json: bool,
    /// Plain aligned text even on a terminal (no borders, no colour).
    #[arg(long, global = true)]
    pub plain: bool,
}

pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[derive(Deserialize, Default)]
struct ProfileFile {
    profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Deserialize, Default, Clone)]
struct Profile {
    brokers: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

fn profile_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("sluice/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/sluice/config.toml"))
}

/// A resolved connection: the brokers, the extra librdkafka properties and
/// the output format.
pub struct Conn {
    pub brokers: String,
    pub properties: BTreeMap<String, String>,
    pub timeout: Duration,
    pub format: Format,
}

impl Connection {
    pub fn resolve(&self) -> anyhow::Result<Conn> {
        let path = profile_path();
        let file: ProfileFile = match path.as_ref().map(std::fs::read_to_string) {
            Some(Ok(text)) => {
                let p = path.as_ref().unwrap().display();
                toml::from_str(&text)
                    .with_context(|| format!("cannot read the profile file {p}"))?
            }
            _ => ProfileFile::default(),
        };
        let profile = match self.profile.as_ref().or(file.profile.as_ref()) {
            Some(name) => file.profiles.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
                anyhow!(
                    "no profile {name:?} in {} (profiles: {})",
                    path.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })?,
            None => Profile::default(),
        };
        let brokers = self
            .brokers
            .clone()
            .or(profile.brokers)
            .unwrap_or_else(|| DEFAULT_BROKERS.to_string());
        let mut properties = profile.properties;
        properties.extend(self.property.iter().cloned());
        Ok(Conn {
            brokers,
            properties,
            timeout: seconds("--timeout", self.timeout)?,
            format: Format::choose(self.json, self.plain),
        })
    }
}

/// A client context that keeps librdkafka's log lines to itself: the
/// command reports failures as one line of its own.
#[derive(Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _log_message: &str) {}
    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl Conn {
    /// A librdkafka configuration for these brokers and properties.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "sluice-cli")
            .set("log_level", "3");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Fails fast, naming the address, when no bootstrap broker accepts a
    /// TCP connection (librdkafka would retry until the timeout).
    pub fn check_reachable(&self) -> anyhow::Result<()> {
        let mut last = None;
        for b in self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            let with_port = if b
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                b.to_string()
            } else {
                format!("{b}:9092")
            };
            let addrs = match with_port.to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    last = Some(format!("{b}: {e}"));
                    continue;
                }
            };
            for a in addrs {
                match TcpStream::connect_timeout(&a, self.timeout.min(Duration::from_secs(5))) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(format!("{b}: {e}")),
                }
            }
        }
        Err(anyhow!(
            "cannot reach a broker at {} ({}); is it running? Set the address with -b/--brokers or SLUICE_BROKERS",
            self.brokers,
            last.unwrap_or_else(|| "no address given".into())
        ))
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.check_reachable()?;
        self.config()
            .create()
            .map_err(|e| anyhow!("cannot configure the client: {e}"))
    }

    /// A consumer handle, for metadata, watermarks and offsets; it never
    /// creates topics.
    pub fn consumer(&self, group: Option<&str>) -> anyhow::Result<BaseConsumer<Quiet>> {
        self.check_reachable()?;
        let mut c = self.config();
        c.set("allow.auto.create.topics", "false")
            .set("enable.auto.commit", "false");
        if let Some(g) = group {
            c.set("group.id", g);
        }
        c.create_with_context(Quiet)
            .map_err(|e| anyhow!("cannot configure the client: {e}"))
    }

    /// Metadata of one topic or all of them.
    pub fn metadata(
        &self,
        client: &BaseConsumer<Quiet>,
        topic: Option<&str>,
    ) -> anyhow::Result<Metadata> {
        client
            .fetch_metadata(topic, self.timeout)
            .map_err(|e| self.kafka_error("cannot read the cluster's metadata", e))
    }

    /// Metadata of one topic, failing with a clear message when it does not exist.
    pub fn topic_metadata(
        &self,
        client: &BaseConsumer<Quiet>,
        topic: &str,
    ) -> anyhow::Result<Metadata> {
        let md = self.metadata(client, Some(topic))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| unknown_topic(topic))?;
        match t.error().map(RDKafkaErrorCode::from) {
            None => Ok(md),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Err(unknown_topic(topic)),
            Some(e) => bail!("topic {topic}: {e}"),
        }
    }

    /// One line for a librdkafka error, with what to do when it is a
    /// timeout or the brokers are down.
    pub fn kafka_error(&self, what: &str, e: KafkaError) -> anyhow::Error {
        match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure,
            ) => anyhow!(
                "{what}: no answer from {} within {:?} ({e}); is the broker running and is -b/--brokers right?",
                self.brokers,
                self.timeout
            ),
            _ => anyhow!("{what}: {e}"),
        }
    }
}

/// A positive, finite duration from a flag's seconds.
pub fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if s > 0.0 && d < Duration::from_secs(86_400 * 365) => Ok(d),
        _ => bail!("{flag} must be a positive number of seconds below a year, not {s}"),
    }
}

/// `host:port` for a bootstrap entry, adding Kafka's port when none is given.
pub fn with_port(b: &str) -> String {
    if b.rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        b.to_string()
    } else {
        format!("{b}:9092")
    }
}

pub fn unknown_topic(topic: &str) -> anyhow::Error {
    anyhow!("unknown topic {topic:?}; `sluice topic list` shows the topics, `sluice topic create {topic}` creates it")
}

/// Prints a line for each admin result that succeeded and fails with the
/// others' messages joined, so one bad name does not hide the rest.
pub fn each_result(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
    done: impl Fn(&str) -> String,
    failed: impl Fn(&str, RDKafkaErrorCode) -> String,
) -> anyhow::Result<crate::Outcome> {
    let mut errors = vec![];
    for r in results {
        match r {
            Ok(name) => println!("{}", done(&name)),
            Err((name, code)) => errors.push(failed(&name, code)),
        }
    }
    if errors.is_empty() {
        Ok(crate::Outcome::Ok)
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// Runs an admin future to completion on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}
