//! The storage nodes' objects, as pure functions of the settings and the
//! node count: the StatefulSet (stable ordinals are node ids, one PVC
//! each), a headless Service (pod DNS names, replication), a client
//! (bootstrap) Service, a PodDisruptionBudget (one node down at a time),
//! and the nodes' ServiceAccount with a Role allowing what a node does
//! (its lease, partition Leases, Topics). [`apply`] writes them with
//! server-side apply, each owned by the operator's ConfigMap, so deleting
//! that (`helm uninstall`) removes them all and leaves the PVCs.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::{json, Value};

use crate::config::{Advertise, Authentication, Settings, TlsSource};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "sluice-operator";

/// Names of the cluster's objects.
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    /// The StatefulSet; its pods are `<cluster>-node-<id>`.
    pub fn statefulset(&self) -> String {
        format!("{}-node", self.0)
    }
    /// The headless Service giving pods their DNS names.
    pub fn headless(&self) -> String {
        format!("{}-nodes", self.0)
    }
    /// The client (bootstrap) Service.
    pub fn bootstrap(&self) -> String {
        self.0.to_string()
    }
    pub fn service_account(&self) -> String {
        format!("{}-node", self.0)
    }
    /// The controller lock (a Lease).
    pub fn controller_lock(&self) -> String {
        format!("{}-controller", self.0)
    }
    /// The operator's ConfigMap, owner of everything else.
    pub fn owner(&self) -> String {
        format!("{}-operator", self.0)
    }
    /// The CA that signs the nodes' certificates (a Secret).
    pub fn cluster_ca(&self) -> String {
        format!("{}-cluster-ca", self.0)
    }
    /// The CA that signs the users' client certificates (a Secret).
    pub fn clients_ca(&self) -> String {
        format!("{}-clients-ca", self.0)
    }
    /// The nodes' certificate and key, with both CAs (a Secret).
    pub fn node_tls(&self) -> String {
        format!("{}-node-tls", self.0)
    }
    /// The operator's own Kafka credentials (a Secret).
    pub fn operator_user(&self) -> String {
        format!("{}-operator-user", self.0)
    }
    /// The name every node's certificate carries and nodes check on each
    /// other (pod addresses change; this does not).
    pub fn node_server_name(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc", self.headless())
    }
    /// The DNS names of the nodes' certificate: every pod's, the client
    /// Service's, and the name nodes check on each other.
    pub fn node_dns_names(&self, namespace: &str) -> Vec<String> {
        let (h, b) = (self.headless(), self.bootstrap());
        vec![
            self.node_server_name(namespace),
            format!("*.{h}.{namespace}.svc"),
            format!("*.{h}.{namespace}.svc.cluster.local"),
            format!("{b}.{namespace}.svc"),
            format!("{b}.{namespace}.svc.cluster.local"),
            format!("{b}.{namespace}"),
            b,
        ]
    }
}

/// The user name the operator's own Kafka client logs in with; a super
/// user.
pub const OPERATOR_USER: &str = "sluice-operator";

/// Where the nodes' TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/sluice/tls";

/// The operator's own principal under `s`'s authentication.
pub fn operator_principal(s: &Settings) -> String {
    match s.security.authentication {
        Authentication::Tls => format!("User:CN={OPERATOR_USER}"),
        _ => format!("User:{OPERATOR_USER}"),
    }
}

fn labels(s: &Settings) -> Value {
    json!({
        "app.kubernetes.io/name": "sluice",
        "app.kubernetes.io/instance": s.cluster_name,
        "app.kubernetes.io/component": "node",
        "app.kubernetes.io/managed-by": MANAGER,
    })
}

fn meta(name: &str, namespace: &str, s: &Settings, owner: &OwnerReference) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": labels(s),
        "ownerReferences": [owner],
    })
}

