//! The custom resources, group `sluice.dev`, version `v1alpha1`: `Topic`
//! (a Kafka topic: the topic's metadata record on Kubernetes) and
//! `ConsumerGroup` (a view of, and actions on, a consumer group) and `User`
//! (a Kafka user: its credential and its ACLs). The YAML in
//! `crds/` is generated from these types (`crds_in_the_repository_are_current`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::topic_config::{Kind, SPECS};

/// The API group of Sluice's resources.
pub const GROUP: &str = "sluice.dev";

/// What a topic should be.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Topic",
    doc = "A Kafka topic of the Sluice cluster in this namespace. Apply one and the operator places its partitions; a topic a Kafka client creates appears as one too.",
    namespaced,
    shortname = "st",
    status = "TopicStatus",
    printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicationFactor"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.partitions >= oldSelf.partitions").message("partitions may not decrease"))]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Number of partitions; may grow, never shrink.
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: i32,
    /// Replicas of each partition (at most the cluster's maxNodes).
    #[schemars(range(min = 1, max = 64))]
    pub replication_factor: i32,
    /// Kafka topic configs, as strings (`retention.ms`, `cleanup.policy`,
    /// `min.insync.replicas`, ...). Keys outside the known set are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "config_schema")]
    pub config: BTreeMap<String, String>,
    /// The Kafka topic name, when it is not a valid object name (capitals,
    /// `_`, longer than 63 characters). Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic_name: Option<String>,
    /// What deleting this object does to the topic's data: `Delete` (the
    /// default) removes it from every node; `Retain` keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// The schema of `spec.config`: an object of the known topic config keys,
/// each a string. Not `additionalProperties: false`, which a structural
/// schema may not combine with `properties`: an unknown key is refused by
/// the API server's strict field validation (kubectl's default) and pruned
/// for clients that do not ask for it, as any undeclared field is.
fn config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let properties: serde_json::Map<String, serde_json::Value> = SPECS
        .iter()
        .map(|s| {
            let mut p = serde_json::json!({"type": "string", "description": s.doc});
            if let Kind::OneOf(values) = s.kind {
                p["enum"] = serde_json::json!(values);
            }
            (s.name.to_string(), p)
        })
        .collect();
    schemars::Schema::try_from(serde_json::json!({
        "type": "object",
        "description": "Kafka topic configs, as strings.",
        "properties": properties,
    }))
    .expect("an object schema")
}

/// What the operator observed of a topic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Kafka topic id (a UUID), kept for the topic's whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// `Ready` (every partition has a leader and its full ISR),
    /// `Reassigning` (replicas are moving), `Degraded` (what is wrong).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
}

/// One partition: where it lives and who leads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: i32,
    pub replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// What to do with a consumer group.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ConsumerGroup",
    doc = "A Kafka consumer group of the Sluice cluster in this namespace: its state, members and lag in status, and offset resets applied while it is empty.",
    namespaced,
    shortname = "scg",
    status = "ConsumerGroupStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.totalLag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupSpec {
    /// The Kafka group id.
    #[schemars(length(min = 1, max = 249))]
    pub group_id: String,
    /// Committed offsets to set, once per change, while the group is Empty
    /// (as `kafka-consumer-groups --reset-offsets` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
    /// Delete the Kafka group (its committed offsets) when this object is
    /// deleted; by default the group is left alone.
    #[serde(default)]
    pub delete_group_on_removal: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetReset {
    pub to: ResetTo,
    /// Topics to reset (all the group has offsets for when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The offset (`to: offset`) or the time in ms since the epoch
    /// (`to: timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset,
    Timestamp,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Empty, Stable, PreparingRebalance, CompletingRebalance, Dead, or
    /// NotFound (no such group yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<GroupMember>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<PartitionLag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last `spec.offsetReset` applied and the offsets it wrote
    /// (cleared when `spec.offsetReset` is removed, so applying the same
    /// reset again runs it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset_reset: Option<AppliedOffsetReset>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedOffsetReset {
    pub reset: OffsetReset,
    /// The committed offsets written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<ResetOffset>,
    pub applied_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// Assigned partitions as `topic-partition`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub log_end: i64,
    pub lag: i64,
}

/// A Kafka user of the cluster: how it authenticates and what it may do.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "User",
    doc = "A Kafka user of the Sluice cluster in this namespace: the operator stores its credential (a generated SCRAM-SHA-512 password, or a client certificate of the clients' CA), writes it to a Secret of the same name, and keeps its ACLs. Deleting the User removes all three.",
    namespaced,
    shortname = "su",
    status = "UserStatus",
    printcolumn = r#"{"name":"Authentication","type":"string","jsonPath":".spec.authentication.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    pub authentication: UserAuthentication,
    /// What the user may do; with the authorizer on, nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<AclRule>,
}

/// How a user proves who it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAuthentication {
    #[serde(rename = "type")]
    pub kind: AuthenticationType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuthenticationType {
    /// SASL SCRAM-SHA-512 with a generated password (the Secret's
    /// `password`, and `sasl.jaas.config` for Java clients). The principal
    /// is `User:<name>`.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// A client certificate signed by the clients' CA (the Secret's
    /// `user.crt`, `user.key` and `ca.crt`: the CA that signed the nodes).
    /// The principal is `User:CN=<name>`.
    #[serde(rename = "tls")]
    Tls,
}

