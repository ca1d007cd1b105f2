//! The OpenAPI documents localkube serves, built from the same resource
//! table as discovery: `/openapi/v3` (the index), `/openapi/v3/api/v1` and
//! `/openapi/v3/apis/<group>/<version>` (one document per group-version),
//! and `/openapi/v2` (one document, JSON only).
//!
//! kubectl (1.27 and later) and helm read the v3 documents before a write:
//! when the PATCH operation of a kind takes the `fieldValidation` query
//! parameter they leave validation to the server, which localkube does as
//! the API server does (unknown fields refused under `Strict`, named in a
//! warning under `Warn`; custom resources also checked against their
//! schema and rules, see [`crate::schema`]). So `kubectl apply` and
//! `helm install` need neither `--validate=false` nor
//! `--disable-openapi-validation`.
//!
//! Schemas of built-in kinds come from k8s-openapi's (the `schemars`
//! rendering of the Kubernetes types localkube serves); schemas of custom
//! resources from their CRD's `openAPIV3Schema`. Two differences from a
//! real API server, both deliberate: PATCH operations do not list
//! `application/strategic-merge-patch+json`, because k8s-openapi's schemas
//! carry no patch-merge keys and kubectl would compute strategic patches
//! from them wrongly (without the listing it uses its compiled-in types, as
//! it does for a server without v3); and `/openapi/v2` is served as JSON
//! only: client-go asks for the protobuf form and, refused with 406, goes
//! on without it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::discovery::Resource;

/// The URL path of a group-version's API: `api/v1` or `apis/<group>/<version>`.
fn api_path(gv: &str) -> String {
    if gv.contains('/') {
        format!("apis/{gv}")
    } else {
        format!("api/{gv}")
    }
}

fn group_version(gv: &str) -> (&str, &str) {
    gv.split_once('/').unwrap_or(("", gv))
}

/// Adds the schema of a built-in kind to the generator's definitions and
/// returns its name there; `None` for a kind localkube does not type.
fn builtin_schema(gen: &mut SchemaGenerator, gv: &str, kind: &str) -> Option<String> {
    fn add<T: JsonSchema>(gen: &mut SchemaGenerator) -> Option<String> {
        gen.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (gv, kind) {
        ("v1", "Namespace") => add::<api::core::v1::Namespace>(gen),
        ("v1", "Pod") => add::<api::core::v1::Pod>(gen),
        ("v1", "Service") => add::<api::core::v1::Service>(gen),
        ("v1", "Endpoints") => add::<api::core::v1::Endpoints>(gen),
        ("v1", "ConfigMap") => add::<api::core::v1::ConfigMap>(gen),
        ("v1", "Secret") => add::<api::core::v1::Secret>(gen),
        ("v1", "ServiceAccount") => add::<api::core::v1::ServiceAccount>(gen),
        ("v1", "Event") => add::<api::core::v1::Event>(gen),
        ("v1", "Node") => add::<api::core::v1::Node>(gen),
        ("v1", "PersistentVolumeClaim") => add::<api::core::v1::PersistentVolumeClaim>(gen),
        ("apps/v1", "StatefulSet") => add::<api::apps::v1::StatefulSet>(gen),
        ("apps/v1", "Deployment") => add::<api::apps::v1::Deployment>(gen),
        ("apps/v1", "ReplicaSet") => add::<api::apps::v1::ReplicaSet>(gen),
        ("batch/v1", "Job") => add::<api::batch::v1::Job>(gen),
        ("policy/v1", "PodDisruptionBudget") => add::<api::policy::v1::PodDisruptionBudget>(gen),
        ("coordination.k8s.io/v1", "Lease") => add::<api::coordination::v1::Lease>(gen),
        ("events.k8s.io/v1", "Event") => add::<api::events::v1::Event>(gen),
        ("rbac.authorization.k8s.io/v1", "Role") => add::<api::rbac::v1::Role>(gen),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => add::<api::rbac::v1::RoleBinding>(gen),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => add::<api::rbac::v1::ClusterRole>(gen),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            add::<api::rbac::v1::ClusterRoleBinding>(gen)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            add::<apiext::CustomResourceDefinition>(gen)
        }
        _ => None,
    }
}

/// The schema name of a custom resource, as the API server forms it:
/// the group reversed, then version and kind (`dev.sluice.v1alpha1.Topic`).
fn custom_name(gv: &str, kind: &str) -> String {
    let (group, version) = group_version(gv);
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    format!("{}.{version}.{kind}", parts.join("."))
}

