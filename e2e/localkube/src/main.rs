//! localkube: a Kubernetes API stand-in for tests on machines without a
//! container engine (where kind cannot run). Test infrastructure, not a
//! product: kind remains the reference.
//!
//! The API server: objects stored as JSON, keyed by group/version,
//! resource, namespace and name; one global, monotonically increasing
//! resourceVersion; create (409 AlreadyExists), get, list with label and
//! field selectors, replace with optimistic concurrency (409 Conflict),
//! patches (merge, JSON, strategic and apply as merge), status and scale
//! subresources, delete with finalizers and owner-reference garbage
//! collection, deletecollection, watch (from a resourceVersion, bookmarks,
//! 410 Gone when too old), discovery documents, CRDs served at once with
//! their schema enforced. It writes a kubeconfig that kube-rs and kubectl
//! can use. See e2e/README.md for what it does not do.

mod discovery;
mod faults;
mod kubelet;
mod openapi;
mod patch;
mod proto;
mod schema;
mod services;
mod table;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use discovery::Resource;

#[derive(Parser)]
#[command(name = "localkube", about = "A Kubernetes API stand-in for tests")]
struct Cli {
    /// Address of the API server (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many past events a watch may resume from; older resource
    /// versions answer 410 Expired.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// JSON file mapping image names (tag optional) to the program and
    /// leading arguments a pod of that image runs, e.g.
    /// {"example/server": ["/usr/bin/python3", "/srv/server.py"]}.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Where pods' working directories, logs and volumes live (default: a
    /// `localkube-state` directory beside the kubeconfig).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Zones of the cluster's nodes, comma separated: one Node object per
    /// zone (`localkube-0`, ... labelled `topology.kubernetes.io/zone`),
    /// pods spread over them. Without it, one node `localkube` and no zone.
    #[arg(long, value_delimiter = ',')]
    zones: Vec<String>,
}

/// Where an object lives: (group/version, resource, namespace, name).
pub(crate) type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    gv: String,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
pub(crate) struct Store {
    rv: u64,
    pub(crate) objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
}

pub(crate) struct Server {
    pub(crate) store: Mutex<Store>,
    pub(crate) events: broadcast::Sender<Event>,
    /// host:port, for `/api`'s serverAddressByClientCIDRs.
    addr: String,
    /// How many past events a watch may resume from.
    history: usize,
    state_dir: PathBuf,
    /// Faults a test injected.
    faults: faults::Faults,
    /// Requests served, by `<verb> <resource>` (`get`, `list`, `watch`,
    /// `create`, `update`, `patch`, `delete`): `/localkube/stats`.
    stats: Mutex<BTreeMap<String, u64>>,
}

/// The parts of a request path: `/api/v1/...` or `/apis/<group>/<version>/...`.
pub(crate) struct Target {
    pub(crate) gv: String,
    pub(crate) resource: String,
    pub(crate) namespace: String,
    pub(crate) name: Option<String>,
    /// `status`, `scale` or `log`.
    pub(crate) sub: Option<String>,
    /// The request's `fieldValidation`: `Strict` refuses fields the kind's
    /// schema does not declare; otherwise a custom resource's are pruned,
    /// with a warning unless `Ignore`, and a built-in kind's named in a
    /// warning under `Warn`.
    pub(crate) field_validation: String,
}

impl Target {
    /// The collection an object's key belongs to.
    pub(crate) fn of(k: &Key) -> Target {
        Target {
            gv: k.0.clone(),
            resource: k.1.clone(),
            namespace: k.2.clone(),
            name: None,
            sub: None,
            field_validation: "Ignore".into(),
        }
    }
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let target = |ns: &str, res: &str, more: &[&str]| Target {
        gv: gv.clone(),
        resource: res.to_string(),
        namespace: ns.to_string(),
        name: more.first().map(|s| s.to_string()),
        sub: more.get(1).map(|s| s.to_string()),
        field_validation: String::new(),
    };
    match rest {
        ["namespaces", ns, res, more @ ..] if more.len() <= 2 => Some(target(ns, res, more)),
        [res, more @ ..] if !res.is_empty() && more.len() <= 2 => Some(target("", res, more)),
        _ => None,
    }
}

/// Adds `Warning` headers (code 299), as the API server sends them and
/// kubectl prints them.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