/// The environment and listen addresses a node needs, for either way of
/// advertising.
fn node_env(s: &Settings, namespace: &str, owner: &OwnerReference) -> Vec<Value> {
    let names = Names(&s.cluster_name);
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let val = |name: &str, v: String| json!({"name": name, "value": v});
    // On a cluster with pod DNS, listen everywhere (kubectl port-forward
    // reaches the pod's loopback); where pods share a host (localkube),
    // only on the pod's own address.
    let host = match s.advertise {
        Advertise::Dns => "0.0.0.0".to_string(),
        Advertise::PodIp => "$(POD_IP)".to_string(),
    };
    let advertised = match s.advertise {
        Advertise::Dns => format!("$(POD_NAME).{}.{namespace}.svc", names.headless()),
        Advertise::PodIp => "$(POD_IP)".to_string(),
    };
    vec![
        field("POD_NAME", "metadata.name"),
        field("SLUICE_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field(
            "SLUICE_NODE_ID",
            "metadata.labels['apps.kubernetes.io/pod-index']",
        ),
        val("SLUICE_METADATA", "kubernetes".into()),
        val("SLUICE_CLUSTER_NAME", s.cluster_name.clone()),
        // The cluster's Leases go with the operator's ConfigMap.
        val(
            "SLUICE_LEASE_OWNER",
            format!("{}/{}", owner.name, owner.uid),
        ),
        // Nothing here may depend on the node count: the template must not
        // change when the cluster scales, or every node would be rolled.
        val(
            "SLUICE_REASSIGNMENT_THROTTLE",
            s.reassignment_throttle_bytes_per_sec.to_string(),
        ),
        val("SLUICE_DATA_DIR", "/var/lib/sluice".into()),
        val("SLUICE_ADMIN_LISTEN", format!("{host}:{}", s.admin_port)),
        val(
            "SLUICE_REPLICATION_LISTEN",
            format!("{host}:{}", s.replication_port),
        ),
    ]
    .into_iter()
    .chain(security_env(s, namespace, &host, &advertised))
    .chain(s.rack_topology_key.iter().flat_map(|key| {
        [
            field("SLUICE_KUBERNETES_NODE", "spec.nodeName"),
            val("SLUICE_RACK_FROM_NODE_LABEL", key.clone()),
        ]
    }))
    .collect()
}

/// The client listener, and with security on its TLS, authentication,
/// authorizer and mutual TLS between nodes.
fn security_env(s: &Settings, namespace: &str, host: &str, advertised: &str) -> Vec<Value> {
    let val = |name: &str, v: String| json!({"name": name, "value": v});
    let sec = &s.security;
    let protocol = sec.protocol();
    if protocol == "PLAINTEXT" && !sec.authorizer {
        return vec![
            val("SLUICE_LISTEN", format!("{host}:{}", s.kafka_port)),
            val("SLUICE_ADVERTISED_ADDRESS", advertised.to_string()),
        ];
    }
    let file = |f: &str| format!("{TLS_DIR}/{f}");
    let mut env = vec![
        val(
            "SLUICE_LISTENERS",
            format!("{protocol}://{host}:{}", s.kafka_port),
        ),
        val(
            "SLUICE_ADVERTISED_LISTENERS",
            format!("{protocol}://{advertised}:{}", s.kafka_port),
        ),
    ];
    if sec.tls() {
        env.push(val("SLUICE_SSL_CERT", file("tls.crt")));
        env.push(val("SLUICE_SSL_KEY", file("tls.key")));
        env.push(val("SLUICE_REPLICATION_TLS", "true".into()));
        env.push(val("SLUICE_REPLICATION_SSL_CA", file("ca.crt")));
        env.push(val(
            "SLUICE_REPLICATION_SERVER_NAME",
            Names(&s.cluster_name).node_server_name(namespace),
        ));
    }
    match sec.authentication {
        Authentication::Tls => {
            // cert-manager's Secret carries the issuer's CA only: users'
            // certificates come from the same issuer.
            let ca = if sec.tls == TlsSource::CertManager {
                "ca.crt"
            } else {
                "clients-ca.crt"
            };
            env.push(val("SLUICE_SSL_CA", file(ca)));
            env.push(val("SLUICE_SSL_CLIENT_AUTH", "required".into()));
        }
        Authentication::ScramSha512 => {
            env.push(val(
                "SLUICE_SASL_ENABLED_MECHANISMS",
                "SCRAM-SHA-512".into(),
            ));
        }
        Authentication::None => {}
    }
    if sec.authorizer {
        env.push(val("SLUICE_AUTHORIZER", "true".into()));
        let mut supers = vec![operator_principal(s)];
        supers.extend(sec.super_users.iter().cloned());
        env.push(val("SLUICE_SUPER_USERS", supers.join(";")));
    }
    env
}

