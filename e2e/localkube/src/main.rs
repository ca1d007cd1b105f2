//! localkube: a Kubernetes API stand-in for tests on machines without a
//! container engine (where kind cannot run). Test infrastructure, not a
//! product: kind remains the reference.
//!
//! This first part is the API server core the coordination backend needs:
//! objects of any resource stored as JSON, keyed by group/version, resource,
//! namespace and name; one global, monotonically increasing resourceVersion;
//! create (409 AlreadyExists), get, list with label and field selectors,
//! replace with optimistic concurrency (409 Conflict on a stale
//! resourceVersion), delete, deletecollection, and watch (from a
//! resourceVersion, with bookmarks when asked, 410 Gone when too old). It
//! writes a kubeconfig that kube-rs and kubectl can use. Discovery, patches,
//! subresources, CRD validation, garbage collection and the process kubelet
//! come later (see e2e/README.md).

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

/// How many past events a watch may resume from.
const HISTORY: usize = 10_000;

#[derive(Parser)]
#[command(name = "localkube", about = "A Kubernetes API stand-in for tests")]
struct Cli {
    /// Address of the API server (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server.
    #[arg(long)]
    kubeconfig: PathBuf,
}

/// Where an object lives: (group/version, resource, namespace, name).
type Key = (String, String, String, String);

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
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
}

struct Server {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
}

/// The parts of a request path: `/api/v1/...` or `/apis/<group>/<version>/...`.
struct Target {
    gv: String,
    resource: String,
    namespace: String,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, res, more @ ..] if more.len() <= 1 => Some(Target {
            gv,
            resource: res.to_string(),
            namespace: ns.to_string(),
            name: more.first().map(|s| s.to_string()),
        }),
        [res, more @ ..] if more.len() <= 1 => Some(Target {
            gv,
            resource: res.to_string(),
            namespace: String::new(),
            name: more.first().map(|s| s.to_string()),
        }),
        _ => None,
    }
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