pub(crate) fn now_rfc3339() -> String {
    // Seconds precision is what creationTimestamp carries.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An equality-based label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`.
fn matches_labels(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term).is_some()
        }
    })
}

/// `metadata.name=x` and `metadata.namespace=y` field selectors.
fn matches_fields(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (k, v, eq) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, true),
                None => return false,
            },
        };
        let path = match k.trim() {
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            _ => return false,
        };
        (obj.pointer(path).and_then(Value::as_str) == Some(v.trim())) == eq
    })
}

/// How an update treats `.status` when the resource has a status
/// subresource: the main resource keeps the stored status, the status
/// subresource changes nothing else.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

fn set_meta(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        m.insert(key.into(), v);
    }
}

/// A Secret's `stringData` goes into `data`, base64-encoded, as the API
/// server does on write.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in sd.as_object().into_iter().flatten() {
        let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
        obj["data"][k] = json!(enc);
    }
}

/// Five random characters, as the API server appends to `generateName`
/// and controllers to their pods' names.
pub(crate) fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..5].to_string()
}

pub(crate) fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

impl Server {
    /// Built-in resources and those of every stored CRD.
    fn resources(&self, st: &Store) -> Vec<Resource> {
        let mut all = discovery::builtin();
        for ((gv, res, _, _), crd) in &st.objects {
            if gv == "apiextensions.k8s.io/v1" && res == "customresourcedefinitions" {
                all.extend(discovery::from_crd(crd));
            }
        }
        all
    }

    pub(crate) fn resource(&self, st: &Store, t: &Target) -> Option<Resource> {
        self.resources(st)
            .into_iter()
            .find(|r| r.gv == t.gv && r.plural == t.resource)
    }

    fn record(&self, st: &mut Store, key: &Key, kind: &'static str, object: Value) {
        let e = Event {
            rv: st.rv,
            gv: key.0.clone(),
            resource: key.1.clone(),
            namespace: key.2.clone(),
            kind,
            object,
        };
        st.history.push_back(e.clone());
        if st.history.len() > self.history {
            st.history.pop_front();
        }
        let _ = self.events.send(e);
    }

    fn key(t: &Target, name: &str) -> Key {
        (
            t.gv.clone(),
            t.resource.clone(),
            t.namespace.clone(),
            name.to_string(),
        )
    }

