//! In-memory coordination, for `sluice dev` and tests: one process, shared by
//! all nodes in it, with the same compare-and-swap semantics as the API server.
//! Optionally kept in a JSON file (topics and partition records, not leases),
//! so a dev cluster's topics survive restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// What the file holds.
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    version: Version,
    topics: Vec<(TopicSpec, Version)>,
    partitions: Vec<(PartitionKey, PartitionRecord, Version)>,
    #[serde(default)]
    broker_configs: Vec<(BrokerConfigs, Version)>,
}

impl InMemory {
    pub fn new() -> InMemory {
        InMemory::default()
    }

    /// Coordination kept in `file`: loaded if it exists, rewritten (through a
    /// temporary file and a rename) after every change to topics or
    /// partition records.
    pub fn persistent(file: PathBuf) -> anyhow::Result<InMemory> {
        let mut st = State::default();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("cluster metadata in {} is unreadable: {e}", file.display())
                })?;
                st.version = saved.version;
                for (t, v) in saved.topics {
                    st.topics.insert(
                        t.name.clone(),
                        Versioned {
                            value: t,
                            version: v,
                        },
                    );
                }
                for (c, v) in saved.broker_configs {
                    st.broker_configs.insert(
                        c.node,
                        Versioned {
                            value: c,
                            version: v,
                        },
                    );
                }
                for (k, r, v) in saved.partitions {
                    st.partitions.insert(
                        k,
                        Versioned {
                            value: r,
                            version: v,
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("reading {}: {e}", file.display()),
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

    fn bump(&self, st: &mut State) -> Version {
        st.version += 1;
        let v = st.version;
        self.changes.send_replace(v);
        v
    }

    /// Stores a partition record at a new version and saves.
    fn store_partition(
        &self,
        st: &mut State,
        key: &PartitionKey,
        record: PartitionRecord,
    ) -> CResult<Version> {
        let v = self.bump(st);
        st.partitions.insert(
            key.clone(),
            Versioned {
                value: record,
                version: v,
            },
        );
        self.save(st)?;
        Ok(v)
    }

    fn save(&self, st: &State) -> CResult<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
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
        };
        let json = serde_json::to_vec(&saved).expect("metadata serializes");
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, file))
            .map_err(|e| CoordError::Backend(format!("saving {}: {e}", file.display())))
    }
}

#[async_trait]
impl Coordination for InMemory {
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        let changed = st
            .nodes
            .get(&info.id)
            .is_none_or(|l| l.info != *info || !l.alive(now_ms));
        st.nodes.insert(
            info.id,
            NodeLease {
                info: info.clone(),
                renewed_ms: now_ms,
                duration_ms,
            },
        );
        // A plain renewal is not news; a node appearing or returning is.
        if changed {
            self.bump(&mut st);
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

    async fn create_topic(&self, spec: TopicSpec, partitions: Vec<PartitionRecord>) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        if st.topics.contains_key(&spec.name) {
            return Err(CoordError::AlreadyExists(format!("topic {}", spec.name)));
        }
        let v = self.bump(&mut st);
        for (p, record) in partitions.into_iter().enumerate() {
            st.partitions.insert(
                PartitionKey::new(&spec.name, p as i32),
                Versioned {
                    value: record,
                    version: v,
                },
            );
        }
        st.topics.insert(
            spec.name.clone(),
            Versioned {
                value: spec,
                version: v,
            },
        );
        self.save(&st)?;
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
        let v = self.bump(&mut st);
        st.topics.insert(
            spec.name.clone(),
            Versioned {
                value: spec,
                version: v,
            },
        );
        self.save(&st)?;
        Ok(v)
    }

    async fn delete_topic(&self, name: &str) -> CResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("coordination lock");
        if st.topics.remove(name).is_none() {
            return Err(CoordError::NotFound(format!("topic {name}")));
        }
        st.partitions.retain(|k, _| k.topic != name);
        self.bump(&mut st);
        self.save(&st)?;
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
        self.store_partition(&mut st, key, record)
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
        self.store_partition(&mut st, key, record)
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
        let v = self.bump(&mut st);
        st.broker_configs.insert(
            configs.node,
            Versioned {
                value: configs,
                version: v,
            },
        );
        self.save(&st)?;
        Ok(v)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn in_memory_passes_the_contract() {
        super::super::contract::run(&super::InMemory::new()).await;
    }
}
