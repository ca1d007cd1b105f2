//! In-memory coordination, for `sluice dev` and tests: one process, shared by
//! all nodes in it, with the same compare-and-swap semantics as the API server.

use std::collections::BTreeMap;
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
}

pub struct InMemory {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Default for InMemory {
    fn default() -> Self {
        InMemory {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
        }
    }
}

impl InMemory {
    pub fn new() -> InMemory {
        InMemory::default()
    }

    fn bump(&self, st: &mut State) -> Version {
        st.version += 1;
        let v = st.version;
        self.changes.send_replace(v);
        v
    }
}

#[async_trait]
impl Coordination for InMemory {
    async fn renew_node(&self, info: &NodeInfo, now_ms: i64, duration_ms: i64) -> CResult<()> {
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
        Ok(())
    }

    async fn update_topic(&self, spec: TopicSpec, expected: Version) -> CResult<Version> {
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
        Ok(v)
    }

    async fn delete_topic(&self, name: &str) -> CResult<()> {
        let mut st = self.state.lock().expect("coordination lock");
        if st.topics.remove(name).is_none() {
            return Err(CoordError::NotFound(format!("topic {name}")));
        }
        st.partitions.retain(|k, _| k.topic != name);
        self.bump(&mut st);
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
        let mut st = self.state.lock().expect("coordination lock");
        if st.partitions.contains_key(key) {
            return Err(CoordError::AlreadyExists(format!(
                "partition {}-{}",
                key.topic, key.partition
            )));
        }
        let v = self.bump(&mut st);
        st.partitions.insert(
            key.clone(),
            Versioned {
                value: record,
                version: v,
            },
        );
        Ok(v)
    }

    async fn update_partition(
        &self,
        key: &PartitionKey,
        record: PartitionRecord,
        expected: Version,
    ) -> CResult<Version> {
        let mut st = self.state.lock().expect("coordination lock");
        let name = format!("partition {}-{}", key.topic, key.partition);
        match st.partitions.get(key) {
            None => return Err(CoordError::NotFound(name)),
            Some(p) if p.version != expected => return Err(CoordError::Conflict(name)),
            Some(_) => {}
        }
        let v = self.bump(&mut st);
        st.partitions.insert(
            key.clone(),
            Versioned {
                value: record,
                version: v,
            },
        );
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
