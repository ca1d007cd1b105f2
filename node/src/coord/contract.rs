//! The contract every coordination backend passes. Backends call [`run`]
//! from their tests: the in-memory one always, the Kubernetes one whenever a
//! real API server is configured.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::*;

fn node(id: i32) -> NodeInfo {
    NodeInfo {
        id,
        kafka_host: "127.0.0.1".into(),
        kafka_port: 9092 + id as u16,
        replication_addr: format!("127.0.0.1:{}", 19092 + id),
        rack: None,
    }
}

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        id: Uuid::new_v4(),
        partitions,
        replication_factor: 2,
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
    }
}

/// Runs every check against `c`, which must start empty. Panics on the first
/// broken promise, naming it.
pub async fn run(c: &dyn Coordination) {
    let mut changes = c.changes();
    let seen = *changes.borrow_and_update();

    // Node leases: create, renew, lapse.
    c.renew_node(&node(1), 1_000, 10_000).await.unwrap();
    c.renew_node(&node(2), 1_000, 10_000).await.unwrap();
    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "both leases are listed");
    assert!(
        nodes.iter().all(|l| l.alive(5_000)),
        "fresh leases are alive"
    );
    c.renew_node(&node(1), 9_000, 10_000).await.unwrap();
    let nodes = c.nodes().await.unwrap();
    let n1 = nodes.iter().find(|l| l.info.id == 1).unwrap();
    let n2 = nodes.iter().find(|l| l.info.id == 2).unwrap();
    assert!(
        n1.alive(15_000) && !n2.alive(15_000),
        "only the renewed lease outlives its duration"
    );
    assert_eq!(n1.info, node(1), "leases carry the node's addresses");

    // Topics and their partitions are created together.
    let t = spec("orders", 2);
    let records = vec![
        PartitionRecord::new(vec![1, 2]),
        PartitionRecord::new(vec![2, 1]),
    ];
    c.create_topic(t.clone(), records.clone()).await.unwrap();
    assert!(
        matches!(
            c.create_topic(t.clone(), records.clone()).await,
            Err(CoordError::AlreadyExists(_))
        ),
        "a topic cannot be created twice"
    );
    let topics = c.topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].value, t, "the spec round-trips");
    let parts = c.partitions().await.unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].0, PartitionKey::new("orders", 0));
    assert_eq!(parts[0].1.value, records[0]);

    // Compare-and-swap on partition records.
    let key = PartitionKey::new("orders", 0);
    let v0 = parts[0].1.version;
    let mut moved = records[0].clone();
    moved.leader = Some(2);
    moved.leader_epoch = 1;
    moved.isr = vec![2];
    let v1 = c.update_partition(&key, moved.clone(), v0).await.unwrap();
    assert_ne!(v0, v1, "an update yields a new version");
    assert!(
        matches!(
            c.update_partition(&key, records[0].clone(), v0).await,
            Err(CoordError::Conflict(_))
        ),
        "a stale version is refused"
    );
    let parts = c.partitions().await.unwrap();
    assert_eq!(parts[0].1.value, moved, "the refused write changed nothing");
    assert!(
        matches!(
            c.update_partition(&PartitionKey::new("nope", 0), moved.clone(), v1)
                .await,
            Err(CoordError::NotFound(_))
        ),
        "updating a missing record fails"
    );

    // Growing a topic: new partition records, then the spec by CAS.
    let k2 = PartitionKey::new("orders", 2);
    c.create_partition(&k2, PartitionRecord::new(vec![1, 2]))
        .await
        .unwrap();
    assert!(matches!(
        c.create_partition(&k2, PartitionRecord::new(vec![1, 2]))
            .await,
        Err(CoordError::AlreadyExists(_))
    ));
    let tv = c.topics().await.unwrap()[0].version;
    let mut grown = t.clone();
    grown.partitions = 3;
    c.update_topic(grown.clone(), tv).await.unwrap();
    assert!(matches!(
        c.update_topic(grown.clone(), tv).await,
        Err(CoordError::Conflict(_))
    ));

    // Every change was announced.
    assert!(changes.has_changed().unwrap_or(false) || *changes.borrow() != seen);

    // Dynamic broker configs: created once, then replaced by CAS.
    let mut defaults = BrokerConfigs::default();
    defaults
        .configs
        .insert("log.retention.ms".into(), "1000".into());
    let v = c.put_broker_configs(defaults.clone(), None).await.unwrap();
    assert!(matches!(
        c.put_broker_configs(defaults.clone(), None).await,
        Err(CoordError::AlreadyExists(_))
    ));
    let per_node = BrokerConfigs {
        node: Some(2),
        configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
    };
    c.put_broker_configs(per_node.clone(), None).await.unwrap();
    defaults.configs.clear();
    let v2 = c
        .put_broker_configs(defaults.clone(), Some(v))
        .await
        .unwrap();
    assert!(matches!(
        c.put_broker_configs(defaults.clone(), Some(v)).await,
        Err(CoordError::Conflict(_))
    ));
    let stored = c.broker_configs().await.unwrap();
    assert_eq!(stored.len(), 2);
    let d = stored.iter().find(|s| s.value.node.is_none()).unwrap();
    assert_eq!((&d.value, d.version), (&defaults, v2));
    assert!(stored.iter().any(|s| s.value == per_node));

    // Deleting a topic removes its partition records.
    c.delete_topic("orders").await.unwrap();
    assert!(c.topics().await.unwrap().is_empty());
    assert!(c.partitions().await.unwrap().is_empty());
    assert!(matches!(
        c.delete_topic("orders").await,
        Err(CoordError::NotFound(_))
    ));
}