/// The nodes' StatefulSet with `replicas` pods.
pub fn statefulset(
    s: &Settings,
    namespace: &str,
    replicas: i32,
    owner: &OwnerReference,
) -> StatefulSet {
    let names = Names(&s.cluster_name);
    let mut args = vec![
        "serve".to_string(),
        format!("--lease-duration-ms={}", s.node_lease_ms),
    ];
    for (k, v) in &s.topic_defaults {
        // Checked against TOPIC_DEFAULTS when the settings load.
        args.push(format!("--{}={v}", k.replace('.', "-")));
    }
    let mut resources = json!({});
    if !s.requests.is_empty() {
        resources["requests"] = json!(s.requests);
    }
    if !s.limits.is_empty() {
        resources["limits"] = json!(s.limits);
    }
    let probe = |path: &str, period: i32| {
        json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": period,
               "failureThreshold": 3, "timeoutSeconds": 2})
    };
    let mut pod_spec = json!({
        "serviceAccountName": names.service_account(),
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "sluice",
            "image": s.node_image,
            "imagePullPolicy": s.image_pull_policy,
            "args": args,
            "env": node_env(s, namespace, owner),
            "ports": [
                {"name": "kafka", "containerPort": s.kafka_port},
                {"name": "replication", "containerPort": s.replication_port},
                {"name": "admin", "containerPort": s.admin_port},
            ],
            "readinessProbe": probe("/readyz", 2),
            "livenessProbe": probe("/healthz", 10),
            "resources": resources,
            "volumeMounts": volume_mounts(s),
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}},
        }],
    });
    if s.security.tls() {
        pod_spec["volumes"] = json!([{"name": "tls", "secret": {
            "secretName": Names(&s.cluster_name).node_tls(), "defaultMode": 0o440}}]);
    }
    if let Some(key) = &s.rack_topology_key {
        pod_spec["topologySpreadConstraints"] = json!([{
            "maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels(s)},
        }]);
    }
    let mut claim = json!({
        "metadata": {"name": "data", "labels": labels(s)},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": s.storage_size}}},
    });
    if let Some(class) = &s.storage_class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&names.statefulset(), namespace, s, owner),
        "spec": {
            "replicas": replicas,
            "serviceName": names.headless(),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(s)},
            "template": {"metadata": {"labels": labels(s)}, "spec": pod_spec},
            // The operator restarts nodes itself, one at a time and only
            // while every partition is in sync (see `roll`).
            "updateStrategy": {"type": "OnDelete"},
            "volumeClaimTemplates": [claim],
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        },
    }))
    .expect("a valid StatefulSet")
}