    fn list(
        &self,
        st: &Store,
        t: &Target,
        r: &Resource,
        q: &HashMap<String, String>,
        as_table: bool,
    ) -> Response {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((gv, res, ns, _), _)| {
                *gv == t.gv && *res == t.resource && (t.namespace.is_empty() || *ns == t.namespace)
            })
            .map(|(_, v)| v)
            .filter(|v| matches_labels(v, q.get("labelSelector").map(String::as_str)))
            .filter(|v| matches_fields(v, q.get("fieldSelector").map(String::as_str)))
            .cloned()
            .collect();
        if as_table {
            return axum::Json(table::of(r, &items, &st.rv.to_string())).into_response();
        }
        axum::Json(json!({
            "kind": format!("{}List", r.kind), "apiVersion": t.gv,
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
        .into_response()
    }

    /// What every write does to the object it stores: type fields set,
    /// Secret string data folded, custom resources admitted (pruned,
    /// checked against their schema and rules, `old` being the stored
    /// object on an update). Returns the warnings to send.
    fn prepare(
        &self,
        t: &Target,
        r: &Resource,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, Box<Response>> {
        let o = obj.as_object_mut().expect("checked");
        o.insert("apiVersion".into(), json!(t.gv));
        o.insert("kind".into(), json!(r.kind));
        if r.plural == "secrets" {
            fold_string_data(obj);
        }
        let strict = t.field_validation == "Strict";
        let named = |fields: &[String]| -> Vec<String> {
            fields
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect()
        };
        let refuse = |fields: &[String]| {
            let version = t.gv.rsplit('/').next().unwrap_or_default();
            Box::new(status(
                400,
                "BadRequest",
                format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                    named(fields).join(", "),
                    kind = r.kind
                ),
            ))
        };
        let Some(schema) = &r.schema else {
            // A built-in kind: its fields are checked, never pruned.
            if t.field_validation == "Ignore" || t.field_validation.is_empty() {
                return Ok(vec![]);
            }
            let unknown = openapi::unknown_builtin_fields(&t.gv, &r.kind, obj);
            if strict && !unknown.is_empty() {
                return Err(refuse(&unknown));
            }
            return Ok(named(&unknown));
        };
        match schema::admit(obj, schema, old, strict) {
            Ok(_) if t.field_validation == "Ignore" => Ok(vec![]),
            Ok(unknown) => Ok(named(&unknown)),
            Err(schema::Refusal::Unknown(fields)) => Err(refuse(&fields)),
            Err(schema::Refusal::Invalid(e)) => {
                let name = meta_str(obj, "name").unwrap_or_default();
                Err(Box::new(status(
                    422,
                    "Invalid",
                    format!(
                        "{}.{} \"{name}\" is invalid: {e}",
                        r.plural,
                        r.gv.split('/').next().unwrap_or_default()
                    ),
                )))
            }
        }
    }

    pub(crate) fn create(
        &self,
        st: &mut Store,
        t: &Target,
        r: &Resource,
        mut obj: Value,
    ) -> Response {
        if !obj.is_object() {
            return status(400, "BadRequest", "the body must be a JSON object".into());
        }
        let name = match meta_str(&obj, "name") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta_str(&obj, "generateName") {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return status(
                        422,
                        "Invalid",
                        format!("{}: metadata.name: Required value", r.kind),
                    )
                }
            },
        };
        if r.namespaced && t.namespace.is_empty() {
            return status(400, "BadRequest", "a namespace is required".into());
        }
        let key = Self::key(t, &name);
        if t.gv == "v1" && t.resource == "services" && !st.objects.contains_key(&key) {
            services::allocate_cluster_ip(st, &mut obj);
        }
        if st.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!(
                    "{}.{} \"{name}\" already exists",
                    t.resource,
                    t.gv.split('/').next().unwrap_or_default()
                ),
            );
        }
        let warnings = match self.prepare(t, r, &mut obj, None) {
            Ok(w) => w,
            Err(resp) => return *resp,
        };
        st.rv += 1;
        set_meta(&mut obj, "name", json!(name));
        if r.namespaced {
            set_meta(&mut obj, "namespace", json!(t.namespace));
        }
        set_meta(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
        set_meta(&mut obj, "resourceVersion", json!(st.rv.to_string()));
        set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
        set_meta(&mut obj, "generation", json!(1));
        if r.plural == "customresourcedefinitions" {
            // Served at once: established, its names accepted.
            let names = obj["spec"]["names"].clone();
            obj["status"] = json!({"acceptedNames": names, "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}]});
        }
        st.objects.insert(key.clone(), obj.clone());
        self.record(st, &key, "ADDED", obj.clone());
        with_warnings(
            (StatusCode::CREATED, axum::Json(obj)).into_response(),
            &warnings,
        )
    }

    /// Stores `obj` as the new state of an existing object.
    pub(crate) fn update(
        &self,
        st: &mut Store,
        t: &Target,
        r: &Resource,
        name: &str,
        mut obj: Value,
        part: Part,
    ) -> Response {
        let key = Self::key(t, name);
        let Some(current) = st.objects.get(&key).cloned() else {
            return not_found(t, name);
        };
        if !obj.is_object() {
            return status(400, "BadRequest", "the body must be a JSON object".into());
        }
        if let Some(rv) = meta_str(&obj, "resourceVersion") {
            if Some(rv) != meta_str(&current, "resourceVersion") {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.resource
                    ),
                );
            }
        }
        if r.status || part == Part::Status {
            match part {
                Part::Main => match current.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        obj.as_object_mut().expect("checked").remove("status");
                    }
                },
                Part::Status => {
                    let status_only = obj.get("status").cloned();
                    obj = current.clone();
                    match status_only {
                        Some(s) => obj["status"] = s,
                        None => {
                            obj.as_object_mut().expect("checked").remove("status");
                        }
                    }
                }
            }
        }
        let warnings = match self.prepare(t, r, &mut obj, Some(&current)) {
            Ok(w) => w,
            Err(resp) => return *resp,
        };
        st.rv += 1;
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
        ] {
            match current.get("metadata").and_then(|m| m.get(k)) {
                Some(v) => set_meta(&mut obj, k, v.clone()),
                None => {
                    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(k);
                    }
                }
            }
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            + i64::from(obj.get("spec") != current.get("spec"));
        set_meta(&mut obj, "generation", json!(generation));
        set_meta(&mut obj, "resourceVersion", json!(st.rv.to_string()));
        // A deleted object waits for its finalizers; the last one removed
        // lets it go.
        let finalizers_left = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if meta_str(&obj, "deletionTimestamp").is_some() && !finalizers_left {
            st.objects.remove(&key);
            self.record(st, &key, "DELETED", obj.clone());
            self.collect_garbage(st, &obj);
            return axum::Json(obj).into_response();
        }
        st.objects.insert(key.clone(), obj.clone());
        self.record(st, &key, "MODIFIED", obj.clone());
        with_warnings(axum::Json(obj).into_response(), &warnings)
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &self,
        st: &mut Store,
        t: &Target,
        r: &Resource,
        name: &str,
        content_type: &str,
        body: &Bytes,
        part: Part,
    ) -> Response {
        let patch: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", format!("the patch is not JSON: {e}")),
        };
        let key = Self::key(t, name);
        let current = st.objects.get(&key).cloned();
        let ct = content_type.split(';').next().unwrap_or_default().trim();
        let next = match (ct, current) {
            // Server-side apply creates what does not exist yet.
            ("application/apply-patch+yaml", None) => return self.create(st, t, r, patch),
            (_, None) => return not_found(t, name),
            ("application/json-patch+json", Some(cur)) => match patch::json_patch(&cur, &patch) {
                Ok(v) => v,
                Err(e) => {
                    return status(
                        422,
                        "Invalid",
                        format!("the JSON patch does not apply: {e}"),
                    )
                }
            },
            ("application/merge-patch+json" | "application/apply-patch+yaml", Some(mut cur)) => {
                let mut patch = patch;
                // An apply names no version to check.
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    if ct == "application/apply-patch+yaml" {
                        m.remove("resourceVersion");
                    }
                }
                patch::merge(&mut cur, &patch);
                cur
            }
            ("application/strategic-merge-patch+json", Some(mut cur)) => {
                patch::strategic_merge(&mut cur, &patch);
                cur
            }
            (other, _) => {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {other:?} is not supported"),
                )
            }
        };
        self.update(st, t, r, name, next, part)
    }

    /// Deletes an object, or marks it for deletion while finalizers remain.
    pub(crate) fn delete(&self, st: &mut Store, t: &Target, name: &str, orphan: bool) -> Response {
        let key = Self::key(t, name);
        let Some(mut obj) = st.objects.get(&key).cloned() else {
            return not_found(t, name);
        };
        st.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(st.rv.to_string()));
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            if meta_str(&obj, "deletionTimestamp").is_none() {
                set_meta(&mut obj, "deletionTimestamp", json!(now_rfc3339()));
            }
            st.objects.insert(key.clone(), obj.clone());
            self.record(st, &key, "MODIFIED", obj.clone());
            return axum::Json(obj).into_response();
        }
        st.objects.remove(&key);
        self.record(st, &key, "DELETED", obj.clone());
        if orphan {
            self.orphan(st, &obj);
        } else {
            self.collect_garbage(st, &obj);
        }
        axum::Json(obj).into_response()
    }

    /// Owner-reference garbage collection: dependents of a deleted object go
    /// too (background and foreground alike: at once, dependents first in
    /// effect since the owner is already gone).
    fn collect_garbage(&self, st: &mut Store, owner: &Value) {
        let Some(uid) = meta_str(owner, "uid").map(str::to_string) else {
            return;
        };
        let dependents: Vec<Key> = st
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(&uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            let t = Target::of(&k);
            let _ = self.delete(st, &t, &k.3, false);
        }
    }

    /// `propagationPolicy: Orphan`: dependents stay, without the reference.
    fn orphan(&self, st: &mut Store, owner: &Value) {
        let Some(uid) = meta_str(owner, "uid").map(str::to_string) else {
            return;
        };
        let keys: Vec<Key> = st.objects.keys().cloned().collect();
        for k in keys {
            let mut o = st.objects[&k].clone();
            let Some(refs) = o
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            let before = refs.len();
            refs.retain(|r| r["uid"].as_str() != Some(&uid));
            if refs.len() != before {
                st.rv += 1;
                set_meta(&mut o, "resourceVersion", json!(st.rv.to_string()));
                st.objects.insert(k.clone(), o.clone());
                self.record(st, &k, "MODIFIED", o);
            }
        }
    }

    fn delete_collection(
        &self,
        st: &mut Store,
        t: &Target,
        r: &Resource,
        q: &HashMap<String, String>,
    ) -> Response {
        let keys: Vec<Key> = st
            .objects
            .iter()
            .filter(|((gv, res, ns, _), v)| {
                *gv == t.gv
                    && *res == t.resource
                    && (t.namespace.is_empty() || *ns == t.namespace)
                    && matches_labels(v, q.get("labelSelector").map(String::as_str))
                    && matches_fields(v, q.get("fieldSelector").map(String::as_str))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = vec![];
        for k in keys {
            let t = Target::of(&k);
            if let Some(o) = st.objects.get(&k).cloned() {
                let _ = self.delete(st, &t, &k.3, false);
                items.push(o);
            }
        }
        axum::Json(json!({
            "kind": format!("{}List", r.kind), "apiVersion": t.gv,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items,
        }))
        .into_response()
    }

    /// A watch: past events after `resourceVersion` (or the current objects
    /// as ADDED when none is given), then live ones, one JSON per line.
    fn watch(self: &Arc<Self>, t: Target, kind: String, q: HashMap<String, String>) -> Response {
        let mut live = self.events.subscribe();
        let wanted = {
            let t = (t.gv.clone(), t.resource.clone(), t.namespace.clone());
            let labels = q.get("labelSelector").cloned();
            let fields = q.get("fieldSelector").cloned();
            move |e: &Event| {
                e.gv == t.0
                    && e.resource == t.1
                    && (t.2.is_empty() || e.namespace == t.2)
                    && matches_labels(&e.object, labels.as_deref())
                    && matches_fields(&e.object, fields.as_deref())
            }
        };
        // A streaming list (WatchList): the current state, then a bookmark
        // marking the end of the initial events.
        let initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0" && !initial)
            .and_then(|v| v.parse().ok());
        let (backlog, mut last, gone) = {
            let st = self.store.lock().expect("store lock");
            match from {
                Some(rv) => {
                    let oldest = st.history.front().map(|e| e.rv).unwrap_or(st.rv + 1);
                    if rv + 1 < oldest && rv < st.rv {
                        (vec![], rv, true)
                    } else {
                        let b: Vec<Event> = st
                            .history
                            .iter()
                            .filter(|e| e.rv > rv && wanted(e))
                            .cloned()
                            .collect();
                        (b, st.rv, false)
                    }
                }
                None => {
                    let b: Vec<Event> = st
                        .objects
                        .iter()
                        .map(|((gv, res, ns, _), o)| Event {
                            rv: st.rv,
                            gv: gv.clone(),
                            resource: res.clone(),
                            namespace: ns.clone(),
                            kind: "ADDED",
                            object: o.clone(),
                        })
                        .filter(|e| wanted(e))
                        .collect();
                    (b, st.rv, false)
                }
            }
        };
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800);
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
        let line = |v: Value| {
            let mut b = serde_json::to_vec(&v).expect("serializes");
            b.push(b'\n');
            Ok(Bytes::from(b))
        };
        let gv = t.gv.clone();
        tokio::spawn(async move {
            let bookmark = |rv: u64, end: bool| {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": gv, "metadata": meta}})
            };
            if gone {
                let expired = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410}});
                let _ = tx.send(line(expired)).await;
                return;
            }
            for e in backlog {
                if tx
                    .send(line(json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if initial && tx.send(line(bookmark(last, true))).await.is_err() {
                return;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tick.tick(), if bookmarks => {
                        if tx.send(line(bookmark(last, false))).await.is_err() { return; }
                    }
                    e = live.recv() => match e {
                        Ok(e) => {
                            if e.rv <= last && from.is_some() { continue; }
                            last = last.max(e.rv);
                            if !wanted(&e) { continue; }
                            if tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                                return;
                            }
                        }
                        // Fell behind: end the watch; the client resumes.
                        Err(_) => return,
                    }
                }
            }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .expect("valid response")
    }
}

