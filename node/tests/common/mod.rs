//! Test harness: runs the real `sluice` binary and talks to it with requests
//! encoded by `kafka-protocol`, the way any Kafka client would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, TimestampType};

pub struct Node {
    child: Option<Child>,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Node {
    /// Starts `sluice dev` on ephemeral loopback ports with `extra` arguments.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, kafka, admin) = spawn(data_dir, &args, "127.0.0.1:0", "127.0.0.1:0");
        Node {
            child: Some(child),
            kafka,
            admin,
            data_dir: data_dir.to_path_buf(),
            args,
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// Starts the node again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, kafka, admin) = spawn(
            &self.data_dir,
            &self.args,
            &self.kafka.to_string(),
            &self.admin.to_string(),
        );
        self.child = Some(child);
        self.kafka = kafka;
        self.admin = admin;
    }

    pub fn client(&self) -> Client {
        Client::connect(self.kafka)
    }

    /// GET on the admin port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(self.admin).expect("admin connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.lines().next().unwrap_or_default().to_string();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }
}

impl Node {
    /// What the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.data_dir)).unwrap_or_default()
    }

    /// Fails the test if any thread of the node panicked (a panic ends only
    /// its task, but it is a bug, and it may poison a lock).
    pub fn assert_no_panics(&self) {
        let log = self.log();
        if let Some(at) = log.find("panicked at") {
            let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = log[at..].find("\n\n").map_or(log.len(), |i| at + i);
            panic!("the node panicked:\n{}", &log[from..to.min(from + 4000)]);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the node's log ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Where a node started by these helpers writes its log (stderr): under
/// the target directory, not on the node's own volume (which a test may fill).
pub fn log_path(data_dir: &Path) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let name: String = data_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{name}.log"))
}

fn spawn(
    data_dir: &Path,
    extra: &[String],
    listen: &str,
    admin: &str,
) -> (Child, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(data_dir).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data_dir))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("dev")
        .arg("--listen")
        .arg(listen)
        .arg("--admin-listen")
        .arg(admin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn sluice");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("sluice ready ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("sluice did not report ready");
    let mut kafka = None;
    let mut admin = None;
    for part in line.split_whitespace() {
        if let Some(a) = part.strip_prefix("kafka=") {
            kafka = Some(a.parse().unwrap());
        }
        if let Some(a) = part.strip_prefix("admin=") {
            admin = Some(a.parse().unwrap());
        }
    }
    (child, kafka.unwrap(), admin.unwrap())
}

/// Multi-node clusters run one at a time in a test process: several at
/// once on a small machine turn lease and ISR timings into races.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `sluice dev --nodes N` on ephemeral loopback ports, with its stdin
/// control (`stop I`, `start I`, `stats`).
pub struct Cluster {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    pub kafka: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    pub fn start(data_dir: &Path, nodes: usize, extra: &[&str]) -> Cluster {
        // A test that failed (and poisoned the lock) does not stop the rest.
        let turn = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("dev")
            .args(["--nodes", &nodes.to_string()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let ready = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("sluice did not report ready");
            if let Some(rest) = line.strip_prefix("sluice ready ") {
                break rest.to_string();
            }
        };
        let list = |key: &str| -> Vec<SocketAddr> {
            ready
                .split_whitespace()
                .find_map(|p| p.strip_prefix(key))
                .unwrap()
                .split(',')
                .map(|a| a.parse().unwrap())
                .collect()
        };
        Cluster {
            kafka: list("kafka="),
            admin: list("admin="),
            child,
            stdin,
            lines: rx,
            data_dir: data_dir.to_path_buf(),
            _turn: turn,
        }
    }

    /// Sends a control line and returns the answer.
    pub fn control(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("no answer from the control input")
    }

    /// Stops node `id` as a crash would.
    pub fn stop(&mut self, id: usize) {
        let a = self.control(&format!("stop {id}"));
        assert!(a.starts_with(&format!("stopped {id}")), "{a}");
    }

    pub fn start_node(&mut self, id: usize) {
        let a = self.control(&format!("start {id}"));
        assert!(a.starts_with(&format!("started {id}")), "{a}");
    }

