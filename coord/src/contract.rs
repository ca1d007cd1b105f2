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
        listeners: Default::default(),
        orphans: Default::default(),
        incarnation: Default::default(),
        leaving: false,
    }
}

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec::new(
        name,
        Uuid::new_v4(),
        partitions,
        2,
        BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
    )
}

/// Runs every check against `c`, which must start empty. Panics on the first
/// broken promise, naming it.
pub async fn run(c: &dyn Coordination) {
    let mut changes = c.changes();
    let seen = *changes.borrow_and_update();

    // Node leases: create, renew, lapse. Liveness is judged on this
    // process's monotonic clock from when it saw a renewal, whatever the
    // holder's wall clock said (node 2 claims a time an hour back).
    let lease_ms = 1_500;
    c.renew_node(&node(1), 1_000, lease_ms).await.unwrap();
    c.renew_node(&node(2), 1_000 - 3_600_000, lease_ms)
        .await
        .unwrap();
    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "both leases are listed");
    assert!(
        nodes.iter().all(|l| l.alive(mono_ms())),
        "fresh leases are alive, whatever the holder's clock"
    );
    assert_eq!(nodes[0].info, node(1), "leases carry the node's addresses");
    // Node 1 keeps renewing, node 2 stops: node 2 lapses, node 1 does not.
    let started = mono_ms();
    let mut t = 2_000;
    loop {
        c.renew_node(&node(1), t, lease_ms).await.unwrap();
        t += 100;
        let nodes = c.nodes().await.unwrap();
        let now = mono_ms();
        let n1 = nodes.iter().find(|l| l.info.id == 1).unwrap();
        let n2 = nodes.iter().find(|l| l.info.id == 2).unwrap();
        assert!(n1.alive(now), "a renewed lease stays alive");
        if !n2.alive(now) {
            assert!(
                now - started >= lease_ms - 200,
                "a lease lapses no sooner than its duration after it was seen"
            );
            break;
        }
        assert!(
            now - started < 10 * lease_ms,
            "a lease that is not renewed lapses"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

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

    // One record read alone.
    let key = PartitionKey::new("orders", 0);
    let one = c
        .partition(&key)
        .await
        .unwrap()
        .expect("partition 0 exists");
    assert_eq!(one.value, records[0]);
    assert_eq!(
        c.partition(&PartitionKey::new("orders", 9)).await.unwrap(),
        None,
        "a partition that does not exist"
    );

    // Compare-and-swap on partition records.
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
    // Many at once, skipping those that exist (a retried request).
    c.create_partitions(
        "orders",
        2,
        vec![
            PartitionRecord::new(vec![2, 1]),
            PartitionRecord::new(vec![1]),
            PartitionRecord::new(vec![2]),
        ],
    )
    .await
    .unwrap();
    let grown_parts = c.partitions().await.unwrap();
    assert_eq!(grown_parts.len(), 5);
    assert_eq!(
        c.partition(&k2).await.unwrap().unwrap().value.replicas,
        vec![1, 2],
        "an existing record is left as it was"
    );
    let tv = c.topics().await.unwrap()[0].version;
    let mut grown = t.clone();
    grown.partitions = 5;
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

    // The security record: created once, then replaced by CAS.
    assert_eq!(c.security().await.unwrap(), None);
    let mut sec = SecurityRecord::default();
    sec.users.entry("alice".into()).or_default().insert(
        sluice_security::Mechanism::Sha512,
        sluice_security::ScramCredential::new(sluice_security::Mechanism::Sha512, "pw", 4096)
            .unwrap(),
    );
    let v = c.put_security(sec.clone(), None).await.unwrap();
    assert!(matches!(
        c.put_security(sec.clone(), None).await,
        Err(CoordError::AlreadyExists(_))
    ));
    sec.users.clear();
    let v2 = c.put_security(sec.clone(), Some(v)).await.unwrap();
    assert!(matches!(
        c.put_security(sec.clone(), Some(v)).await,
        Err(CoordError::Conflict(_))
    ));
    let stored = c.security().await.unwrap().unwrap();
    assert_eq!((&stored.value, stored.version), (&sec, v2));

    // Deleting a topic: marked, its nodes say they dropped its data, then
    // it is removed with its partition records.
    let id = c.topics().await.unwrap()[0].value.id;
    c.delete_topic("orders").await.unwrap();
    let marked = c.topics().await.unwrap();
    assert!(marked[0].value.deleting, "a deleted topic is marked first");
    assert_eq!(
        c.partitions().await.unwrap().len(),
        5,
        "records stay meanwhile"
    );
    c.delete_topic("orders").await.unwrap();
    for node in [2, 1, 2] {
        c.topic_dropped("orders", id, node).await.unwrap();
    }
    assert_eq!(
        c.topics().await.unwrap()[0].value.dropped_on,
        vec![1, 2],
        "each node once"
    );
    assert!(matches!(
        c.topic_dropped("orders", Uuid::new_v4(), 1).await,
        Err(CoordError::NotFound(_))
    ));
    c.remove_topic("orders", id).await.unwrap();
    assert!(c.topics().await.unwrap().is_empty());
    assert!(c.partitions().await.unwrap().is_empty());
    assert!(matches!(
        c.delete_topic("orders").await,
        Err(CoordError::NotFound(_))
    ));
}