/// The schemas of every kind of `gv` (and what they refer to), by name,
/// with the kind's name for each resource; `definitions` is where the
/// references point (`/components/schemas` for v3, `/definitions` for v2).
fn schemas(
    gv: &str,
    all: &[Resource],
    definitions: &str,
) -> (Map<String, Value>, Vec<(Resource, String)>) {
    let mut settings = SchemaSettings::openapi3();
    settings.definitions_path = definitions.to_string().into();
    let mut gen = settings.into_generator();
    let mut named = vec![];
    let mut custom = Map::new();
    for r in all.iter().filter(|r| r.gv == gv) {
        let name = match &r.schema {
            Some(schema) => {
                let name = custom_name(gv, &r.kind);
                custom.insert(name.clone(), schema.clone());
                Some(name)
            }
            None => builtin_schema(&mut gen, gv, &r.kind),
        };
        if let Some(name) = name {
            named.push((r.clone(), name));
        }
    }
    let mut defs = gen.take_definitions(true);
    defs.extend(custom);
    let (group, version) = group_version(gv);
    for (r, name) in &named {
        if let Some(Value::Object(s)) = defs.get_mut(name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": r.kind}]),
            );
        }
    }
    (defs, named)
}

/// The operations of one resource, as paths to path items. `schema_ref`
/// is the `$ref` of the kind's schema.
fn operations(r: &Resource, schema_ref: &str, v3: bool) -> Vec<(String, Value)> {
    let (group, version) = group_version(&r.gv);
    let gvk = json!({"group": group, "version": version, "kind": r.kind});
    let base = api_path(&r.gv);
    let collection = if r.namespaced {
        format!("/{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("/{base}/{}", r.plural)
    };
    let item = format!("{collection}/{{name}}");
    let query = |name: &str| {
        if v3 {
            json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
        }
    };
    let writes = [
        query("dryRun"),
        query("fieldManager"),
        query("fieldValidation"),
    ];
    let mut patch_params = writes.to_vec();
    patch_params.push(if v3 {
        json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}})
    } else {
        json!({"name": "force", "in": "query", "type": "boolean", "uniqueItems": true})
    });
    let body = |types: &[&str]| {
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": {"$ref": schema_ref}})))
            .collect();
        json!({"content": content, "required": true})
    };
    let reply = if v3 {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}})
    } else {
        json!({"200": {"description": "OK", "schema": {"$ref": schema_ref}}})
    };
    let op = |action: &str, id: String, params: &[Value], body: Option<Value>| {
        let mut o = json!({
            "operationId": id, "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk, "parameters": params,
            "responses": reply,
        });
        match body {
            Some(b) if v3 => o["requestBody"] = b,
            Some(_) => {
                let mut p = params.to_vec();
                p.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": schema_ref}}));
                o["parameters"] = json!(p);
            }
            None => {}
        }
        o
    };
    let id = |verb: &str| format!("{verb}{}", r.kind);
    let mut coll = Map::new();
    coll.insert("get".into(), op("list", id("list"), &[], None));
    coll.insert(
        "post".into(),
        op(
            "post",
            id("create"),
            &writes,
            Some(body(&["application/json", "application/yaml"])),
        ),
    );
    let mut one = Map::new();
    one.insert("get".into(), op("get", id("read"), &[], None));
    one.insert(
        "put".into(),
        op(
            "put",
            id("replace"),
            &writes,
            Some(body(&["application/json", "application/yaml"])),
        ),
    );
    one.insert(
        "patch".into(),
        op(
            "patch",
            id("patch"),
            &patch_params,
            Some(body(&[
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
            ])),
        ),
    );
    one.insert("delete".into(), op("delete", id("delete"), &[], None));
    vec![
        (collection, Value::Object(coll)),
        (item, Value::Object(one)),
    ]
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`.
pub fn v3_document(gv: &str, all: &[Resource]) -> Option<Value> {
    if !all.iter().any(|r| r.gv == gv) {
        return None;
    }
    let (schemas, named) = schemas(gv, all, "/components/schemas");
    let mut paths = Map::new();
    for (r, name) in &named {
        let reference = format!("#/components/schemas/{name}");
        paths.extend(operations(r, &reference, true));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.30.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash_of(v: &Value) -> String {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: every group-version with the address of its document.
/// The hash changes when the document does, so clients that cache by it
/// see new CRDs.
pub fn v3_index(all: &[Resource]) -> Value {
    let mut gvs: Vec<&str> = all.iter().map(|r| r.gv.as_str()).collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for gv in gvs {
        let hash = v3_document(gv, all)
            .map(|d| hash_of(&d))
            .unwrap_or_default();
        let p = api_path(gv);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v2`: one Swagger 2.0 document for every group-version.