fn not_found(t: &Target, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.resource),
    )
}

/// The Scale view of an object with replicas.
fn scale_of(obj: &Value) -> Value {
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "resourceVersion": obj["metadata"]["resourceVersion"], "uid": obj["metadata"]["uid"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)},
    })
}

/// Every request: the faults a test injected first (see [`faults`]), then
/// the API.
async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if uri.path() == "/localkube/faults" {
        return match method {
            Method::GET => axum::Json(server.faults.rules()).into_response(),
            Method::PUT => match serde_json::from_slice::<faults::Rules>(&body) {
                Ok(r) => {
                    tracing::info!(rules = ?r, "faults injected");
                    server.faults.set(r);
                    axum::Json(server.faults.rules()).into_response()
                }
                Err(e) => status(400, "BadRequest", format!("invalid fault rules: {e}")),
            },
            m => status(
                405,
                "MethodNotAllowed",
                format!("{m} is not supported here"),
            ),
        };
    }
    if uri.path() == "/localkube/stats" {
        let stats = server.stats.lock().expect("stats lock").clone();
        return axum::Json(stats).into_response();
    }
    let watching = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    if let Some(t) = parse_path(uri.path()) {
        let verb = match (&method, t.name.is_some(), watching) {
            (&Method::GET, _, true) => "watch",
            (&Method::GET, true, _) => "get",
            (&Method::GET, false, _) => "list",
            (&Method::POST, ..) => "create",
            (&Method::PUT, ..) => "update",
            (&Method::PATCH, ..) => "patch",
            (&Method::DELETE, ..) => "delete",
            _ => "other",
        };
        let resource = match &t.sub {
            Some(sub) => format!("{}/{sub}", t.resource),
            None => t.resource.clone(),
        };
        *server
            .stats
            .lock()
            .expect("stats lock")
            .entry(format!("{verb} {resource}"))
            .or_insert(0) += 1;
    }
    let client = faults::client_of(&headers);
    match server.faults.verdict(&client, &method) {
        faults::Verdict::Serve => {}
        faults::Verdict::Isolated => return faults::failure(503, "this client is cut off"),
        faults::Verdict::FailBefore => return faults::failure(500, "the write was not made"),
        faults::Verdict::FailAfter => {
            let _made = serve_api(State(server), method, uri, headers, Query(q), body).await;
            return faults::failure(500, "the write was made, the answer lost");
        }
    }
    let resp = serve_api(State(server.clone()), method, uri, headers, Query(q), body).await;
    if watching {
        return server.faults.cut_when_isolated(client, resp);
    }
    resp
}