fn volume_mounts(s: &Settings) -> Value {
    let mut mounts = vec![json!({"name": "data", "mountPath": "/var/lib/sluice"})];
    if s.security.tls() {
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    json!(mounts)
}

/// The headless Service (pod DNS names; unready pods published so nodes
/// find each other while starting) and the client Service.
pub fn services(s: &Settings, namespace: &str, owner: &OwnerReference) -> [Service; 2] {
    let names = Names(&s.cluster_name);
    let headless = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(&names.headless(), namespace, s, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": labels(s),
            "ports": [
                {"name": "kafka", "port": s.kafka_port, "targetPort": "kafka"},
                {"name": "replication", "port": s.replication_port, "targetPort": "replication"},
                {"name": "admin", "port": s.admin_port, "targetPort": "admin"},
            ],
        },
    });
    let bootstrap = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(&names.bootstrap(), namespace, s, owner),
        "spec": {
            "selector": labels(s),
            "ports": [{"name": "kafka", "port": s.kafka_port, "targetPort": "kafka"}],
        },
    });
    [
        serde_json::from_value(headless).expect("a valid Service"),
        serde_json::from_value(bootstrap).expect("a valid Service"),
    ]
}

/// At most one node down by choice (drains, rolls) at a time.
pub fn disruption_budget(
    s: &Settings,
    namespace: &str,
    owner: &OwnerReference,
) -> PodDisruptionBudget {
    let names = Names(&s.cluster_name);
    serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": meta(&names.statefulset(), namespace, s, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(s)}},
    }))
    .expect("a valid PodDisruptionBudget")
}

/// The nodes' identity and what it may do: Leases (its own, partitions',
/// the controller lock when nodes elect one), Topics and their status.
pub fn node_rbac(
    s: &Settings,
    namespace: &str,
    owner: &OwnerReference,
) -> (ServiceAccount, Role, RoleBinding) {
    let names = Names(&s.cluster_name);
    let name = names.service_account();
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": meta(&name, namespace, s, owner),
    });
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(&name, namespace, s, owner),
        "rules": [
            // deletecollection: a deleted topic's partition Leases go at once.
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
            {"apiGroups": ["sluice.dev"], "resources": ["topics"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["sluice.dev"], "resources": ["topics/status"],
             "verbs": ["get", "update", "patch"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(&name, namespace, s, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    });
    (
        serde_json::from_value(sa).expect("a valid ServiceAccount"),
        serde_json::from_value(role).expect("a valid Role"),
        serde_json::from_value(binding).expect("a valid RoleBinding"),
    )
}

/// With `rackTopologyKey`: a ClusterRole that may read Node objects and
/// its binding to the nodes' ServiceAccount, so each node reads its rack
/// from the label on the Kubernetes node it runs on. Cluster-scoped, so
/// owned by nothing: `<cluster>-node-racks-<namespace>`, labelled with the
/// cluster and namespace, and left in place when the setting is removed
/// (they grant only reading Node objects).
pub fn rack_rbac(s: &Settings, namespace: &str) -> Option<(ClusterRole, ClusterRoleBinding)> {
    s.rack_topology_key.as_ref()?;
    let names = Names(&s.cluster_name);
    let name = format!("{}-node-racks-{namespace}", s.cluster_name);
    let mut labels = labels(s);
    labels["sluice.dev/namespace"] = json!(namespace);
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account(), "namespace": namespace}],
    });
    Some((
        serde_json::from_value(role).expect("a valid ClusterRole"),
        serde_json::from_value(binding).expect("a valid ClusterRoleBinding"),
    ))
}

/// The owner reference every applied object carries: the operator's
/// ConfigMap.
pub fn owner_of(cm: &ConfigMap) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: cm.metadata.name.clone().unwrap_or_default(),
        uid: cm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        // Not blocking: setting it needs rights on the owner's finalizers
        // (OwnerReferencesPermissionEnforcement), and nothing waits for
        // the dependents.
        block_owner_deletion: None,
    }
}

/// Server-side apply of `obj` through `api`, owned by [`MANAGER`].
async fn apply_one<K>(api: Api<K>, obj: &K) -> kube::Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// The annotation that asks for every node to be restarted: set on the
/// StatefulSet (`kubectl annotate statefulset <cluster>-node
/// sluice.dev/restart=$(date +%s) --overwrite`), copied into its pod
/// template, whose new revision the operator then rolls out.
pub const RESTART: &str = "sluice.dev/restart";