pub fn v2_document(all: &[Resource]) -> Value {
    let mut gvs: Vec<&str> = all.iter().map(|r| r.gv.as_str()).collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for gv in gvs {
        let (schemas, named) = schemas(gv, all, "/definitions");
        for (r, name) in &named {
            paths.extend(operations(r, &format!("#/definitions/{name}"), false));
        }
        definitions.extend(schemas);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.30.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

/// The fields of `v` that the schema of the built-in kind `kind` in `gv`
/// does not declare, by path (`spec.replica`), as strict decoding names
/// them. Empty for a kind localkube has no schema for.
pub fn unknown_builtin_fields(gv: &str, kind: &str, v: &Value) -> Vec<String> {
    let mut gen = SchemaSettings::openapi3().into_generator();
    let Some(name) = builtin_schema(&mut gen, gv, kind) else {
        return vec![];
    };
    let defs = gen.take_definitions(true);
    let Some(schema) = defs.get(&name) else {
        return vec![];
    };
    let mut out = vec![];
    for (k, field) in v.as_object().into_iter().flatten() {
        if matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        match schema["properties"].get(k) {
            Some(s) => unknown(field, s, &defs, k, &mut out),
            None => out.push(k.clone()),
        }
    }
    out
}

fn unknown(
    v: &Value,
    schema: &Value,
    defs: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    if let Some(r) = schema["$ref"].as_str() {
        if let Some(s) = r.rsplit('/').next().and_then(|n| defs.get(n)) {
            unknown(v, s, defs, path, out);
        }
        return;
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some([only]) = schema[key].as_array().map(Vec::as_slice) {
            return unknown(v, only, defs, path, out);
        }
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema["x-kubernetes-int-or-string"] == true
    {
        return;
    }
    match v {
        Value::Object(o) => {
            let props = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            for (k, field) in o {
                let here = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => unknown(field, s, defs, &here, out),
                    None if extra.is_object() => unknown(field, extra, defs, &here, out),
                    None if props.is_some() => out.push(here),
                    None => {}
                }
            }
        }
        Value::Array(a) if schema["items"].is_object() => {
            for (i, item) in a.iter().enumerate() {
                unknown(item, &schema["items"], defs, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery;

    #[test]
    fn every_builtin_kind_has_a_schema_with_its_kind() {
        let all = discovery::builtin();
        for r in &all {
            let doc = v3_document(&r.gv, &all).expect("served");
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let typed = schemas
                .values()
                .any(|s| s["x-kubernetes-group-version-kind"][0]["kind"] == r.kind.as_str());
            assert!(typed, "{} {} has no schema", r.gv, r.kind);
        }
    }

    #[test]
    fn patch_takes_field_validation_so_clients_leave_validation_to_the_server() {
        let all = discovery::builtin();
        let doc = v3_document("apps/v1", &all).unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "StatefulSet"
        );
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"fieldValidation"), "{names:?}");
        let index = v3_index(&all);
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
        assert!(index["paths"]["api/v1"].is_object());
    }

    #[test]
    fn a_custom_resource_is_described_by_its_crd_schema() {
        let crd = json!({"spec": {"group": "sluice.dev", "scope": "Namespaced",
            "names": {"plural": "topics", "kind": "Topic"},
            "versions": [{"name": "v1alpha1", "served": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}}]}});
        let mut all = discovery::builtin();
        all.extend(discovery::from_crd(&crd));
        let doc = v3_document("sluice.dev/v1alpha1", &all).unwrap();
        let s = &doc["components"]["schemas"]["dev.sluice.v1alpha1.Topic"];
        assert_eq!(s["properties"]["spec"]["type"], "object");
        assert_eq!(
            s["x-kubernetes-group-version-kind"][0]["group"],
            "sluice.dev"
        );
        assert!(
            doc["paths"]["/apis/sluice.dev/v1alpha1/namespaces/{namespace}/topics/{name}"]["patch"]
                .is_object()
        );
        let v2 = v2_document(&all);
        assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
        assert!(v2["definitions"]["dev.sluice.v1alpha1.Topic"].is_object());
    }

    #[test]
    fn strict_decoding_names_the_fields_a_builtin_kind_lacks() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "a", "labelz": {}},
            "spec": {"replica": 3, "serviceName": "a",
                "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Never",
                        "resources": {"limits": {"cpu": 1}}, "colour": "red"}]}}}});
        let mut got = unknown_builtin_fields("apps/v1", "StatefulSet", &sts);
        got.sort();
        assert_eq!(
            got,
            vec![
                "metadata.labelz",
                "spec.replica",
                "spec.template.spec.containers[0].colour"
            ]
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"any": "key"}});
        assert!(unknown_builtin_fields("v1", "ConfigMap", &cm).is_empty());
    }
}
