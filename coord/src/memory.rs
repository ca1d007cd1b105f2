//! In-memory coordination, for `sluice dev` and tests: one process, shared by
//! all nodes in it, with the same compare-and-swap semantics as the API server.
//! Optionally kept on disk (topics, partition records and broker configs, not
//! leases), so a dev cluster's topics survive restarts.
//!
//! On disk: a snapshot (`cluster.json`) and a journal beside it
//! (`cluster.journal`, one JSON line per change). A change is appended to the
//! journal before it is made, so a change that cannot be saved is not made;
//! the journal is folded into a new snapshot once it is longer than the
//! snapshot, so a write costs the same with ten partitions or a hundred
//! thousand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use uuid::Uuid;

use async_trait::async_trait;
use tokio::sync::watch;

use super::*;

#[derive(Default)]
struct State {
    version: Version,
    nodes: BTreeMap<i32, NodeLease>,
    topics: BTreeMap<String, Versioned<TopicSpec>>,
    partitions: BTreeMap<PartitionKey, Versioned<PartitionRecord>>,
    broker_configs: BTreeMap<Option<i32>, Versioned<BrokerConfigs>>,
    security: Option<Versioned<SecurityRecord>>,
    /// Locks, like leases, are not kept on disk.
    locks: BTreeMap<String, Versioned<LockRecord>>,
    /// Lines in the journal since the last snapshot.
    journaled: usize,
}

/// One change, as the journal records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    PutTopic(TopicSpec, Version),
    DeleteTopic(String),
    PutPartition(PartitionKey, PartitionRecord, Version),
    PutConfigs(BrokerConfigs, Version),
    PutSecurity(SecurityRecord, Version),
}

impl State {
    fn apply(&mut self, op: Op) {
        match op {
            Op::PutTopic(t, v) => {
                self.topics.insert(
                    t.name.clone(),
                    Versioned {
                        value: t,
                        version: v,
                    },
                );
            }
            Op::DeleteTopic(name) => {
                self.topics.remove(&name);
                self.partitions.retain(|k, _| k.topic != name);
            }
            Op::PutPartition(k, r, v) => {
                self.partitions.insert(
                    k,
                    Versioned {
                        value: r,
                        version: v,
                    },
                );
            }
            Op::PutSecurity(r, v) => {
                self.security = Some(Versioned {
                    value: r,
                    version: v,
                });
            }
            Op::PutConfigs(c, v) => {
                self.broker_configs.insert(
                    c.node,
                    Versioned {
                        value: c,
                        version: v,
                    },
                );
            }
        }
    }

    fn entries(&self) -> usize {
        self.topics.len()
            + self.partitions.len()
            + self.broker_configs.len()
            + usize::from(self.security.is_some())
    }
}

pub struct InMemory {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    file: Option<PathBuf>,
    writes: AtomicU64,
}

impl Default for InMemory {
    fn default() -> Self {
        InMemory {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            file: None,
            writes: AtomicU64::new(0),
        }
    }
}

/// What the snapshot holds.
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    version: Version,
    topics: Vec<(TopicSpec, Version)>,
    partitions: Vec<(PartitionKey, PartitionRecord, Version)>,
    #[serde(default)]
    broker_configs: Vec<(BrokerConfigs, Version)>,
    #[serde(default)]
    security: Option<(SecurityRecord, Version)>,
}

/// A journal line: the version the change made, and the change.
#[derive(Serialize, Deserialize)]
struct Entry {
    version: Version,
    ops: Vec<Op>,
}

fn io_error(what: &str, file: &std::path::Path, e: impl std::fmt::Display) -> CoordError {
    CoordError::Backend(format!("{what} {}: {e}", file.display()))
}

impl InMemory {
    pub fn new() -> InMemory {
        InMemory::default()
    }

