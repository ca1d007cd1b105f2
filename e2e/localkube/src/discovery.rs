//! The resources localkube serves and the discovery documents that list
//! them (`/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`), which
//! kubectl, helm and kube-rs read to map kinds to paths. Built-in resources
//! are a fixed table; custom resources come from stored CRDs, served as soon
//! as the CRD is created.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub gv: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short: Vec<String>,
    pub status: bool,
    pub scale: bool,
    /// The openAPIV3Schema of a custom resource's version.
    pub schema: Option<Value>,
    /// A custom resource version's `additionalPrinterColumns`.
    pub columns: Vec<Value>,
}

fn r(gv: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Resource {
    Resource {
        gv: gv.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short: short.iter().map(|s| s.to_string()).collect(),
        status: false,
        scale: false,
        schema: None,
        columns: vec![],
    }
}

pub fn builtin() -> Vec<Resource> {
    let mut v = vec![
        r("v1", "namespaces", "Namespace", false, &["ns"]),
        r("v1", "nodes", "Node", false, &["no"]),
        r("v1", "pods", "Pod", true, &["po"]),
        r("v1", "services", "Service", true, &["svc"]),
        r("v1", "endpoints", "Endpoints", true, &["ep"]),
        r("v1", "configmaps", "ConfigMap", true, &["cm"]),
        r("v1", "secrets", "Secret", true, &[]),
        r("v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        r("v1", "events", "Event", true, &["ev"]),
        r(
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            &["pvc"],
        ),
        r("apps/v1", "statefulsets", "StatefulSet", true, &["sts"]),
        r("apps/v1", "deployments", "Deployment", true, &["deploy"]),
        r("apps/v1", "replicasets", "ReplicaSet", true, &["rs"]),
        r("batch/v1", "jobs", "Job", true, &[]),
        r(
            "policy/v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        r("coordination.k8s.io/v1", "leases", "Lease", true, &[]),
        // What controllers publish through kube-rs's and client-go's
        // recorders (kept apart from core v1 events here).
        r("events.k8s.io/v1", "events", "Event", true, &[]),
        r("rbac.authorization.k8s.io/v1", "roles", "Role", true, &[]),
        r(
            "rbac.authorization.k8s.io/v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io/v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        r(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
    ];
    for x in v.iter_mut() {
        x.status = matches!(
            x.plural.as_str(),
            "pods"
                | "nodes"
                | "services"
                | "persistentvolumeclaims"
                | "statefulsets"
                | "deployments"
                | "replicasets"
                | "jobs"
                | "poddisruptionbudgets"
                | "customresourcedefinitions"
                | "namespaces"
        );
        x.scale = matches!(
            x.plural.as_str(),
            "statefulsets" | "deployments" | "replicasets"
        );
    }
    v
}

/// The resources a stored CRD serves (one per served version).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return vec![];
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let short: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| {
            Some(Resource {
                gv: format!("{group}/{}", v["name"].as_str()?),
                plural: plural.into(),
                singular: singular.clone(),
                kind: kind.into(),
                namespaced,
                short: short.clone(),
                status: v["subresources"]["status"].is_object(),
                scale: v["subresources"]["scale"].is_object(),
                schema: v["schema"]["openAPIV3Schema"]
                    .is_object()
                    .then(|| v["schema"]["openAPIV3Schema"].clone()),
                columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(gv: &str, all: &[Resource]) -> Option<Value> {
    let mut resources = vec![];
    for x in all.iter().filter(|x| x.gv == gv) {
        resources.push(json!({
            "name": x.plural, "singularName": x.singular, "namespaced": x.namespaced,
            "kind": x.kind, "verbs": VERBS, "shortNames": x.short,
        }));
        if x.status {
            resources.push(
                json!({"name": format!("{}/status", x.plural), "singularName": "",
                "namespaced": x.namespaced, "kind": x.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
        if x.scale {
            resources.push(
                json!({"name": format!("{}/scale", x.plural), "singularName": "",
                "namespaced": x.namespaced, "group": "autoscaling", "version": "v1",
                "kind": "Scale", "verbs": ["get", "patch", "update"]}),
            );
        }
        if x.plural == "pods" && x.gv == "v1" {
            resources.push(
                json!({"name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"]}),
            );
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `/api`.
pub fn core_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

/// `/apis`.
pub fn group_list(all: &[Resource]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for x in all {
        let Some((g, v)) = x.gv.split_once('/') else {
            continue;
        };
        match groups.iter_mut().find(|(name, _)| name == g) {
            Some((_, versions)) => {
                if !versions.iter().any(|x| x == v) {
                    versions.push(v.to_string());
                }
            }
            None => groups.push((g.to_string(), vec![v.to_string()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}