/// One ACL rule: operations on a resource, allowed or denied, from a host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.resource.type != 'cluster' || !has(self.resource.patternType) || self.resource.patternType == 'literal'").message("the cluster resource is literal"))]
#[serde(rename_all = "camelCase")]
pub struct AclRule {
    pub resource: AclResource,
    #[schemars(length(min = 1))]
    pub operations: Vec<AclOperation>,
    /// `*` (the default) or one client address.
    #[serde(default = "any_host")]
    pub host: String,
    #[serde(default, rename = "type")]
    pub permission: AclPermission,
}

fn any_host() -> String {
    "*".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclResource {
    #[serde(rename = "type")]
    pub kind: AclResourceType,
    /// The resource's name (`*` for every one); none for `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub name: Option<String>,
    #[serde(default)]
    pub pattern_type: AclPatternType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclPatternType {
    #[default]
    Literal,
    Prefixed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclPermission {
    #[default]
    Allow,
    Deny,
}

/// What the operator did with a User.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Kafka principal the ACLs name (`User:alice`, `User:CN=alice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `Ready`: the credential and the ACLs are stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The Kafka principal of a User: `User:<name>` for SCRAM, the client
/// certificate's subject (`User:CN=<name>`) for TLS.
pub fn user_principal(u: &User) -> String {
    let name = u.metadata.name.clone().unwrap_or_default();
    match u.spec.authentication.kind {
        AuthenticationType::ScramSha512 => format!("User:{name}"),
        AuthenticationType::Tls => format!("User:CN={name}"),
    }
}

/// The Kafka topic name a `Topic` object stands for.
pub fn kafka_name(t: &Topic) -> String {
    t.spec
        .topic_name
        .clone()
        .or_else(|| t.metadata.name.clone())
        .unwrap_or_default()
}

/// An object name for a Kafka topic name: the name itself when it is a
/// valid object name (lowercase alphanumerics, `-` and `.`, at most 63
/// characters), else a cleaned-up name with a hash of the real one (the
/// Kafka name then goes in `spec.topicName`).
pub fn object_name(topic: &str) -> String {
    let valid = !topic.is_empty()
        && topic.len() <= 63
        && topic
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && topic.starts_with(|c: char| c.is_ascii_alphanumeric())
        && topic.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        return topic.to_string();
    }
    name_part(topic, 50)
}

/// A part of an object name standing for `name`: its lowercase
/// alphanumerics (others as `-`), at most `max` of them, then `-` and a
/// hash of the whole name, so distinct names never meet.
pub fn name_part(name: &str, max: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    let clean = match clean.trim_matches('-') {
        "" => "topic",
        c => c,
    };
    format!("{clean}-{:08x}", name_hash(name))
}

/// FNV-1a of a name, folded to 32 bits: stable across processes and
/// versions, unlike std's hasher.
pub fn name_hash(name: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The YAML files in `crds/` and their copies in the chart
    /// (`charts/sluice/crds/`) are generated from these types; this test
    /// fails when either is stale. `SLUICE_UPDATE_CRDS=1 cargo test -p
    /// sluice-api` rewrites them.
    #[test]
    fn crds_in_the_repository_are_current() {
        // Where cargo runs the test from (the binary may have been built in
        // another checkout of the same tree).
        let dir = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
        );
        let dir = dir.as_path();
        for (file, crd) in [
            ("topics.sluice.dev.yaml", Topic::crd()),
            ("consumergroups.sluice.dev.yaml", ConsumerGroup::crd()),
            ("users.sluice.dev.yaml", User::crd()),
        ] {
            let yaml = format!(
                "# Generated from crds/src/v1alpha1.rs: do not edit.\n{}",
                serde_yaml::to_string(&crd).unwrap()
            );
            for path in [dir.join(file), dir.join("../charts/sluice/crds").join(file)] {
                if std::env::var_os("SLUICE_UPDATE_CRDS").is_some() {
                    std::fs::write(&path, &yaml).unwrap();
                }
                let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    on_disk == yaml,
                    "{} is stale: run SLUICE_UPDATE_CRDS=1 cargo test -p sluice-api",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_topic_schema_says_what_the_api_server_must_refuse() {
        let crd = serde_json::to_value(Topic::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["partitions"]["minimum"], 1.0);
        assert_eq!(spec["properties"]["replicationFactor"]["minimum"], 1.0);
        let config = &spec["properties"]["config"];
        assert!(config.get("additionalProperties").is_none());
        assert!(config["properties"]["retention.ms"].is_object());
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        assert!(rules
            .iter()
            .any(|r| r["rule"] == "self.partitions >= oldSelf.partitions"));
        let names = &crd["spec"]["names"];
        assert_eq!(names["shortNames"][0], "st");
    }

    #[test]
    fn object_names_for_kafka_names() {
        assert_eq!(object_name("orders"), "orders");
        assert_eq!(object_name("orders.v1"), "orders.v1");
        let odd = object_name("Orders_V1");
        assert_ne!(odd, object_name("orders-v1"));
        assert!(odd.starts_with("orders-v1-"));
        assert!(object_name(&"x".repeat(249)).len() <= 63);
        assert_eq!(
            object_name("__consumer_offsets").len(),
            "consumer-offsets".len() + 9
        );
    }
}
