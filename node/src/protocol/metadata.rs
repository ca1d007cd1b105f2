//! Metadata and DescribeCluster: who the brokers are and where partitions live.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;

use super::{ops, str_bytes, Client, Services};
use crate::broker::{mono_ms, Broker, Topic};
use crate::config::validate_topic_name;
use crate::coord::View;
use sluice_security::acl::CLUSTER_NAME;
use sluice_security::{Operation, ResourceType};

/// The address clients of `listener` should use for this node.
pub(crate) fn advertised_for(broker: &Broker, listener: &str) -> (String, i32) {
    let s = &broker.config.security;
    match s.extra_listeners.iter().find(|l| l.name == listener) {
        Some(l) => match &l.advertised {
            Some((host, port)) => (host.clone(), i32::from(*port)),
            None => (bind_host(l.addr.ip()), i32::from(l.addr.port())),
        },
        None => advertised(broker),
    }
}

/// The host to advertise for a bound address.
fn bind_host(ip: std::net::IpAddr) -> String {
    if ip.is_unspecified() {
        // Listening everywhere: the host name is the best guess (a pod's name
        // resolves through its headless Service).
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
    } else {
        ip.to_string()
    }
}

/// The address clients of the primary listener should use for this node.
pub(crate) fn advertised(broker: &Broker) -> (String, i32) {
    let c = &broker.config;
    let host = c
        .advertised_host
        .clone()
        .unwrap_or_else(|| bind_host(c.kafka_listen.ip()));
    let port = c.advertised_port.unwrap_or(c.kafka_listen.port());
    (host, i32::from(port))
}

fn topic_metadata(view: &View, t: &Topic, version: i16) -> MetadataResponseTopic {
    let ids = |v: &[i32]| v.iter().map(|r| BrokerId(*r)).collect::<Vec<_>>();
    let partitions = (0..t.record.partitions)
        .map(|i| {
            let p = MetadataResponsePartition::default().with_partition_index(i);
            match view.record(&t.record.name, i) {
                Some(r) => {
                    let r = &r.value;
                    let offline: Vec<i32> = r
                        .replicas
                        .iter()
                        .copied()
                        .filter(|n| !view.alive(*n))
                        .collect();
                    let p = p
                        .with_leader_id(BrokerId(r.leader.unwrap_or(-1)))
                        .with_leader_epoch(r.leader_epoch)
                        .with_replica_nodes(ids(&r.replicas))
                        .with_isr_nodes(ids(&r.isr))
                        .with_offline_replicas(ids(&offline));
                    if r.leader.is_none() {
                        p.with_error_code(ResponseError::LeaderNotAvailable.code())
                    } else {
                        p
                    }
                }
                None => p
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(-1),
            }
        })
        .collect();
    let mut out = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(t.record.name.clone()))))
        .with_is_internal(t.record.name.starts_with("__"))
        .with_partitions(partitions);
    if version >= 10 {
        out.topic_id = t.record.id;
    }
    out
}

/// The live nodes as Metadata lists them to clients of `listener` (this
/// node alone before it has read the cluster).
fn brokers(
    broker: &Broker,
    view: &View,
    now: i64,
    listener: &str,
) -> Vec<(i32, String, i32, Option<String>)> {
    let mut out: Vec<_> = view
        .nodes
        .iter()
        .filter(|n| n.alive(now))
        .map(|n| {
            let (host, port) = n.info.address(listener);
            (
                n.info.id,
                host.to_string(),
                i32::from(port),
                n.info.rack.clone(),
            )
        })
        .collect();
    if !out.iter().any(|b| b.0 == broker.node_id()) {
        let (host, port) = advertised_for(broker, listener);
        out.push((broker.node_id(), host, port, broker.config.rack.clone()));
    }
    out.sort();
    out
}

fn topic_error(
    name: Option<TopicName>,
    id: Uuid,
    code: ResponseError,
    version: i16,
) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default()
        .with_error_code(code.code())
        .with_name(name);
    if version >= 10 {
        t.topic_id = id;
    }
    t
}

