//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{
    create_partitions_response::CreatePartitionsTopicResult, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, TopicName,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    DescribeProducersRequest, DescribeProducersResponse, ElectLeadersRequest, ElectLeadersResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use super::Authz;
use crate::broker::{Broker, KafkaError, NewTopic, Topic};
use crate::config::{
    topic_config_doc, topic_config_keys, topic_config_type, topic_key_of_broker_config,
    ConfigSource, DYNAMIC_BROKER_CONFIGS,
};
use sluice_security::Operation;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Turns a create request's topic into a [`NewTopic`], applying defaults and
/// checking a manual replica assignment.
fn new_topic(
    broker: &Broker,
    ct: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, KafkaError> {
    let name = ct.name.0.to_string();
    let mut configs = BTreeMap::new();
    for c in &ct.configs {
        if let Some(v) = &c.value {
            configs.insert(c.name.to_string(), v.to_string());
        }
    }
    let (partitions, replication_factor) = if ct.assignments.is_empty() {
        (
            if ct.num_partitions == -1 {
                broker.config.num_partitions
            } else {
                ct.num_partitions
            },
            if ct.replication_factor == -1 {
                broker.config.default_replication_factor
            } else {
                ct.replication_factor
            },
        )
    } else {
        if ct.num_partitions != -1 || ct.replication_factor != -1 {
            return Err(KafkaError::new(
                ResponseError::InvalidRequest,
                "a manual replica assignment requires num_partitions and replication_factor of -1",
            ));
        }
        let mut seen: Vec<i32> = ct.assignments.iter().map(|a| a.partition_index).collect();
        seen.sort_unstable();
        if seen.iter().enumerate().any(|(i, p)| *p != i as i32) {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicaAssignment,
                "assigned partitions must be numbered 0..n without gaps",
            ));
        }
        let rf = ct.assignments[0].broker_ids.len();
        for a in &ct.assignments {
            if a.broker_ids.len() != rf {
                return Err(KafkaError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "partition {} is assigned to {:?}; every partition must have the same number of replicas",
                        a.partition_index,
                        a.broker_ids.iter().map(|b| b.0).collect::<Vec<_>>(),
                    ),
                ));
            }
        }
        (ct.assignments.len() as i32, rf as i16)
    };
    let assignment = (!ct.assignments.is_empty()).then(|| {
        let mut a: Vec<_> = ct.assignments.iter().collect();
        a.sort_by_key(|a| a.partition_index);
        a.iter()
            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
            .collect()
    });
    Ok(NewTopic {
        name,
        partitions,
        replication_factor,
        configs,
        assignment,
    })
}

fn described_configs(broker: &Broker, t: &Topic) -> Vec<CreatableTopicConfigs> {
    topic_config_keys()
        .map(|k| {
            let (value, source) = topic_value(broker, t, k);
            CreatableTopicConfigs::default()
                .with_name(str_bytes(k))
                .with_value(Some(str_bytes(value)))
                .with_config_source(source as i8)
        })
        .collect()
}

fn topic_value(broker: &Broker, t: &Topic, key: &str) -> (String, ConfigSource) {
    match t.record.configs.get(key) {
        Some(v) => (v.clone(), ConfigSource::DynamicTopic),
        None => broker
            .defaults()
            .default_value(key)
            .expect("every topic config key has a default"),
    }
}

/// The broker config that defaults a topic config, if any.
fn broker_key_of(topic_key: &str) -> Option<&'static str> {
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .find(|(_, t)| *t == topic_key)
        .map(|(b, _)| *b)
}