    /// Coordination writes so far.
    pub fn writes(&mut self) -> u64 {
        let a = self.control("stats");
        a.strip_prefix("coordination writes=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected stats answer {a}"))
    }

    pub fn client(&self, id: usize) -> Client {
        Client::connect(self.kafka[id])
    }

    pub fn bootstrap(&self) -> String {
        self.kafka
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CreateTopics (v7) for one topic; returns its error code.
pub fn create_topic(
    c: &mut Client,
    name: &str,
    partitions: i32,
    rf: i16,
    configs: &[(&str, &str)],
) -> i16 {
    let req = kafka_protocol::messages::CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )]);
    let code = c.send(&req, 7).topics[0].error_code;
    if code == 0 {
        // CreateTopics answers once the topic exists; its leaders are
        // elected by the controller just after. Tests go on from there.
        wait_for(Duration::from_secs(30), || {
            let md = c.send(
                &kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(kafka_protocol::messages::TopicName(
                            StrBytes::from_string(name.to_string()),
                        ))),
                ])),
                9,
            );
            md.topics
                .iter()
                .all(|t| {
                    t.error_code == 0
                        && t.partitions.len() == partitions.max(1) as usize
                        && t.partitions.iter().all(|p| p.leader_id.0 >= 0)
                })
                .then_some(())
        });
    }
    code
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Client {
    stream: TcpStream,
    correlation: i32,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            correlation: 0,
        }
    }

    pub fn send<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        self.try_send(req, version).expect("request failed")
    }

    /// Sends a request; `None` when the node closed the connection instead.
    pub fn try_send<R: Request>(&mut self, req: &R, version: i16) -> Option<R::Response> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .unwrap();
        req.encode(&mut body, version).unwrap();
        let mut resp = self.raw(&body)?;
        let rh = ResponseHeader::decode(&mut resp, R::Response::header_version(version)).unwrap();
        assert_eq!(rh.correlation_id, self.correlation);
        Some(R::Response::decode(&mut resp, version).unwrap())
    }

    /// Sends a frame body (the length prefix is added) and returns the
    /// response body, or `None` if the connection was closed.
    pub fn raw(&mut self, body: &[u8]) -> Option<Bytes> {
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.put_slice(body);
        self.stream.write_all(&frame).ok()?;
        self.read_frame()
    }

    /// Writes bytes as they are, no length prefix added.
    pub fn write_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }

    /// True when the node has closed this connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// A v2 record batch of `n` records with keys `k{i}` and values `{prefix}{i}`.
pub fn batch(n: usize, prefix: &str, compression: Compression) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    batch_at(n, prefix, compression, now)
}

pub fn batch_at(n: usize, prefix: &str, compression: Compression, ts: i64) -> Bytes {
    encode_batch(n, prefix, compression, ts, -1, -1, -1)
}

/// A batch from an idempotent producer: `pid` at `epoch`, sequences from `base_seq`.
pub fn idempotent_batch(n: usize, prefix: &str, pid: i64, epoch: i16, base_seq: i32) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    encode_batch(n, prefix, Compression::None, now, pid, epoch, base_seq)
}

/// A batch of a transactional producer: [`idempotent_batch`] with the
/// transactional attribute.
pub fn transactional_batch(n: usize, prefix: &str, pid: i64, epoch: i16, base_seq: i32) -> Bytes {
    let b = idempotent_batch(n, prefix, pid, epoch, base_seq);
    let mut records = sluice_node::log::batch::decode_records(&b, 1 << 20).unwrap();
    for r in &mut records {
        r.transactional = true;
    }
    sluice_node::log::batch::encode_v2(&records, Compression::None).unwrap()
}

fn encode_batch(
    n: usize,
    prefix: &str,
    compression: Compression,
    ts: i64,
    pid: i64,
    epoch: i16,
    base_seq: i32,
) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder derives the base sequence from the first record
            // and keeps records with offset - sequence constant in one batch.
            sequence: base_seq.wrapping_add(i as i32),
            timestamp: ts + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{prefix}{i}"))),
            headers: Default::default(),
        })
        .collect();
    sluice_node::log::batch::encode_v2(&records, compression).unwrap()
}