fn now_rfc3339() -> String {
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

impl Server {
    fn record(&self, st: &mut Store, t: &Target, kind: &'static str, object: Value) {
        let e = Event {
            rv: st.rv,
            gv: t.gv.clone(),
            resource: t.resource.clone(),
            namespace: t.namespace.clone(),
            kind,
            object,
        };
        st.history.push_back(e.clone());
        if st.history.len() > HISTORY {
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

    fn list(&self, t: &Target, q: &HashMap<String, String>) -> Response {
        let st = self.store.lock().expect("store lock");
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
        axum::Json(json!({
            "kind": "List", "apiVersion": t.gv,
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
        .into_response()
    }

    fn create(&self, t: &Target, mut obj: Value) -> Response {
        let mut st = self.store.lock().expect("store lock");
        let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) => format!(
                    "{prefix}{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..5]
                ),
                None => return status(422, "Invalid", "metadata.name: Required value".into()),
            },
        };
        let key = Self::key(t, &name);
        if st.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.resource),
            );
        }
        st.rv += 1;
        let meta = obj
            .as_object_mut()
            .and_then(|o| {
                o.entry("metadata")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            })
            .expect("objects are JSON objects");
        meta.insert("name".into(), json!(name));
        if !t.namespace.is_empty() {
            meta.insert("namespace".into(), json!(t.namespace));
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("resourceVersion".into(), json!(st.rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        st.objects.insert(key, obj.clone());
        self.record(&mut st, t, "ADDED", obj.clone());
        (StatusCode::CREATED, axum::Json(obj)).into_response()
    }

    fn get(&self, t: &Target, name: &str) -> Response {
        let st = self.store.lock().expect("store lock");
        match st.objects.get(&Self::key(t, name)) {
            Some(o) => axum::Json(o.clone()).into_response(),
            None => not_found(t, name),
        }
    }

    fn replace(&self, t: &Target, name: &str, mut obj: Value) -> Response {
        let mut st = self.store.lock().expect("store lock");
        let key = Self::key(t, name);
        let Some(current) = st.objects.get(&key).cloned() else {
            return not_found(t, name);
        };
        let cur_rv = current.pointer("/metadata/resourceVersion").cloned();
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if Some(&json!(rv)) != cur_rv.as_ref() {
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
        st.rv += 1;
        let spec_changed = obj.get("spec") != current.get("spec");
        let meta = obj
            .as_object_mut()
            .and_then(|o| {
                o.entry("metadata")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            })
            .expect("objects are JSON objects");
        for k in ["uid", "creationTimestamp", "namespace", "name"] {
            if let Some(v) = current.pointer(&format!("/metadata/{k}")) {
                meta.insert(k.into(), v.clone());
            }
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            + i64::from(spec_changed);
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), json!(st.rv.to_string()));
        st.objects.insert(key, obj.clone());
        self.record(&mut st, t, "MODIFIED", obj.clone());
        axum::Json(obj).into_response()
    }

    fn delete(&self, t: &Target, name: &str) -> Response {
        let mut st = self.store.lock().expect("store lock");
        let Some(mut obj) = st.objects.remove(&Self::key(t, name)) else {
            return not_found(t, name);
        };
        st.rv += 1;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(st.rv.to_string()));
        }
        self.record(&mut st, t, "DELETED", obj.clone());
        axum::Json(obj).into_response()
    }

    fn delete_collection(&self, t: &Target, q: &HashMap<String, String>) -> Response {
        let mut st = self.store.lock().expect("store lock");
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
            let mut obj = st.objects.remove(&k).expect("listed");
            st.rv += 1;
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("resourceVersion".into(), json!(st.rv.to_string()));
            }
            self.record(&mut st, t, "DELETED", obj.clone());
            items.push(obj);
        }
        axum::Json(json!({
            "kind": "List", "apiVersion": t.gv,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items,
        }))
        .into_response()
    }

    /// A watch: past events after `resourceVersion` (or the current objects
    /// as ADDED when none is given), then live ones, one JSON per line.
    fn watch(self: &Arc<Self>, t: Target, q: HashMap<String, String>) -> Response {
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
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
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
                        .filter(|((gv, res, ns, _), _)| {
                            *gv == t.gv
                                && *res == t.resource
                                && (t.namespace.is_empty() || *ns == t.namespace)
                        })
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
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tick.tick(), if bookmarks => {
                        let b = json!({"type": "BOOKMARK", "object": {
                            "kind": "Bookmark", "apiVersion": gv,
                            "metadata": {"resourceVersion": last.to_string()}}});
                        if tx.send(line(b)).await.is_err() { return; }
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

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if uri.path() == "/version" {
        return axum::Json(json!({
            "major": "1", "minor": "30", "gitVersion": "v1.30.0-localkube",
            "platform": "linux/amd64"
        }))
        .into_response();
    }
    let Some(t) = parse_path(uri.path()) else {
        return status(404, "NotFound", format!("no route for {}", uri.path()));
    };
    let parse = |body: &Bytes| serde_json::from_slice::<Value>(body);
    let watching = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    match (method, t.name.clone()) {
        (Method::GET, None) if watching => server.watch(t, q),
        (Method::GET, None) => server.list(&t, &q),
        (Method::GET, Some(n)) => server.get(&t, &n),
        (Method::POST, None) => match parse(&body) {
            Ok(v) => server.create(&t, v),
            Err(e) => status(400, "BadRequest", format!("invalid JSON: {e}")),
        },
        (Method::PUT, Some(n)) => match parse(&body) {
            Ok(v) => server.replace(&t, &n, v),
            Err(e) => status(400, "BadRequest", format!("invalid JSON: {e}")),
        },
        (Method::DELETE, Some(n)) => server.delete(&t, &n),
        (Method::DELETE, None) => server.delete_collection(&t, &q),
        (m, _) => status(
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
    std::fs::write(&cli.kubeconfig, kubeconfig(&url))?;
    let server = Arc::new(Server {
        store: Mutex::new(Store::default()),
        events: broadcast::channel(4096).0,
    });
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