pub async fn metadata(
    svc: &Services,
    req: MetadataRequest,
    version: i16,
    client: &Client,
) -> MetadataResponse {
    let broker = &svc.broker;
    let now = mono_ms();
    let listed = brokers(broker, &broker.view(), now, &client.listener)
        .into_iter()
        .map(|(id, host, port, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(port)
                .with_rack(rack.map(str_bytes))
        })
        .collect();
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    // Before v4 the request had no flag: brokers auto-created on metadata.
    let allow_auto = version < 4 || req.allow_auto_topic_creation;
    let topics = match requested {
        None => {
            let view = broker.view();
            // Topics the principal may not describe are left out.
            broker
                .topics()
                .iter()
                .filter(|t| svc.authorize_topic(client, Operation::Describe, &t.record.name))
                .map(|t| topic_metadata(&view, t, version))
                .collect()
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for rt in list {
                out.push(requested_topic(svc, client, rt, allow_auto, version).await);
            }
            out
        }
    };
    let mut resp = MetadataResponse::default()
        .with_brokers(listed)
        .with_topics(topics);
    if version >= 2 {
        resp.cluster_id = Some(str_bytes(broker.cluster_id.clone()));
    }
    if version >= 1 {
        // Any node carries out admin requests; clients that send them to
        // "the controller" reach this one.
        resp.controller_id = BrokerId(broker.node_id());
    }
    let topic_ops = ops::when(
        version >= 8 && req.include_topic_authorized_operations,
        ops::TOPIC,
    );
    for t in resp.topics.iter_mut() {
        t.topic_authorized_operations = match &t.name {
            Some(name) if t.error_code == 0 => {
                svc.authorized_ops(client, ResourceType::Topic, name, topic_ops)
            }
            _ => ops::NOT_REQUESTED,
        };
    }
    resp.cluster_authorized_operations = svc.authorized_ops(
        client,
        ResourceType::Cluster,
        CLUSTER_NAME,
        ops::when(
            (8..=10).contains(&version) && req.include_cluster_authorized_operations,
            ops::CLUSTER,
        ),
    );
    resp
}

/// One topic a Metadata request names, auto-created when allowed.
async fn requested_topic(
    svc: &Services,
    client: &Client,
    rt: MetadataRequestTopic,
    allow_auto: bool,
    version: i16,
) -> MetadataResponseTopic {
    let broker = &svc.broker;
    let by_name = rt.name.clone().map(|n| n.0.to_string());
    match by_name {
        Some(name) => {
            let describe = svc.authorize_topic(client, Operation::Describe, &name);
            if let Some(t) = broker.topic(&name) {
                if !describe {
                    return topic_error(
                        rt.name,
                        Uuid::nil(),
                        ResponseError::TopicAuthorizationFailed,
                        version,
                    );
                }
                return topic_metadata(&broker.view(), &t, version);
            }
            // As Kafka: without DESCRIBE the client learns nothing of the
            // name; creating it needs CREATE on the cluster or the topic.
            let create = svc.authorize_cluster(client, Operation::Create)
                || svc.authorize_topic(client, Operation::Create, &name);
            let auto = allow_auto && broker.config.auto_create_topics;
            if !describe || (auto && !create) {
                return topic_error(
                    rt.name,
                    Uuid::nil(),
                    ResponseError::TopicAuthorizationFailed,
                    version,
                );
            }
            if validate_topic_name(&name).is_err() {
                return topic_error(
                    rt.name,
                    Uuid::nil(),
                    ResponseError::InvalidTopicException,
                    version,
                );
            }
            if auto {
                match broker.auto_create(&name).await {
                    Ok(t) => return topic_metadata(&broker.view(), &t, version),
                    Err(e) => return topic_error(rt.name, Uuid::nil(), e.code, version),
                }
            }
            topic_error(
                rt.name,
                Uuid::nil(),
                ResponseError::UnknownTopicOrPartition,
                version,
            )
        }
        None => match broker.topic_by_id(&rt.topic_id) {
            Some(t) if !svc.authorize_topic(client, Operation::Describe, &t.record.name) => {
                topic_error(
                    None,
                    rt.topic_id,
                    ResponseError::TopicAuthorizationFailed,
                    version,
                )
            }
            Some(t) => topic_metadata(&broker.view(), &t, version),
            None => topic_error(None, rt.topic_id, ResponseError::UnknownTopicId, version),
        },
    }
}