/// Applies every object of the node cluster with `replicas` nodes; a
/// `restart` stamp goes into the pod template.
pub async fn apply(
    client: &Client,
    s: &Settings,
    namespace: &str,
    replicas: i32,
    owner: &OwnerReference,
    restart: Option<&str>,
) -> kube::Result<()> {
    let (sa, role, binding) = node_rbac(s, namespace, owner);
    apply_one(Api::namespaced(client.clone(), namespace), &sa).await?;
    apply_one(Api::namespaced(client.clone(), namespace), &role).await?;
    apply_one(Api::namespaced(client.clone(), namespace), &binding).await?;
    if let Some((role, binding)) = rack_rbac(s, namespace).filter(|_| s.apply_rack_rbac) {
        apply_one(Api::all(client.clone()), &role).await?;
        apply_one(Api::all(client.clone()), &binding).await?;
    }
    for svc in services(s, namespace, owner) {
        apply_one(Api::namespaced(client.clone(), namespace), &svc).await?;
    }
    apply_one(
        Api::namespaced(client.clone(), namespace),
        &disruption_budget(s, namespace, owner),
    )
    .await?;
    let mut sts = statefulset(s, namespace, replicas, owner);
    if let (Some(stamp), Some(spec)) = (restart, sts.spec.as_mut()) {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(RESTART.into(), stamp.into());
    }
    apply_one(Api::namespaced(client.clone(), namespace), &sts).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "sluice-operator".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn env_of(sts: &StatefulSet) -> Vec<(String, String)> {
        let c = &sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .iter()
            .flatten()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    e.value_from
                        .as_ref()
                        .unwrap()
                        .field_ref
                        .as_ref()
                        .unwrap()
                        .field_path
                        .clone()
                });
                (e.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn nodes_take_their_id_from_the_ordinal_and_advertise_as_configured() {
        let s = Settings {
            security: crate::config::Security::off(),
            ..Settings::default()
        };
        let sts = statefulset(&s, "data", 3, &owner());
        assert_eq!(sts.metadata.name.as_deref(), Some("sluice-node"));
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(3));
        let env = env_of(&sts);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("SLUICE_NODE_ID").as_deref(),
            Some("metadata.labels['apps.kubernetes.io/pod-index']")
        );
        assert_eq!(
            get("SLUICE_ADVERTISED_ADDRESS").as_deref(),
            Some("$(POD_NAME).sluice-nodes.data.svc")
        );
        assert_eq!(get("SLUICE_LISTEN").as_deref(), Some("0.0.0.0:9092"));
        // Scaling changes the replica count only, never the template.
        assert_eq!(get("SLUICE_EXPECTED_NODES"), None);
        let five = statefulset(&s, "data", 5, &owner());
        assert_eq!(
            five.spec.as_ref().unwrap().template,
            sts.spec.as_ref().unwrap().template
        );
        assert_eq!(
            get("SLUICE_REASSIGNMENT_THROTTLE").as_deref(),
            Some("67108864")
        );
        let local = Settings {
            advertise: Advertise::PodIp,
            ..s.clone()
        };
        let env = env_of(&statefulset(&local, "data", 1, &owner()));
        assert!(env.contains(&("SLUICE_LISTEN".into(), "$(POD_IP):9092".into())));
        assert!(env.contains(&("SLUICE_ADVERTISED_ADDRESS".into(), "$(POD_IP)".into())));
        // Every object is owned by the operator's ConfigMap.
        assert_eq!(
            sts.metadata.owner_references.unwrap()[0].name,
            "sluice-operator"
        );
    }

    /// The defaults: one SASL_SSL listener with SCRAM-SHA-512, the
    /// certificate from the node Secret, mutual TLS between nodes checked
    /// for the nodes' shared name, the authorizer with the operator as a
    /// super user.
    #[test]
    fn a_secured_node_listens_with_tls_and_scram_and_checks_acls() {
        let s = Settings::default();
        let sts = statefulset(&s, "data", 3, &owner());
        let env = env_of(&sts);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("SLUICE_LISTENERS").as_deref(),
            Some("SASL_SSL://0.0.0.0:9092")
        );
        assert_eq!(
            get("SLUICE_ADVERTISED_LISTENERS").as_deref(),
            Some("SASL_SSL://$(POD_NAME).sluice-nodes.data.svc:9092")
        );
        assert_eq!(get("SLUICE_LISTEN"), None);
        assert_eq!(get("SLUICE_ADVERTISED_ADDRESS"), None);
        assert_eq!(
            get("SLUICE_SSL_CERT").as_deref(),
            Some("/etc/sluice/tls/tls.crt")
        );
        assert_eq!(
            get("SLUICE_SASL_ENABLED_MECHANISMS").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(get("SLUICE_REPLICATION_TLS").as_deref(), Some("true"));
        assert_eq!(
            get("SLUICE_REPLICATION_SSL_CA").as_deref(),
            Some("/etc/sluice/tls/ca.crt")
        );
        assert_eq!(
            get("SLUICE_REPLICATION_SERVER_NAME").as_deref(),
            Some("sluice-nodes.data.svc")
        );
        assert_eq!(
            get("SLUICE_SUPER_USERS").as_deref(),
            Some("User:sluice-operator")
        );
        assert_eq!(get("SLUICE_SSL_CLIENT_AUTH"), None);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("sluice-node-tls")
        );
        assert!(pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == TLS_DIR && m.read_only == Some(true)));
        // The node's certificate names what nodes check on each other.
        let names = Names("sluice").node_dns_names("data");
        assert_eq!(names[0], "sluice-nodes.data.svc");
        assert!(names.contains(&"*.sluice-nodes.data.svc".to_string()));

        // Client certificates: SSL, certificates required of the clients'
        // CA, the operator's principal its certificate's subject.
        let mut tls = Settings::default();
        tls.security.authentication = Authentication::Tls;
        tls.security.super_users = vec!["User:admin".into()];
        let env = env_of(&statefulset(&tls, "data", 3, &owner()));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("SLUICE_LISTENERS").as_deref(),
            Some("SSL://0.0.0.0:9092")
        );
        assert_eq!(get("SLUICE_SSL_CLIENT_AUTH").as_deref(), Some("required"));
        assert_eq!(
            get("SLUICE_SSL_CA").as_deref(),
            Some("/etc/sluice/tls/clients-ca.crt")
        );
        assert_eq!(
            get("SLUICE_SUPER_USERS").as_deref(),
            Some("User:CN=sluice-operator;User:admin")
        );
    }

    #[test]
    fn volumes_are_kept_and_disruptions_are_one_at_a_time() {
        let s = Settings {
            storage_class: Some("fast".into()),
            ..Settings::default()
        };
        let sts = statefulset(&s, "data", 3, &owner());
        let spec = sts.spec.unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(
            claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
            Some("fast")
        );
        let keep = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(keep.when_deleted.as_deref(), Some("Retain"));
        let pdb = disruption_budget(&s, "data", &owner());
        assert_eq!(
            serde_json::to_value(pdb.spec.unwrap().max_unavailable).unwrap(),
            json!(1)
        );
    }

    /// The whole node cluster goes out by server-side apply, owned by the
    /// operator's field manager, in an order where nothing refers to an
    /// object not yet applied (the account before the pods that use it).
    #[tokio::test]
    async fn apply_writes_every_object_by_server_side_apply() {
        use crate::fixtures::{self, echo};
        let (client, mut server) = fixtures::client();
        let s = Settings::default();
        let apply =
            tokio::spawn(async move { apply(&client, &s, "data", 3, &owner(), Some("7")).await });
        let expected = [
            (
                "/api/v1/namespaces/data/serviceaccounts/sluice-node",
                "ServiceAccount",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/data/roles/sluice-node",
                "Role",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/data/rolebindings/sluice-node",
                "RoleBinding",
            ),
            ("/api/v1/namespaces/data/services/sluice-nodes", "Service"),
            ("/api/v1/namespaces/data/services/sluice", "Service"),
            (
                "/apis/policy/v1/namespaces/data/poddisruptionbudgets/sluice-node",
                "PodDisruptionBudget",
            ),
            (
                "/apis/apps/v1/namespaces/data/statefulsets/sluice-node",
                "StatefulSet",
            ),
        ];
        for (path, kind) in expected {
            let seen = server.expect("PATCH", path, 200, echo).await;
            assert_eq!(seen.content_type, "application/apply-patch+yaml");
            assert!(
                seen.query.contains("fieldManager=sluice-operator"),
                "{}",
                seen.query
            );
            assert!(seen.query.contains("force=true"), "{}", seen.query);
            assert_eq!(seen.body["kind"], kind);
            assert_eq!(seen.body["metadata"]["ownerReferences"][0]["uid"], "u-1");
            if kind == "StatefulSet" {
                assert_eq!(seen.body["spec"]["replicas"], 3);
                assert_eq!(seen.body["spec"]["updateStrategy"]["type"], "OnDelete");
                assert_eq!(
                    seen.body["spec"]["template"]["metadata"]["annotations"][RESTART],
                    "7"
                );
            }
        }
        apply.await.unwrap().expect("applied");
        server.done().await;
    }

    /// A refusal stops the pass at the object refused (the caller backs
    /// off and tries the whole pass again) and says why.
    #[tokio::test]
    async fn apply_stops_at_a_refusal_and_returns_it() {
        use crate::fixtures::{self, echo, failure};
        let (client, mut server) = fixtures::client();
        let s = Settings::default();
        let apply =
            tokio::spawn(async move { apply(&client, &s, "data", 1, &owner(), None).await });
        server
            .expect(
                "PATCH",
                "/api/v1/namespaces/data/serviceaccounts/sluice-node",
                200,
                echo,
            )
            .await;
        server
            .expect(
                "PATCH",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/data/roles/sluice-node",
                403,
                |_| {
                    failure(
                        403,
                        "Forbidden",
                        "roles is forbidden: the operator may not escalate",
                    )
                },
            )
            .await;
        match apply.await.unwrap() {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403);
                assert!(e.message.contains("may not escalate"), "{}", e.message);
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
        server.done().await;
    }

    #[test]
    fn with_a_rack_key_nodes_read_their_rack_from_their_kubernetes_node() {
        assert!(rack_rbac(&Settings::default(), "data").is_none());
        let s = Settings {
            rack_topology_key: Some("topology.kubernetes.io/zone".into()),
            ..Settings::default()
        };
        let env = env_of(&statefulset(&s, "data", 3, &owner()));
        assert!(env.contains(&("SLUICE_KUBERNETES_NODE".into(), "spec.nodeName".into())));
        assert!(env.contains(&(
            "SLUICE_RACK_FROM_NODE_LABEL".into(),
            "topology.kubernetes.io/zone".into()
        )));
        let (role, binding) = rack_rbac(&s, "data").unwrap();
        let rule = &role.rules.unwrap()[0];
        assert_eq!(rule.resources.as_deref(), Some(&["nodes".to_string()][..]));
        assert_eq!(rule.verbs, ["get"]);
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("sluice-node", Some("data"))
        );
        assert_eq!(binding.role_ref.name, "sluice-node-racks-data");
    }

    #[test]
    fn the_nodes_role_names_only_leases_and_topics() {
        let (_, role, binding) = node_rbac(&Settings::default(), "data", &owner());
        let groups: Vec<String> = role
            .rules
            .unwrap()
            .iter()
            .flat_map(|r| r.api_groups.clone().unwrap())
            .collect();
        assert_eq!(groups, ["coordination.k8s.io", "sluice.dev", "sluice.dev"]);
        assert_eq!(binding.subjects.unwrap()[0].name, "sluice-node");
    }
}