/// Kafka's synonym chain of a topic config, most specific first: the
/// topic's own value, this node's dynamic config, the cluster-wide dynamic
/// config, the static or built-in default (the last three under the
/// broker config's name).
fn synonyms(
    broker: &Broker,
    topic_key: &str,
    topic_value: Option<&String>,
) -> Vec<DescribeConfigsSynonym> {
    let syn = |name: &str, value: &str, source: ConfigSource| {
        DescribeConfigsSynonym::default()
            .with_name(str_bytes(name))
            .with_value(Some(str_bytes(value)))
            .with_source(source as i8)
    };
    let mut out = Vec::new();
    if let Some(v) = topic_value {
        out.push(syn(topic_key, v, ConfigSource::DynamicTopic));
    }
    let bkey = broker_key_of(topic_key);
    if let Some(b) = bkey {
        for (node, source) in [
            (Some(broker.node_id()), ConfigSource::DynamicBroker),
            (None, ConfigSource::DynamicDefaultBroker),
        ] {
            if let Some(v) = broker.dynamic_broker_configs(node).get(b) {
                out.push(syn(b, v, source));
            }
        }
    }
    if let Some((v, source)) = broker.config.defaults.static_default(topic_key) {
        out.push(syn(bkey.unwrap_or(topic_key), &v, source));
    }
    out
}

/// A broker resource's name: "" is the cluster-wide default, a number one node.
fn broker_resource(name: &str) -> Result<Option<i32>, KafkaError> {
    if name.is_empty() {
        return Ok(None);
    }
    name.parse().map(Some).map_err(|_| {
        KafkaError::new(
            ResponseError::InvalidRequest,
            format!(
                "broker resource {name:?} is neither a node id nor \"\" (the cluster-wide default)"
            ),
        )
    })
}