/// `/openapi/v2` and `/openapi/v3[/...]` (see [`openapi`]); `None` for
/// any other path.
fn serve_openapi(
    path: &str,
    headers: &axum::http::HeaderMap,
    all: &[Resource],
) -> Option<Response> {
    let not_found = || {
        status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    };
    if path == "/openapi/v2" {
        let accept = headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("*/*");
        if !(accept.contains("json") || accept.contains("*/*")) {
            return Some(status(
                406,
                "NotAcceptable",
                "only application/json is served for /openapi/v2".into(),
            ));
        }
        return Some(axum::Json(openapi::v2_document(all)).into_response());
    }
    if path == "/openapi/v3" {
        return Some(axum::Json(openapi::v3_index(all)).into_response());
    }
    let rest = path.strip_prefix("/openapi/v3/")?;
    let gv = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => v.to_string(),
        ["apis", g, v] => format!("{g}/{v}"),
        _ => return Some(not_found()),
    };
    Some(match openapi::v3_document(&gv, all) {
        Some(d) => axum::Json(d).into_response(),
        None => not_found(),
    })
}

async fn serve_api(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    tracing::debug!(%method, %uri, content_type = ?headers.get("content-type"), "request");
    match path {
        "/version" => {
            return axum::Json(json!({
                "major": "1", "minor": "30", "gitVersion": "v1.30.0-localkube",
                "platform": "linux/amd64"
            }))
            .into_response()
        }
        "/healthz" | "/readyz" | "/livez" => return "ok".into_response(),
        "/api" => return axum::Json(discovery::core_versions(&server.addr)).into_response(),
        _ => {}
    }
    {
        let st = server.store.lock().expect("store lock");
        let all = server.resources(&st);
        if let Some(resp) = serve_openapi(path, &headers, &all) {
            return resp;
        }
        if path == "/apis" {
            return axum::Json(discovery::group_list(&all)).into_response();
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let gv = match segs.as_slice() {
            ["api", v] => Some(v.to_string()),
            ["apis", g, v] => Some(format!("{g}/{v}")),
            _ => None,
        };
        if let Some(gv) = gv {
            return match discovery::resource_list(&gv, &all) {
                Some(l) => axum::Json(l).into_response(),
                None => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                ),
            };
        }
    }
    let Some(mut t) = parse_path(path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    };
    if let Some(v) = q.get("fieldValidation") {
        t.field_validation = v.clone();
    }
    if q.contains_key("dryRun") {
        return status(
            400,
            "BadRequest",
            "dry run is not supported by localkube".into(),
        );
    }
    let watching = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    if method == Method::GET && t.name.is_none() && watching {
        let kind = {
            let st = server.store.lock().expect("store lock");
            server.resource(&st, &t).map(|r| r.kind)
        };
        let Some(kind) = kind else {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            );
        };
        return server.watch(t, kind, q);
    }
    let mut st = server.store.lock().expect("store lock");
    let Some(r) = server.resource(&st, &t) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let protobuf = content_type.starts_with("application/vnd.kubernetes.protobuf");
    let parse = |body: &Bytes| -> Result<Value, String> {
        if protobuf {
            proto::decode(body)
        } else {
            serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
        }
    };
    let sub = t.sub.clone();
    match (method, t.name.clone(), sub.as_deref()) {
        (Method::GET, None, None) => server.list(&st, &t, &r, &q, table::wanted(&headers)),
        (Method::GET, Some(n), None | Some("status")) => match st.objects.get(&Server::key(&t, &n))
        {
            Some(o) if table::wanted(&headers) => {
                axum::Json(table::of(&r, std::slice::from_ref(o), &st.rv.to_string()))
                    .into_response()
            }
            Some(o) => axum::Json(o.clone()).into_response(),
            None => not_found(&t, &n),
        },
        (Method::GET, Some(n), Some("log")) if r.plural == "pods" => {
            if !st.objects.contains_key(&Server::key(&t, &n)) {
                return not_found(&t, &n);
            }
            let text = std::fs::read_to_string(kubelet::Kubelet::log_path(
                &server.state_dir,
                &t.namespace,
                &n,
            ))
            .unwrap_or_default();
            ([("content-type", "text/plain")], text).into_response()
        }
        (Method::GET, Some(n), Some("scale")) if r.scale => {
            match st.objects.get(&Server::key(&t, &n)) {
                Some(o) => axum::Json(scale_of(o)).into_response(),
                None => not_found(&t, &n),
            }
        }
        (Method::POST, None, None) => match parse(&body) {
            Ok(v) => server.create(&mut st, &t, &r, v),
            Err(e) => status(400, "BadRequest", format!("invalid JSON: {e}")),
        },
        (Method::PUT, Some(n), None) => match parse(&body) {
            Ok(v) => server.update(&mut st, &t, &r, &n, v, Part::Main),
            Err(e) => status(400, "BadRequest", format!("invalid JSON: {e}")),
        },
        (Method::PUT, Some(n), Some("status")) => match parse(&body) {
            Ok(v) => server.update(&mut st, &t, &r, &n, v, Part::Status),
            Err(e) => status(400, "BadRequest", format!("invalid JSON: {e}")),
        },
        (Method::PATCH, Some(n), None) => {
            server.patch(&mut st, &t, &r, &n, &content_type, &body, Part::Main)
        }
        (Method::PATCH, Some(n), Some("status")) => {
            server.patch(&mut st, &t, &r, &n, &content_type, &body, Part::Status)
        }
        (m @ (Method::PUT | Method::PATCH), Some(n), Some("scale")) if r.scale => {
            let Some(cur) = st.objects.get(&Server::key(&t, &n)).cloned() else {
                return not_found(&t, &n);
            };
            let requested = match parse(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", format!("invalid JSON: {e}")),
            };
            let mut scale = scale_of(&cur);
            if m == Method::PATCH {
                patch::merge(&mut scale, &requested);
            } else {
                scale = requested;
            }
            let Some(replicas) = scale["spec"]["replicas"].as_i64() else {
                return status(422, "Invalid", "spec.replicas: Required value".into());
            };
            let mut next = cur.clone();
            next["spec"]["replicas"] = json!(replicas);
            let resp = server.update(&mut st, &t, &r, &n, next, Part::Main);
            if resp.status().is_success() {
                let o = st.objects[&Server::key(&t, &n)].clone();
                return axum::Json(scale_of(&o)).into_response();
            }
            resp
        }
        (Method::DELETE, Some(n), None) => {
            let orphan = parse(&body)
                .ok()
                .and_then(|b| b["propagationPolicy"].as_str().map(str::to_string))
                .or_else(|| q.get("propagationPolicy").cloned())
                .is_some_and(|p| p == "Orphan");
            server.delete(&mut st, &t, &n, orphan)
        }
        (Method::DELETE, None, None) => server.delete_collection(&mut st, &t, &r, &q),
        (m, _, _) => status(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        ),
    }
}

fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: localkube\n  cluster:\n    server: {url}\ncontexts:\n- name: localkube\n  context:\n    cluster: localkube\n    user: localkube\n    namespace: default\ncurrent-context: localkube\nusers:\n- name: localkube\n  user: {{}}\n"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.listen.ip().is_loopback(),
        "localkube listens on loopback addresses only"
    );
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state_dir = match &cli.state_dir {
        Some(d) => d.clone(),
        None => cli
            .kubeconfig
            .parent()
            .map(|p| p.join("localkube-state"))
            .unwrap_or_else(|| PathBuf::from("localkube-state")),
    };
    std::fs::create_dir_all(&state_dir)?;
    std::fs::write(&cli.kubeconfig, kubeconfig(&url))?;
    let server = Arc::new(Server {
        store: Mutex::new(Store::default()),
        events: broadcast::channel(4096).0,
        addr: url.trim_start_matches("http://").to_string(),
        history: cli.watch_history.max(1),
        state_dir: state_dir.clone(),
        faults: faults::Faults::default(),
        stats: Mutex::new(BTreeMap::new()),
    });
    {
        // The namespaces every cluster starts with.
        let mut st = server.store.lock().expect("store lock");
        for ns in ["default", "kube-system", "kube-public"] {
            let t = parse_path("/api/v1/namespaces").expect("a path");
            let r = server.resource(&st, &t).expect("namespaces are built in");
            let _ = server.create(
                &mut st,
                &t,
                &r,
                serde_json::json!({"metadata": {"name": ns}}),
            );
        }
        // The nodes pods run on (all of them this machine).
        let t = parse_path("/api/v1/nodes").expect("a path");
        let r = server.resource(&st, &t).expect("nodes are built in");
        let nodes: Vec<(String, Option<&String>)> = if cli.zones.is_empty() {
            vec![("localkube".into(), None)]
        } else {
            cli.zones
                .iter()
                .enumerate()
                .map(|(i, z)| (format!("localkube-{i}"), Some(z)))
                .collect()
        };
        for (name, zone) in nodes {
            let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
            if let Some(z) = zone {
                labels["topology.kubernetes.io/zone"] = json!(z);
            }
            let _ = server.create(
                &mut st,
                &t,
                &r,
                json!({"metadata": {"name": name, "labels": labels},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
            );
        }
    }
    let images: HashMap<String, Vec<String>> = match &cli.images {
        Some(f) => serde_json::from_slice(&std::fs::read(f)?)
            .map_err(|e| anyhow::anyhow!("image map {}: {e}", f.display()))?,
        None => HashMap::new(),
    };
    tokio::spawn(
        kubelet::Kubelet::new(
            server.clone(),
            kubelet::Config {
                images,
                state_dir: state_dir.clone(),
                kubeconfig: std::path::absolute(&cli.kubeconfig)?,
            },
        )
        .run(),
    );
    tokio::spawn(services::run(server.clone()));
    let app = Router::new().fallback(handle).with_state(server);
    println!(
        "localkube ready url={url} kubeconfig={}",
        cli.kubeconfig.display()
    );
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        let t = parse_path("/apis/coordination.k8s.io/v1/namespaces/default/leases/x").unwrap();
        assert_eq!(
            (
                t.gv.as_str(),
                t.resource.as_str(),
                t.namespace.as_str(),
                t.name.as_deref()
            ),
            ("coordination.k8s.io/v1", "leases", "default", Some("x"))
        );
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!((t.resource.as_str(), t.name), ("namespaces", None));
        let t = parse_path("/apis/apps/v1/namespaces/a/statefulsets/s/scale").unwrap();
        assert_eq!(
            (t.name.as_deref(), t.sub.as_deref()),
            (Some("s"), Some("scale"))
        );
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "a", "labels": {"k": "v", "x": "y"}}});
        assert!(matches_labels(&o, Some("k=v,x")));
        assert!(matches_labels(&o, Some("k==v,z!=1,!z")));
        assert!(!matches_labels(&o, Some("k=w")));
        assert!(matches_fields(&o, Some("metadata.name=a")));
        assert!(!matches_fields(&o, Some("metadata.name=b")));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
