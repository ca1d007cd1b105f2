//! The cluster's metadata as one process last read it: nodes, topics,
//! partition records and dynamic broker configs, in one snapshot.

use std::collections::{BTreeMap, HashMap};

use crate::{
    mono_ms, BrokerConfigs, CResult, Coordination, NodeLease, PartitionRecord, SecurityRecord,
    TopicSpec, Versioned,
};

/// The cluster's metadata as one node last read it.
#[derive(Debug, Default)]
pub struct View {
    pub nodes: Vec<NodeLease>,
    pub topics: BTreeMap<String, Versioned<TopicSpec>>,
    /// Per topic, the record of each partition by index.
    pub records: HashMap<String, Vec<Option<Versioned<PartitionRecord>>>>,
    /// Dynamic broker configs: cluster-wide and per node.
    pub broker_configs: Vec<Versioned<BrokerConfigs>>,
    /// Users' SCRAM credentials and the ACLs.
    pub security: Option<Versioned<SecurityRecord>>,
}

impl View {
    pub fn topic_records(&self, topic: &str) -> Option<&Vec<Option<Versioned<PartitionRecord>>>> {
        self.records.get(topic)
    }

    pub fn record(&self, topic: &str, partition: i32) -> Option<&Versioned<PartitionRecord>> {
        self.records
            .get(topic)?
            .get(usize::try_from(partition).ok()?)?
            .as_ref()
    }

    /// The replicas of each partition of `topic` by index (empty where a
    /// record is missing; no partitions for an unknown topic), as placement
    /// takes them.
    pub fn replica_lists(&self, topic: &str) -> Vec<Vec<i32>> {
        self.topic_records(topic)
            .map(|r| {
                r.iter()
                    .map(|p| {
                        p.as_ref()
                            .map(|v| v.value.replicas.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn node(&self, id: i32) -> Option<&NodeLease> {
        self.nodes.iter().find(|n| n.info.id == id)
    }

    /// The stored dynamic configs of one node (`Some(id)`) or the cluster
    /// (`None`).
    pub fn broker_configs(&self, node: Option<i32>) -> Option<&Versioned<BrokerConfigs>> {
        self.broker_configs.iter().find(|c| c.value.node == node)
    }

    /// Whether node `id`'s lease is alive now (see [`NodeLease::alive`]).
    pub fn alive(&self, id: i32) -> bool {
        let now = mono_ms();
        self.node(id).is_some_and(|n| n.alive(now))
    }

    /// Reads everything from the coordination backend.
    pub async fn read(coord: &dyn Coordination) -> CResult<View> {
        let nodes = coord.nodes().await?;
        let topics = coord
            .topics()
            .await?
            .into_iter()
            .map(|t| (t.value.name.clone(), t))
            .collect::<BTreeMap<_, _>>();
        let mut records: HashMap<String, Vec<Option<Versioned<PartitionRecord>>>> = HashMap::new();
        for (key, rec) in coord.partitions().await? {
            let Ok(i) = usize::try_from(key.partition) else {
                continue;
            };
            let list = records.entry(key.topic).or_default();
            if list.len() <= i {
                list.resize(i + 1, None);
            }
            list[i] = Some(rec);
        }
        Ok(View {
            nodes,
            topics,
            records,
            broker_configs: coord.broker_configs().await?,
            security: coord.security().await?,
        })
    }
}