pub fn describe_cluster(
    broker: &Broker,
    req: DescribeClusterRequest,
    version: i16,
    listener: &str,
) -> DescribeClusterResponse {
    let now = mono_ms();
    let mut resp = DescribeClusterResponse::default();
    if version >= 1 {
        resp.endpoint_type = req.endpoint_type;
        // 1 = brokers. Controller endpoints (2) are for KRaft controllers,
        // which Sluice does not have; Kafka brokers refuse them the same way.
        if req.endpoint_type != 1 {
            return resp
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(str_bytes("only broker endpoints (type 1) are served")));
        }
    }
    resp.with_cluster_id(str_bytes(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.node_id()))
        .with_cluster_authorized_operations(ops::when(
            req.include_cluster_authorized_operations,
            ops::CLUSTER,
        ))
        .with_brokers(
            brokers(broker, &broker.view(), now, listener)
                .into_iter()
                .map(|(id, host, port, rack)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(str_bytes(host))
                        .with_port(port)
                        .with_rack(rack.map(str_bytes))
                })
                .collect(),
        )
}

/// Kafka's cap on partitions in one DescribeTopicPartitions answer
/// (`max.request.partition.size.limit`).
const PARTITION_LIMIT: i32 = 2000;

/// DescribeTopicPartitions (KIP-966): partitions of the named topics (all
/// topics when none are named), in name then partition order, at most
/// `response_partition_limit` of them, resuming at `cursor`; `next_cursor`
/// says where the next page starts. Sluice keeps no eligible leader
/// replicas (ELR), so those lists are empty.
pub fn describe_topic_partitions(
    svc: &Services,
    req: DescribeTopicPartitionsRequest,
    _version: i16,
    client: &Client,
) -> DescribeTopicPartitionsResponse {
    let broker = &svc.broker;
    let listing = req.topics.is_empty();
    use kafka_protocol::messages::describe_topic_partitions_response::{
        Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
    };
    let view = broker.view();
    let mut names: Vec<String> = if req.topics.is_empty() {
        broker
            .topics()
            .iter()
            .map(|t| t.record.name.clone())
            .collect()
    } else {
        req.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let limit = match req.response_partition_limit {
        l if l <= 0 => PARTITION_LIMIT,
        l => l.min(PARTITION_LIMIT),
    } as usize;
    let (from_topic, from_partition) = match &req.cursor {
        Some(c) => (Some(c.topic_name.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    let mut topics = Vec::new();
    let mut taken = 0usize;
    let mut next_cursor = None;
    for name in names {
        if from_topic.as_ref().is_some_and(|f| name < *f) {
            continue;
        }
        let first = if from_topic.as_ref() == Some(&name) {
            from_partition
        } else {
            0
        };
        let tn = TopicName(str_bytes(name.clone()));
        if !svc.authorize_topic(client, Operation::Describe, &name) {
            if !listing {
                topics.push(
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_name(Some(tn))
                        .with_topic_authorized_operations(ops::NOT_REQUESTED),
                );
            }
            continue;
        }
        let Some(t) = broker.topic(&name) else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_name(Some(tn))
                    .with_topic_authorized_operations(ops::NOT_REQUESTED),
            );
            continue;
        };
        if taken >= limit {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(tn)
                    .with_partition_index(first),
            );
            break;
        }
        let md = topic_metadata(&view, &t, 12);
        let mut partitions = Vec::new();
        for p in md.partitions.into_iter().skip(first as usize) {
            if taken >= limit {
                next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(tn.clone())
                        .with_partition_index(p.partition_index),
                );
                break;
            }
            taken += 1;
            partitions.push(
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_leader_id(p.leader_id)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replica_nodes)
                    .with_isr_nodes(p.isr_nodes)
                    .with_eligible_leader_replicas(Some(vec![]))
                    .with_last_known_elr(Some(vec![]))
                    .with_offline_replicas(p.offline_replicas),
            );
        }
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(tn))
                .with_topic_id(t.record.id)
                .with_is_internal(md.is_internal)
                .with_partitions(partitions)
                .with_topic_authorized_operations(ops::TOPIC),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}