/// DescribeConfigs of a broker resource: this node's configs (static ones
/// read-only, dynamic ones with where their value comes from), or for ""
/// the cluster-wide dynamic defaults.
fn broker_entries(
    broker: &Broker,
    node: Option<i32>,
    wanted: &dyn Fn(&str) -> bool,
    include_synonyms: bool,
    include_documentation: bool,
    version: i16,
) -> Vec<DescribeConfigsResourceResult> {
    if node.is_none() {
        return broker
            .dynamic_broker_configs(None)
            .into_iter()
            .filter(|(k, _)| wanted(k))
            .map(|(k, v)| {
                let ty = topic_key_of_broker_config(&k)
                    .map(topic_config_type)
                    .unwrap_or(2);
                entry(
                    &k,
                    v,
                    ConfigSource::DynamicDefaultBroker,
                    false,
                    ty,
                    version,
                )
            })
            .collect();
    }
    let mut out: Vec<DescribeConfigsResourceResult> = broker
        .config
        .broker_configs()
        .into_iter()
        .filter(|(k, _, _)| topic_key_of_broker_config(k).is_none() && wanted(k))
        .map(|(k, v, ty)| entry(k, v, ConfigSource::StaticBroker, true, ty, version))
        .collect();
    let defaults = broker.defaults();
    for (bkey, tkey) in DYNAMIC_BROKER_CONFIGS {
        if !wanted(bkey) {
            continue;
        }
        let (v, source) = defaults.default_value(tkey).expect("known key");
        let mut e = entry(bkey, v, source, false, topic_config_type(tkey), version);
        if include_synonyms {
            e.synonyms = synonyms(broker, tkey, None);
        }
        if version >= 3 && include_documentation {
            e.documentation = topic_config_doc(tkey)
                .map(|d| str_bytes(format!("Default of the topic config {tkey}. {d}")));
        }
        out.push(e);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn create_topics(
    broker: &Broker,
    req: CreateTopicsRequest,
    version: i16,
    authz: &Authz<'_>,
) -> CreateTopicsResponse {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *counts.entry(t.name.0.to_string()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(req.topics.len());
    for ct in &req.topics {
        let name = ct.name.0.to_string();
        let outcome = if counts[&name] > 1 {
            Err(KafkaError::new(
                ResponseError::InvalidRequest,
                format!("topic {name} appears more than once in the request"),
            ))
        } else if let Err(e) = authz.create_topic(&name) {
            Err(e)
        } else {
            match new_topic(broker, ct) {
                Err(e) => Err(e),
                Ok(nt) if req.validate_only => broker.plan_new_topic(&nt).await.map(|_| None),
                Ok(nt) => broker.create_topic(nt).await.map(Some),
            }
        };
        let mut r = CreatableTopicResult::default().with_name(ct.name.clone());
        match outcome {
            Ok(created) => {
                if version >= 5 {
                    match &created {
                        Some(t) => {
                            r.num_partitions = t.record.partitions;
                            r.replication_factor = t.record.replication_factor;
                            r.configs = Some(described_configs(broker, t));
                        }
                        None => {
                            if let Ok(nt) = new_topic(broker, ct) {
                                r.num_partitions = nt.partitions;
                                r.replication_factor = nt.replication_factor;
                            }
                        }
                    }
                }
                if version >= 7 {
                    if let Some(t) = &created {
                        r.topic_id = t.record.id;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(topic = %name, error = %e, "create topic refused");
                r.error_code = e.code();
                r.error_message = Some(str_bytes(e.message));
            }
        }
        results.push(r);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    broker: &Broker,
    req: DeleteTopicsRequest,
    version: i16,
    authz: &Authz<'_>,
) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let wanted: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        responses.push({
            let resolved = match &name {
                Some(n) => Ok(n.0.to_string()),
                None => broker
                    .topic_by_id(&id)
                    .map(|t| t.record.name.clone())
                    .ok_or_else(|| {
                        KafkaError::new(
                            ResponseError::UnknownTopicId,
                            format!("no topic has id {id}"),
                        )
                    }),
            };
            let result = match resolved {
                Ok(n) => match authz.topic(Operation::Delete, &n) {
                    Ok(()) => broker.delete_topic(&n).await.map(|id| (n, id)),
                    // Named by id: the refusal does not tell the name.
                    Err(e) if name.is_none() => Err(KafkaError::new(
                        e.code,
                        "DELETE on the topic is needed".to_string(),
                    )),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let mut r = DeletableTopicResult::default();
            match result {
                Ok((n, deleted_id)) => {
                    r.name = Some(TopicName(str_bytes(n)));
                    if version >= 6 {
                        r.topic_id = deleted_id;
                    }
                }
                Err(e) => {
                    r.name = name;
                    if version >= 6 {
                        r.topic_id = id;
                    }
                    r.error_code = e.code();
                    if version >= 5 {
                        r.error_message = Some(str_bytes(e.message));
                    }
                }
            }
            r
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Broker,
    req: CreatePartitionsRequest,
    _version: i16,
    authz: &Authz<'_>,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let assignment = t.assignments.as_ref().filter(|a| !a.is_empty()).map(|a| {
            a.iter()
                .map(|p| p.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        let result = match authz.topic(Operation::Alter, &name) {
            Ok(()) => {
                broker
                    .create_partitions(&name, t.count, assignment, req.validate_only)
                    .await
            }
            Err(e) => Err(e),
        };
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err(e) = result {
            r.error_code = e.code();
            r.error_message = Some(str_bytes(e.message));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}

fn entry(
    name: &str,
    value: String,
    source: ConfigSource,
    read_only: bool,
    config_type: i8,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_read_only(read_only)
        .with_config_source(source as i8);
    if version >= 3 {
        e.config_type = config_type;
    }
    e
}

pub fn describe_configs(
    broker: &Broker,
    req: DescribeConfigsRequest,
    version: i16,
    authz: &Authz<'_>,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let name = res.resource_name.to_string();
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.is_empty() || keys.iter().any(|w| w.as_str() == k))
            };
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let allowed = match res.resource_type {
                RESOURCE_TOPIC => authz.topic(Operation::DescribeConfigs, &name),
                RESOURCE_BROKER => authz.cluster(Operation::DescribeConfigs),
                _ => Ok(()),
            };
            if let Err(e) = allowed {
                out.error_code = e.code();
                out.error_message = Some(str_bytes(e.message));
                return out;
            }
            match res.resource_type {
                RESOURCE_TOPIC => match broker.topic(&name) {
                    None => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code();
                        out.error_message = Some(str_bytes(format!("topic {name} does not exist")));
                    }
                    Some(t) => {
                        out.configs = topic_config_keys()
                            .filter(|k| wanted(k))
                            .map(|k| {
                                let (value, source) = topic_value(broker, &t, k);
                                let mut e = entry(
                                    k,
                                    value.clone(),
                                    source,
                                    false,
                                    topic_config_type(k),
                                    version,
                                );
                                if req.include_synonyms {
                                    e.synonyms = synonyms(broker, k, t.record.configs.get(k));
                                }
                                if version >= 3 && req.include_documentation {
                                    e.documentation = topic_config_doc(k).map(str_bytes);
                                }
                                e
                            })
                            .collect();
                    }
                },
                RESOURCE_BROKER if name.is_empty() || name == broker.node_id().to_string() => {
                    let node = (!name.is_empty()).then(|| broker.node_id());
                    out.configs = broker_entries(
                        broker,
                        node,
                        &wanted,
                        req.include_synonyms,
                        req.include_documentation,
                        version,
                    );
                }
                RESOURCE_BROKER => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(str_bytes(format!(
                        "broker {name} is not this node ({})",
                        broker.node_id()
                    )));
                }
                other => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(str_bytes(format!(
                        "resource type {other} is not supported; topics (2) and brokers (4) are"
                    )));
                }
            }
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// `denied`: topics the principal may not delete records of.
pub fn delete_records(
    broker: &Broker,
    req: DeleteRecordsRequest,
    _version: i16,
    denied: &[String],
) -> DeleteRecordsResponse {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    let deleted = if denied.contains(&name) {
                        Err(KafkaError::new(
                            ResponseError::TopicAuthorizationFailed,
                            format!("DELETE on topic {name} is needed"),
                        ))
                    } else {
                        broker.delete_records(&name, p.partition_index, p.offset)
                    };
                    match deleted {
                        Ok(low) => r.with_low_watermark(low),
                        Err(e) => r.with_low_watermark(-1).with_error_code(e.code()),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

fn alter_response<R: Default>(
    name: StrBytes,
    resource_type: i8,
    result: Result<(), KafkaError>,
    make: impl FnOnce(i16, Option<StrBytes>, i8, StrBytes) -> R,
) -> R {
    match result {
        Ok(()) => make(0, None, resource_type, name),
        Err(e) => make(e.code(), Some(str_bytes(e.message)), resource_type, name),
    }
}

fn unsupported_resource(t: i8) -> KafkaError {
    KafkaError::new(
        ResponseError::InvalidRequest,
        format!("resource type {t} cannot be altered; topics (2) and brokers (4) can"),
    )
}

/// AlterConfigs: the given set replaces the topic's dynamic configs.
pub async fn alter_configs(
    broker: &Broker,
    req: AlterConfigsRequest,
    _version: i16,
    authz: &Authz<'_>,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        responses.push({
            // AlterConfigs replaces the set: only entries with a value count.
            let configs: BTreeMap<String, String> = r
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect();
            let result = match r.resource_type {
                RESOURCE_TOPIC => match authz.topic(Operation::AlterConfigs, &r.resource_name) {
                    Ok(()) => {
                        broker
                            .alter_topic_configs(&r.resource_name, configs, req.validate_only)
                            .await
                    }
                    Err(e) => Err(e),
                },
                RESOURCE_BROKER if authz.cluster(Operation::AlterConfigs).is_err() => {
                    authz.cluster(Operation::AlterConfigs)
                }
                RESOURCE_BROKER => match broker_resource(&r.resource_name) {
                    Ok(node) => {
                        broker
                            .alter_broker_configs(node, configs, req.validate_only)
                            .await
                    }
                    Err(e) => Err(e),
                },
                other => Err(unsupported_resource(other)),
            };
            alter_response(
                r.resource_name,
                r.resource_type,
                result,
                |code, msg, t, name| {
                    AlterConfigsResourceResponse::default()
                        .with_error_code(code)
                        .with_error_message(msg)
                        .with_resource_type(t)
                        .with_resource_name(name)
                },
            )
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Applies one IncrementalAlterConfigs operation to a topic's dynamic
/// configs, or a broker's (`broker_resource`: keys are broker config names).
fn apply_op(
    broker: &Broker,
    configs: &mut BTreeMap<String, String>,
    op: i8,
    key: &str,
    value: Option<&str>,
    broker_resource: bool,
) -> Result<(), KafkaError> {
    let topic_key = if broker_resource {
        topic_key_of_broker_config(key).unwrap_or(key)
    } else {
        key
    };
    let bad = |m: &str| KafkaError::new(ResponseError::InvalidConfig, format!("{key}: {m}"));
    match op {
        OP_SET => {
            let v = value.ok_or_else(|| bad("SET needs a value"))?;
            configs.insert(key.to_string(), v.to_string());
        }
        OP_DELETE => {
            configs.remove(key);
        }
        OP_APPEND | OP_SUBTRACT => {
            if !crate::config::is_list_config(topic_key) {
                return Err(bad("APPEND and SUBTRACT apply to list configs only"));
            }
            let v = value.ok_or_else(|| bad("a value is required"))?;
            let current = configs.get(key).cloned().unwrap_or_else(|| {
                broker
                    .defaults()
                    .default_value(topic_key)
                    .map(|(v, _)| v)
                    .unwrap_or_default()
            });
            let mut items: Vec<String> = current
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            for item in v.split(',').filter(|s| !s.is_empty()) {
                if op == OP_SUBTRACT {
                    items.retain(|i| i != item);
                } else if !items.iter().any(|i| i == item) {
                    items.push(item.to_string());
                }
            }
            configs.insert(key.to_string(), items.join(","));
        }
        other => {
            return Err(KafkaError::new(
                ResponseError::InvalidRequest,
                format!("unknown config operation {other}"),
            ))
        }
    }
    Ok(())
}

/// Every operation of one IncrementalAlterConfigs resource applied to a
/// copy of its current configs; the first bad one refuses them all.
fn apply_ops(
    broker: &Broker,
    mut configs: BTreeMap<String, String>,
    ops: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
    broker_resource: bool,
) -> Result<BTreeMap<String, String>, KafkaError> {
    for c in ops {
        apply_op(
            broker,
            &mut configs,
            c.config_operation,
            &c.name,
            c.value.as_deref(),
            broker_resource,
        )?;
    }
    Ok(configs)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT applied to the
/// topic's current dynamic configs, all or nothing.
pub async fn incremental_alter_configs(
    broker: &Broker,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
    authz: &Authz<'_>,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        responses.push({
            let result = match r.resource_type {
                RESOURCE_TOPIC
                    if authz
                        .topic(Operation::AlterConfigs, &r.resource_name)
                        .is_err() =>
                {
                    authz.topic(Operation::AlterConfigs, &r.resource_name)
                }
                RESOURCE_BROKER if authz.cluster(Operation::AlterConfigs).is_err() => {
                    authz.cluster(Operation::AlterConfigs)
                }
                RESOURCE_TOPIC => match broker.topic(&r.resource_name) {
                    None => Err(KafkaError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic {} does not exist", r.resource_name.as_str()),
                    )),
                    Some(t) => match apply_ops(broker, t.record.configs.clone(), &r.configs, false)
                    {
                        Ok(configs) => {
                            broker
                                .alter_topic_configs(&r.resource_name, configs, req.validate_only)
                                .await
                        }
                        Err(e) => Err(e),
                    },
                },
                RESOURCE_BROKER => match broker_resource(&r.resource_name) {
                    Ok(node) => {
                        match apply_ops(
                            broker,
                            broker.dynamic_broker_configs(node),
                            &r.configs,
                            true,
                        ) {
                            Ok(configs) => {
                                broker
                                    .alter_broker_configs(node, configs, req.validate_only)
                                    .await
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                },
                other => Err(unsupported_resource(other)),
            };
            alter_response(
                r.resource_name,
                r.resource_type,
                result,
                |code, msg, t, name| {
                    AlterConfigsResourceResponse::default()
                        .with_error_code(code)
                        .with_error_message(msg)
                        .with_resource_type(t)
                        .with_resource_name(name)
                },
            )
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// DescribeLogDirs: one log directory (the node's RocksDB), with each
/// partition's size.
pub fn describe_log_dirs(
    broker: &Broker,
    req: DescribeLogDirsRequest,
    _version: i16,
) -> DescribeLogDirsResponse {
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
    };
    let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let topics = broker
        .topics()
        .into_iter()
        .filter_map(|t| {
            let parts: Vec<i32> = match &wanted {
                None => (0..t.record.partitions).collect(),
                Some(w) => w.iter().find(|(n, _)| *n == t.record.name)?.1.clone(),
            };
            let partitions = parts
                .into_iter()
                .filter_map(|p| t.partition(p))
                .map(|log| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(log.partition)
                        .with_partition_size(log.size_bytes())
                        .with_offset_lag(0)
                })
                .collect();
            Some(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(str_bytes(t.record.name.clone())))
                    .with_partitions(partitions),
            )
        })
        .collect();
    let dir = broker.config.data_dir.join("rocksdb").display().to_string();
    DescribeLogDirsResponse::default().with_results(vec![DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(dir))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1)])
}

/// DescribeProducers: the idempotent producers each partition knows.
pub fn describe_producers(
    broker: &Broker,
    req: DescribeProducersRequest,
    _version: i16,
    authz: &Authz<'_>,
) -> DescribeProducersResponse {
    use kafka_protocol::messages::describe_producers_response::{
        PartitionResponse, ProducerState, TopicResponse,
    };
    use kafka_protocol::messages::ProducerId;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(&t.name);
            let denied = authz.topic(Operation::Read, &t.name).err();
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let r = PartitionResponse::default().with_partition_index(*p);
                    if let Some(e) = &denied {
                        return r
                            .with_error_code(e.code())
                            .with_error_message(Some(str_bytes(e.message.clone())));
                    }
                    match topic.as_ref().and_then(|tp| tp.partition(*p)) {
                        None => r
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!(
                                "{}-{p} does not exist",
                                t.name.as_str()
                            )))),
                        Some(log) => {
                            let open: std::collections::HashMap<i64, i64> =
                                log.open_transactions().into_iter().collect();
                            r.with_active_producers(
                                log.producers()
                                    .into_iter()
                                    .map(|(id, epoch, seq, ts)| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(id))
                                            .with_producer_epoch(i32::from(epoch))
                                            .with_last_sequence(seq)
                                            .with_last_timestamp(ts)
                                            .with_coordinator_epoch(-1)
                                            .with_current_txn_start_offset(
                                                open.get(&id).copied().unwrap_or(-1),
                                            )
                                    })
                                    .collect(),
                            )
                        }
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// ElectLeaders: preferred (0) or unclean (1) elections, carried out by the
/// controller's rules. A null topic list means every partition; then only
/// partitions where an election was needed are reported, as in Kafka.
pub async fn elect_leaders(
    broker: &Broker,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    use kafka_protocol::messages::elect_leaders_response::{
        PartitionResult, ReplicaElectionResult,
    };
    let election_type = if version >= 1 { req.election_type } else { 0 };
    let mut resp = ElectLeadersResponse::default();
    if !matches!(election_type, 0 | 1) {
        resp.error_code = ResponseError::InvalidRequest.code();
        return resp;
    }
    let all = req.topic_partitions.is_none();
    let wanted: Vec<(TopicName, Vec<i32>)> = match req.topic_partitions {
        Some(list) => list.into_iter().map(|t| (t.topic, t.partitions)).collect(),
        None => broker
            .topics()
            .iter()
            .filter(|t| !crate::broker::is_internal(&t.record.name))
            .map(|t| {
                (
                    TopicName(str_bytes(t.record.name.clone())),
                    (0..t.record.partitions).collect(),
                )
            })
            .collect(),
    };
    for (topic, partitions) in wanted {
        let mut results = vec![];
        for p in partitions {
            let r = if broker.topic(topic.0.as_str()).is_none() {
                Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {} does not exist", topic.as_str()),
                ))
            } else {
                broker
                    .elect_leader(topic.0.as_str(), p, election_type == 0)
                    .await
            };
            let (code, message) = match r {
                Ok(()) => (0, None),
                Err(e) if all && e.code == ResponseError::ElectionNotNeeded => continue,
                Err(e) => (e.code(), Some(str_bytes(e.message))),
            };
            results.push(
                PartitionResult::default()
                    .with_partition_id(p)
                    .with_error_code(code)
                    .with_error_message(message),
            );
        }
        if !results.is_empty() {
            resp.replica_election_results.push(
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(results),
            );
        }
    }
    resp
}

/// AlterPartitionReassignments: start (or, with null replicas, cancel)
/// moving partitions to new replicas; the controller completes each move
/// once its new replicas are in sync.
pub async fn alter_partition_reassignments(
    broker: &Broker,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    use kafka_protocol::messages::alter_partition_reassignments_response::{
        ReassignablePartitionResponse, ReassignableTopicResponse,
    };
    // v0 had no such flag: changing the replication factor was allowed.
    let allow_rf_change = version < 1 || req.allow_replication_factor_change;
    let mut responses = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let target = p
                .replicas
                .map(|r| r.into_iter().map(|b| b.0).collect::<Vec<_>>());
            let r = broker
                .reassign(
                    t.name.0.as_str(),
                    p.partition_index,
                    target,
                    allow_rf_change,
                )
                .await;
            let mut out =
                ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
            if let Err(e) = r {
                out.error_code = e.code();
                out.error_message = Some(str_bytes(e.message));
            }
            partitions.push(out);
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    let mut resp = AlterPartitionReassignmentsResponse::default().with_responses(responses);
    if version >= 1 {
        resp.allow_replication_factor_change = allow_rf_change;
    }
    resp
}

/// ListPartitionReassignments: the moves in progress, for the partitions
/// asked or all of them, read from the metadata as stored now.
pub async fn list_partition_reassignments(
    broker: &Broker,
    req: ListPartitionReassignmentsRequest,
    _version: i16,
) -> ListPartitionReassignmentsResponse {
    use kafka_protocol::messages::list_partition_reassignments_response::{
        OngoingPartitionReassignment, OngoingTopicReassignment,
    };
    let parts = match broker.coord.partitions().await {
        Ok(p) => p,
        Err(e) => {
            return ListPartitionReassignmentsResponse::default()
                .with_error_code(ResponseError::UnknownServerError.code())
                .with_error_message(Some(str_bytes(e.to_string())))
        }
    };
    let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let asked = |topic: &str, p: i32| {
        wanted
            .as_ref()
            .is_none_or(|w| w.iter().any(|(t, ps)| t == topic && ps.contains(&p)))
    };
    let ids = |v: &[i32]| v.iter().map(|x| BrokerId(*x)).collect::<Vec<_>>();
    let mut topics: Vec<OngoingTopicReassignment> = vec![];
    for (key, rec) in parts {
        let r = &rec.value;
        if (r.adding.is_empty() && r.removing.is_empty()) || !asked(&key.topic, key.partition) {
            continue;
        }
        let entry = OngoingPartitionReassignment::default()
            .with_partition_index(key.partition)
            .with_replicas(ids(&r.replicas))
            .with_adding_replicas(ids(&r.adding))
            .with_removing_replicas(ids(&r.removing));
        match topics.iter_mut().find(|t| t.name.0.as_str() == key.topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str_bytes(key.topic.clone())))
                    .with_partitions(vec![entry]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