    /// Coordination kept on disk at `file` (a snapshot) and a journal
    /// beside it: both loaded if they exist.
    pub fn persistent(file: PathBuf) -> anyhow::Result<InMemory> {
        let mut st = State::default();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("cluster metadata in {} is unreadable: {e}", file.display())
                })?;
                st.version = saved.version;
                for (t, v) in saved.topics {
                    st.apply(Op::PutTopic(t, v));
                }
                for (c, v) in saved.broker_configs {
                    st.apply(Op::PutConfigs(c, v));
                }
                if let Some((r, v)) = saved.security {
                    st.apply(Op::PutSecurity(r, v));
                }
                for (k, r, v) in saved.partitions {
                    st.apply(Op::PutPartition(k, r, v));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("reading {}: {e}", file.display()),
        }
        match std::fs::read_to_string(journal_of(&file)) {
            Ok(text) => {
                for line in text.lines() {
                    // A line cut short by a crash is the last one: the change
                    // it began was never acknowledged.
                    let Ok(e) = serde_json::from_str::<Entry>(line) else {
                        break;
                    };
                    if e.version <= st.version {
                        continue; // already in the snapshot
                    }
                    for op in e.ops {
                        st.apply(op);
                    }
                    st.version = e.version;
                    st.journaled += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("reading {}: {e}", journal_of(&file).display()),
        }
        Ok(InMemory {
            changes: watch::channel(st.version).0,
            state: Mutex::new(st),
            file: Some(file),
            writes: AtomicU64::new(0),
        })
    }

    /// Writes accepted so far (lease renewals included): what the API server
    /// would have received.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Makes one change at a new version: journaled first (when kept on
    /// disk), so a change that cannot be saved is not made at all; then
    /// applied and announced.
    fn change(&self, st: &mut State, ops: impl FnOnce(Version) -> Vec<Op>) -> CResult<Version> {
        let v = st.version + 1;
        let ops = ops(v);
        if let Some(file) = &self.file {
            let line = serde_json::to_string(&Entry {
                version: v,
                ops: ops.clone(),
            })
            .expect("journal entries serialize");
            let journal = journal_of(file);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&journal)
                .map_err(|e| io_error("opening", &journal, e))?;
            let len = f.metadata().map(|m| m.len()).ok();
            if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                // No torn line may stay in front of later ones.
                if let Some(len) = len {
                    let _ = f.set_len(len);
                }
                return Err(io_error("appending to", &journal, e));
            }
        }
        for op in ops {
            st.apply(op);
        }
        st.version = v;
        st.journaled += 1;
        if let Some(file) = &self.file {
            if st.journaled > st.entries().max(1_000) {
                // Folded into a new snapshot; a failure leaves the journal,
                // which still holds everything.
                if let Err(e) = snapshot(st, file) {
                    tracing::warn!(error = %e, "writing a metadata snapshot failed; the journal keeps growing");
                }
            }
        }
        self.changes.send_replace(v);
        Ok(v)
    }
}

fn journal_of(file: &std::path::Path) -> PathBuf {
    file.with_extension("journal")
}

/// Writes the whole state as the snapshot (through a temporary file and a
/// rename) and empties the journal.
fn snapshot(st: &mut State, file: &std::path::Path) -> CResult<()> {
    let saved = Saved {
        version: st.version,
        topics: st
            .topics
            .values()
            .map(|t| (t.value.clone(), t.version))
            .collect(),
        partitions: st
            .partitions
            .iter()
            .map(|(k, p)| (k.clone(), p.value.clone(), p.version))
            .collect(),
        broker_configs: st
            .broker_configs
            .values()
            .map(|c| (c.value.clone(), c.version))
            .collect(),
        security: st.security.as_ref().map(|r| (r.value.clone(), r.version)),
    };
    let json = serde_json::to_vec(&saved).expect("metadata serializes");
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, file))
        .map_err(|e| io_error("saving", file, e))?;
    // Entries at or below the snapshot's version are skipped on load, so a
    // crash before this leaves nothing wrong.
    std::fs::write(journal_of(file), b"").map_err(|e| io_error("emptying", file, e))?;
    st.journaled = 0;
    Ok(())
}

