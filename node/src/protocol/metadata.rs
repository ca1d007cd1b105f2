//! Metadata and DescribeCluster: who the brokers are and where partitions live.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::str_bytes;
use crate::broker::{Broker, Topic};
use crate::config::validate_topic_name;

/// Kafka's "authorized operations not requested" sentinel.
const OPS_NOT_REQUESTED: i32 = i32::MIN;

/// The address clients should use for this node.
pub(crate) fn advertised(broker: &Broker) -> (String, i32) {
    let c = &broker.config;
    let host = c.advertised_host.clone().unwrap_or_else(|| {
        let ip = c.kafka_listen.ip();
        if ip.is_unspecified() {
            // Listening everywhere: the host name is the best guess (a pod's name
            // resolves through its headless Service).
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
        } else {
            ip.to_string()
        }
    });
    let port = c.advertised_port.unwrap_or(c.kafka_listen.port());
    (host, i32::from(port))
}

fn topic_metadata(broker: &Broker, t: &Topic, version: i16) -> MetadataResponseTopic {
    let me = BrokerId(broker.node_id());
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.partition)
                .with_leader_id(me)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(vec![me])
                .with_offline_replicas(vec![])
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

pub fn metadata(broker: &Broker, req: MetadataRequest, version: i16) -> MetadataResponse {
    let (host, port) = advertised(broker);
    let brokers = vec![MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id()))
        .with_host(str_bytes(host))
        .with_port(port)
        .with_rack(broker.config.rack.clone().map(str_bytes))];
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    // Before v4 the request had no flag: brokers auto-created on metadata.
    let allow_auto = version < 4 || req.allow_auto_topic_creation;
    let topics = match requested {
        None => broker
            .topics()
            .iter()
            .map(|t| topic_metadata(broker, t, version))
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|rt| {
                let by_name = rt.name.clone().map(|n| n.0.to_string());
                match by_name {
                    Some(name) => {
                        if let Some(t) = broker.topic(&name) {
                            return topic_metadata(broker, &t, version);
                        }
                        if validate_topic_name(&name).is_err() {
                            return topic_error(
                                rt.name,
                                Uuid::nil(),
                                ResponseError::InvalidTopicException,
                                version,
                            );
                        }
                        if allow_auto && broker.config.auto_create_topics {
                            match broker.auto_create(&name) {
                                Ok(t) => return topic_metadata(broker, &t, version),
                                Err(e) => {
                                    return topic_error(rt.name, Uuid::nil(), e.code, version)
                                }
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
                        Some(t) => topic_metadata(broker, &t, version),
                        None => {
                            topic_error(None, rt.topic_id, ResponseError::UnknownTopicId, version)
                        }
                    },
                }
            })
            .collect(),
    };
    let mut resp = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 2 {
        resp.cluster_id = Some(str_bytes(broker.cluster_id.clone()));
    }
    if version >= 1 {
        resp.controller_id = BrokerId(broker.node_id());
    }
    for t in resp.topics.iter_mut() {
        t.topic_authorized_operations = OPS_NOT_REQUESTED;
    }
    resp.cluster_authorized_operations = OPS_NOT_REQUESTED;
    resp
}

pub fn describe_cluster(
    broker: &Broker,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let (host, port) = advertised(broker);
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
        .with_cluster_authorized_operations(OPS_NOT_REQUESTED)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(broker.node_id()))
            .with_host(str_bytes(host))
            .with_port(port)
            .with_rack(broker.config.rack.clone().map(str_bytes))])
}