#[async_trait]
impl Coordination for InMemory {
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        // Every process sharing this store sees a renewal as it is written.
        let seen = mono_ms();
        let changed = st
            .nodes
            .get(&info.id)
            .is_none_or(|l| l.info != *info || !l.alive(seen));
        st.nodes.insert(
            info.id,
            NodeLease {
                info: info.clone(),
                renewed_ms: now_ms,
                duration_ms,
                seen_mono_ms: seen,
            },
        );
        // A plain renewal is not news; a node appearing or returning is.
        // Leases are not kept on disk: nothing to journal.
        if changed {
            st.version += 1;
            self.changes.send_replace(st.version);
        }
        Ok(())
    }

    async fn nodes(&self) -> CResult<Vec<NodeLease>> {
        Ok(self
            .state
            .lock()
            .expect("coordination lock")
            .nodes
            .values()
            .cloned()
            .collect())
    }

    async fn topics(&self) -> CResult<Vec<Versioned<TopicSpec>>> {
        Ok(self
            .state
            .lock()
            .expect("coordination lock")
            .topics
            .values()
            .cloned()
            .collect())
    }

    async fn topic(&self, name: &str) -> CResult<Option<Versioned<TopicSpec>>> {
        Ok(self
            .state
            .lock()
            .expect("coordination lock")
            .topics
            .get(name)
            .cloned())
    }

    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        if st.topics.contains_key(&spec.name) {
            return Err(CoordError::AlreadyExists(format!("topic {}", spec.name)));
        }
        self.change(&mut st, |v| {
            let mut ops: Vec<Op> = partitions
                .into_iter()
                .enumerate()
                .map(|(p, r)| Op::PutPartition(PartitionKey::new(&spec.name, p as i32), r, v))
                .collect();
            ops.push(Op::PutTopic(spec, v));
            ops
        })?;
        Ok(())
    }

    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        match st.topics.get(&spec.name) {
            None => return Err(CoordError::NotFound(format!("topic {}", spec.name))),
            Some(t) if t.version != expected => {
                return Err(CoordError::Conflict(format!("topic {}", spec.name)))
            }
            Some(_) => {}
        }
        self.change(&mut st, |v| vec![Op::PutTopic(spec, v)])
    }

    async fn delete_topic(&self, name: &str) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let Some(t) = st.topics.get(name) else {
            return Err(CoordError::NotFound(format!("topic {name}")));
        };
        if t.value.deleting {
            return Ok(());
        }
        let mut next = t.value.clone();
        next.deleting = true;
        self.change(&mut st, |v| vec![Op::PutTopic(next, v)])?;
        Ok(())
    }

    async fn topic_dropped(&self, name: &str, id: Uuid, node: i32) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let Some(t) = st.topics.get(name).filter(|t| t.value.id == id) else {
            return Err(CoordError::NotFound(format!("topic {name} ({id})")));
        };
        if t.value.dropped_on.contains(&node) {
            return Ok(());
        }
        let mut next = t.value.clone();
        next.dropped_on.push(node);
        next.dropped_on.sort_unstable();
        self.change(&mut st, |v| vec![Op::PutTopic(next, v)])?;
        Ok(())
    }

    async fn remove_topic(&self, name: &str, id: Uuid) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        if st.topics.get(name).is_none_or(|t| t.value.id != id) {
            return Err(CoordError::NotFound(format!("topic {name} ({id})")));
        }
        self.change(&mut st, |_| vec![Op::DeleteTopic(name.to_string())])?;
        Ok(())
    }

    async fn partitions(&self) -> CResult<Vec<(PartitionKey, Versioned<PartitionRecord>)>> {
        let st = self.state.lock().expect("coordination lock");
        Ok(st
            .partitions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn partition(&self, key: &PartitionKey) -> CResult<Option<Versioned<PartitionRecord>>> {
        let st = self.state.lock().expect("coordination lock");
        Ok(st.partitions.get(key).cloned())
    }

    async fn create_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        if st.partitions.contains_key(key) {
            return Err(CoordError::AlreadyExists(format!(
                "partition {}-{}",
                key.topic, key.partition
            )));
        }
        self.change(&mut st, |v| vec![Op::PutPartition(key.clone(), record, v)])
    }

    async fn create_partitions(
        &self,
        topic: &str,
        first: i32,
        records: Vec<PartitionRecord>,
    ) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let missing: Vec<(PartitionKey, PartitionRecord)> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (PartitionKey::new(topic, first + i as i32), r))
            .filter(|(k, _)| !st.partitions.contains_key(k))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.change(&mut st, |v| {
            missing
                .into_iter()
                .map(|(k, r)| Op::PutPartition(k, r, v))
                .collect()
        })?;
        Ok(())
    }

    async fn update_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
        expected: Version,
    ) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let name = format!("partition {}-{}", key.topic, key.partition);
        match st.partitions.get(key) {
            None => return Err(CoordError::NotFound(name)),
            Some(p) if p.version != expected => return Err(CoordError::Conflict(name)),
            Some(_) => {}
        }
        self.change(&mut st, |v| vec![Op::PutPartition(key.clone(), record, v)])
    }

    async fn broker_configs(&self) -> CResult<Vec<Versioned<BrokerConfigs>>> {
        let st = self.state.lock().expect("coordination lock");
        Ok(st.broker_configs.values().cloned().collect())
    }

    async fn put_broker_configs(
        &self,
        configs: BrokerConfigs,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let what = match configs.node {
            None => "cluster-wide broker configs".to_string(),
            Some(id) => format!("broker {id} configs"),
        };
        match (st.broker_configs.get(&configs.node), expected) {
            (Some(_), None) => return Err(CoordError::AlreadyExists(what)),
            (None, Some(_)) => return Err(CoordError::NotFound(what)),
            (Some(c), Some(v)) if c.version != v => return Err(CoordError::Conflict(what)),
            _ => {}
        }
        self.change(&mut st, |v| vec![Op::PutConfigs(configs, v)])
    }

    async fn security(&self) -> CResult<Option<Versioned<SecurityRecord>>> {
        Ok(self
            .state
            .lock()
            .expect("coordination lock")
            .security
            .clone())
    }

    async fn put_security(
        &self,
        record: SecurityRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let what = "the security record".to_string();
        match (&st.security, expected) {
            (Some(_), None) => return Err(CoordError::AlreadyExists(what)),
            (None, Some(_)) => return Err(CoordError::NotFound(what)),
            (Some(c), Some(v)) if c.version != v => return Err(CoordError::Conflict(what)),
            _ => {}
        }
        self.change(&mut st, |v| vec![Op::PutSecurity(record, v)])
    }

    async fn lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>> {
        Ok(self
            .state
            .lock()
            .expect("coordination lock")
            .locks
            .get(name)
            .cloned())
    }

    async fn put_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let what = format!("lock {name}");
        match (st.locks.get(name), expected) {
            (Some(_), None) => return Err(CoordError::AlreadyExists(what)),
            (None, Some(_)) => return Err(CoordError::NotFound(what)),
            (Some(l), Some(v)) if l.version != v => return Err(CoordError::Conflict(what)),
            _ => {}
        }
        // A renewal is not news to anyone watching the metadata.
        let version = st.version + 1;
        st.version = version;
        st.locks.insert(
            name.to_string(),
            Versioned {
                value: record,
                version,
            },
        );
        Ok(version)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_passes_the_contract() {
        super::super::contract::run(&InMemory::new()).await;
    }

    #[tokio::test]
    async fn changes_survive_a_restart_through_journal_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.json");
        let c = InMemory::persistent(file.clone()).unwrap();
        let spec =
            |name: &str| TopicSpec::new(name, uuid::Uuid::new_v4(), 1, 1, Default::default());
        c.create_topic(spec("a"), vec![PartitionRecord::new(vec![0])])
            .await
            .unwrap();
        // Enough changes to fold the journal into snapshots a few times.
        let key = PartitionKey::new("a", 0);
        for i in 0..2_500 {
            let v = c.partitions().await.unwrap()[0].1.version;
            let r = PartitionRecord {
                leader_epoch: i,
                ..PartitionRecord::new(vec![0])
            };
            c.update_partition(&key, r, v).await.unwrap();
        }
        c.create_topic(spec("b"), vec![PartitionRecord::new(vec![0])])
            .await
            .unwrap();
        c.delete_topic("a").await.unwrap();
        let before = (c.topics().await.unwrap(), c.partitions().await.unwrap());
        let journal = std::fs::read_to_string(file.with_extension("journal")).unwrap();
        assert!(journal.lines().count() < 1_100, "the journal was folded");
        // A torn last line (a crash mid-append) is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(file.with_extension("journal"))
            .unwrap();
        f.write_all(b"{\"version\": 99999, \"ops\": [").unwrap();
        let again = InMemory::persistent(file).unwrap();
        assert_eq!(
            (
                again.topics().await.unwrap(),
                again.partitions().await.unwrap()
            ),
            before
        );
    }

    #[tokio::test]
    async fn a_change_that_cannot_be_saved_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let c = InMemory::persistent(dir.path().join("sub/cluster.json")).unwrap();
        // The directory the files go in does not exist: every save fails.
        let spec = TopicSpec::new("t", uuid::Uuid::new_v4(), 1, 1, Default::default());
        let before = *c.changes().borrow();
        assert!(matches!(
            c.create_topic(spec, vec![PartitionRecord::new(vec![0])])
                .await,
            Err(CoordError::Backend(_))
        ));
        assert!(c.topics().await.unwrap().is_empty());
        assert!(c.partitions().await.unwrap().is_empty());
        assert_eq!(*c.changes().borrow(), before, "nothing announced");
        // Once it can be saved, it is made.
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let spec = TopicSpec::new("t", uuid::Uuid::new_v4(), 1, 1, Default::default());
        c.create_topic(spec, vec![PartitionRecord::new(vec![0])])
            .await
            .unwrap();
        let parts = c.partitions().await.unwrap();
        let v = parts[0].1.version;
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        let key = PartitionKey::new("t", 0);
        let changed = PartitionRecord {
            isr: vec![],
            ..PartitionRecord::new(vec![0])
        };
        assert!(c.update_partition(&key, changed, v).await.is_err());
        assert_eq!(c.partitions().await.unwrap()[0].1.version, v);
    }
}
