//! The process kubelet and the workload controllers.
//!
//! - StatefulSet controller: pods `<name>-<ordinal>` created in order (each
//!   waits for the previous to be Ready), a PVC per volumeClaimTemplate and
//!   ordinal that outlives its pods, scale down from the highest ordinal,
//!   rolling update of changed templates from the highest ordinal, status
//!   with readyReplicas and current/update revisions.
//! - Deployment controller: pods labelled with their template's hash, new
//!   ones created before old ones go, status with ready and available
//!   replicas.
//! - Job controller: pods created until `completions` succeed (at most
//!   `parallelism` at once), failed pods retried up to `backoffLimit`,
//!   status with active, succeeded and failed counts and the Complete or
//!   Failed condition.
//! - Kubelet: every pod is a local process. The image's entrypoint is a
//!   program in localkube's image map; a container's `command` replaces it
//!   (looked up on this machine's PATH) and its args follow, as a container
//!   runtime does. Each
//!   pod gets its own loopback address (127.0.0.N) as its pod IP. Volumes are
//!   directories (a PVC's outlives its pods and goes with the PVC); their
//!   mount paths in command, args and env are rewritten to the directory.
//!   Env: values, the downward API (metadata.name, metadata.namespace,
//!   metadata.uid, status.podIP, spec.nodeName), ConfigMap and Secret keys
//!   and envFrom; a pod whose Secret or ConfigMap (volume or key) is
//!   missing waits for it, retried every second, as the kubelet does. Pods are scheduled onto the fewest-loaded of localkube's
//!   Node objects (`--zones`: one per zone), all of them this machine.
//!   HTTP and TCP readiness and liveness probes, restartPolicy
//!   Always with backoff (OnFailure restarts only failed containers, Never
//!   none: the pod ends Succeeded or Failed), SIGTERM then SIGKILL after the grace period,
//!   stdout and stderr kept per pod for `kubectl logs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{meta_str, Key, Part, Server, Store};

/// What a container runs: argv, environment, working directory.
type Launch = (Vec<String>, Vec<(String, String)>, PathBuf);

pub struct Config {
    /// Image name (without tag) -> program and leading arguments.
    pub images: HashMap<String, Vec<String>>,
    pub state_dir: PathBuf,
    /// Given to every pod as `KUBECONFIG`: its way to the API server, as a
    /// real kubelet mounts the service account's credentials.
    pub kubeconfig: PathBuf,
}

struct Running {
    uid: String,
    /// terminationGracePeriodSeconds: SIGTERM, then SIGKILL after this.
    grace: Duration,
    ip: String,
    child: Option<tokio::process::Child>,
    restarts: i64,
    started: Instant,
    next_start: Option<Instant>,
    ready: bool,
    live_failures: u32,
    ready_failures: u32,
    /// Probes run off the kubelet's loop, as a real kubelet's per-pod
    /// workers do: a hung container (SIGSTOP) costs its own probe's
    /// timeout, not every other pod's and controller's progress.
    readiness: Probe,
    liveness: Probe,
    /// A container being stopped (SIGTERM, SIGKILL after the grace period)
    /// in the background; the next one starts once it is gone.
    stopping: Option<tokio::task::JoinHandle<()>>,
    error: Option<String>,
    /// The exit code of a container that ended for good (restartPolicy
    /// Never, or OnFailure after a success).
    terminated: Option<i32>,
}

/// One probe of a container: when it last started and the attempt in flight.
#[derive(Default)]
struct Probe {
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<bool>>,
}

impl Probe {
    /// The result of an attempt that finished since the last call; starts
    /// the next attempt when none is in flight and `period` has passed
    /// since the last one began.
    fn poll(
        &mut self,
        now: Instant,
        period: Duration,
        start: impl FnOnce() -> tokio::task::JoinHandle<bool>,
    ) -> Option<bool> {
        let mut result = None;
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.running.take().expect("checked");
            result = Some(h.now_or_never().and_then(Result::ok).unwrap_or(false));
        }
        if self.running.is_none() && self.last.is_none_or(|t| now >= t + period) {
            self.running = Some(start());
            self.last = Some(now);
        }
        result
    }

    fn reset(&mut self) {
        if let Some(h) = self.running.take() {
            h.abort();
        }
        self.last = None;
    }
}

pub struct Kubelet {
    server: Arc<Server>,
    config: Config,
    pods: HashMap<(String, String), Running>,
    ips: HashMap<(String, String), String>,
    next_ip: u32,
}

fn hash_of(v: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serde_json::to_vec(v).unwrap_or_default() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

fn key(gv: &str, res: &str, ns: &str, name: &str) -> Key {
    (gv.into(), res.into(), ns.into(), name.into())
}

fn owned_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|r| r["uid"].as_str() == Some(uid)))
}

pub(crate) fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn owner_ref(owner: &Value, kind: &str, gv: &str) -> Value {
    json!([{"apiVersion": gv, "kind": kind, "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
}

impl Kubelet {
    pub fn new(server: Arc<Server>, config: Config) -> Kubelet {
        Kubelet {
            server,
            config,
            pods: HashMap::new(),
            ips: HashMap::new(),
            next_ip: 2,
        }
    }

    pub async fn run(mut self) {
        let mut events = self.server.events.subscribe();
        loop {
            self.reconcile_statefulsets();
            self.reconcile_deployments();
            self.reconcile_jobs();
            self.sync_pods().await;
            let _ = tokio::time::timeout(Duration::from_millis(250), events.recv()).await;
        }
    }

    /// The pods in `ns` whose owner has `uid`.
    fn owned_pods(st: &Store, ns: &str, uid: &str) -> Vec<(Key, Value)> {
        Self::objects(st, "v1", "pods")
            .into_iter()
            .filter(|(pk, p)| pk.2 == ns && owned_by(p, uid))
            .collect()
    }

    fn objects(st: &Store, gv: &str, res: &str) -> Vec<(Key, Value)> {
        st.objects
            .iter()
            .filter(|((g, r, _, _), _)| g == gv && r == res)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn create(&self, st: &mut Store, gv: &str, res: &str, ns: &str, obj: Value) {
        let t = crate::Target {
            gv: gv.into(),
            resource: res.into(),
            namespace: ns.into(),
            name: None,
            sub: None,
            field_validation: "Ignore".into(),
        };
        if let Some(r) = self.server.resource(st, &t) {
            let _ = self.server.create(st, &t, &r, obj);
        }
    }

    fn delete(&self, st: &mut Store, k: &Key) {
        let t = crate::Target::of(k);
        let _ = self.server.delete(st, &t, &k.3, false);
    }

    fn set_status(&self, st: &mut Store, k: &Key, status: Value) {
        let Some(cur) = st.objects.get(k).cloned() else {
            return;
        };
        if cur.get("status") == Some(&status) {
            return;
        }
        let t = crate::Target::of(k);
        if let Some(r) = self.server.resource(st, &t) {
            let mut next = cur;
            next["status"] = status;
            let _ = self.server.update(st, &t, &r, &k.3, next, Part::Status);
        }
    }

    /// The scheduler: a pod without a node goes to the node running the
    /// fewest pods (ties: the first by name), which spreads a StatefulSet
    /// over the zones as its topology spread constraint asks.
    fn schedule(&self, k: &Key, pod: Value) -> Value {
        if pod["spec"]["nodeName"].is_string() {
            return pod;
        }
        let server = self.server.clone();
        let mut st = server.store.lock().expect("store lock");
        let mut load: BTreeMap<String, usize> = Self::objects(&st, "v1", "nodes")
            .into_iter()
            .map(|(k, _)| (k.3, 0))
            .collect();
        for (_, p) in Self::objects(&st, "v1", "pods") {
            if let Some(c) = p["spec"]["nodeName"].as_str().and_then(|n| load.get_mut(n)) {
                *c += 1;
            }
        }
        let Some(node) = load
            .iter()
            .min_by_key(|(name, n)| (**n, (*name).clone()))
            .map(|(name, _)| name.clone())
        else {
            return pod;
        };
        let mut next = pod.clone();
        next["spec"]["nodeName"] = json!(node);
        let t = crate::Target::of(k);
        if let Some(r) = self.server.resource(&st, &t) {
            let _ = self
                .server
                .update(&mut st, &t, &r, &k.3, next.clone(), Part::Main);
        }
        st.objects.get(k).cloned().unwrap_or(next)
    }

    fn pod_from_template(
        template: &Value,
        name: &str,
        owner: Value,
        extra_labels: &[(&str, String)],
    ) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
            "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["ownerReferences"] = owner;
        if !pod["metadata"]["labels"].is_object() {
            pod["metadata"]["labels"] = json!({});
        }
        for (k, v) in extra_labels {
            pod["metadata"]["labels"][*k] = json!(v);
        }
        pod
    }

    fn reconcile_statefulsets(&self) {
        let server = self.server.clone();
        let mut st = server.store.lock().expect("store lock");
        for (k, sts) in Self::objects(&st, "apps/v1", "statefulsets") {
            if meta_str(&sts, "deletionTimestamp").is_some() {
                continue;
            }
            let ns = k.2.clone();
            let name = k.3.clone();
            let uid = meta_str(&sts, "uid").unwrap_or_default().to_string();
            let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
            let template = sts["spec"]["template"].clone();
            let revision = format!("{name}-{}", hash_of(&template));
            let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
            let claims: Vec<Value> = sts["spec"]["volumeClaimTemplates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let pods: BTreeMap<i64, Value> = Self::owned_pods(&st, &ns, &uid)
                .into_iter()
                .filter_map(|(pk, p)| {
                    let ord = pk.3.strip_prefix(&format!("{name}-"))?.parse().ok()?;
                    Some((ord, p))
                })
                .collect();
            // PVCs first: they outlive pods, and a pod needs its claims.
            for i in 0..replicas {
                for c in &claims {
                    let cname = format!(
                        "{}-{name}-{i}",
                        c["metadata"]["name"].as_str().unwrap_or("data")
                    );
                    if !st
                        .objects
                        .contains_key(&key("v1", "persistentvolumeclaims", &ns, &cname))
                    {
                        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": cname, "labels": c["metadata"]["labels"].clone()},
                            "spec": c.get("spec").cloned().unwrap_or(json!({}))});
                        if !pvc["metadata"]["labels"].is_object() {
                            pvc["metadata"]["labels"] = json!({});
                        }
                        self.create(&mut st, "v1", "persistentvolumeclaims", &ns, pvc);
                        let pk = key("v1", "persistentvolumeclaims", &ns, &cname);
                        self.set_status(&mut st, &pk, json!({"phase": "Bound"}));
                    }
                }
            }
            let all_ready_below = |i: i64| (0..i).all(|j| pods.get(&j).is_some_and(pod_ready));
            let mut busy = false;
            for i in 0..replicas {
                if pods.contains_key(&i) {
                    continue;
                }
                if !parallel && !all_ready_below(i) {
                    break;
                }
                let pname = format!("{name}-{i}");
                let mut pod = Self::pod_from_template(
                    &template,
                    &pname,
                    owner_ref(&sts, "StatefulSet", "apps/v1"),
                    &[
                        ("statefulset.kubernetes.io/pod-name", pname.clone()),
                        ("controller-revision-hash", revision.clone()),
                        ("apps.kubernetes.io/pod-index", i.to_string()),
                    ],
                );
                pod["spec"]["hostname"] = json!(pname);
                if let Some(svc) = sts["spec"]["serviceName"].as_str() {
                    pod["spec"]["subdomain"] = json!(svc);
                }
                let mut volumes = pod["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for c in &claims {
                    let cn = c["metadata"]["name"].as_str().unwrap_or("data");
                    volumes.push(json!({"name": cn,
                        "persistentVolumeClaim": {"claimName": format!("{cn}-{name}-{i}")}}));
                }
                pod["spec"]["volumes"] = json!(volumes);
                self.create(&mut st, "v1", "pods", &ns, pod);
                busy = true;
                if !parallel {
                    break;
                }
            }
            // Scale down: the highest ordinal first, one at a time.
            if !busy {
                if let Some((&i, _)) = pods.iter().rev().find(|(i, _)| **i >= replicas) {
                    if parallel || all_ready_below(i) {
                        self.delete(&mut st, &key("v1", "pods", &ns, &format!("{name}-{i}")));
                        busy = true;
                    }
                }
            }
            // Rolling update: once all are up and Ready, replace the highest
            // pod still on an old revision. `OnDelete` leaves that to
            // whoever deletes pods (a new pod takes the new template).
            let on_delete = sts["spec"]["updateStrategy"]["type"] == "OnDelete";
            let live: Vec<(&i64, &Value)> = pods.iter().filter(|(i, _)| **i < replicas).collect();
            if !busy
                && !on_delete
                && live.len() as i64 == replicas
                && live.iter().all(|(_, p)| pod_ready(p))
            {
                if let Some((i, _)) = live.iter().rev().find(|(_, p)| {
                    p["metadata"]["labels"]["controller-revision-hash"].as_str() != Some(&revision)
                }) {
                    self.delete(&mut st, &key("v1", "pods", &ns, &format!("{name}-{i}")));
                }
            }
            let ready = pods.values().filter(|p| pod_ready(p)).count();
            let updated = pods
                .values()
                .filter(|p| {
                    p["metadata"]["labels"]["controller-revision-hash"].as_str() == Some(&revision)
                })
                .count();
            let current_revision = if updated as i64 == replicas {
                revision.clone()
            } else {
                sts["status"]["currentRevision"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| revision.clone())
            };
            let status = json!({
                "observedGeneration": sts["metadata"]["generation"],
                "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": if current_revision == revision { updated } else { pods.len() - updated },
                "updatedReplicas": updated,
                "currentRevision": current_revision, "updateRevision": revision,
            });
            self.set_status(&mut st, &k, status);
        }
    }

    fn reconcile_deployments(&self) {
        let server = self.server.clone();
        let mut st = server.store.lock().expect("store lock");
        for (k, d) in Self::objects(&st, "apps/v1", "deployments") {
            if meta_str(&d, "deletionTimestamp").is_some() {
                continue;
            }
            let ns = k.2.clone();
            let uid = meta_str(&d, "uid").unwrap_or_default().to_string();
            let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
            let template = d["spec"]["template"].clone();
            let hash = hash_of(&template);
            let pods = Self::owned_pods(&st, &ns, &uid);
            let (new, old): (Vec<_>, Vec<_>) = pods.iter().partition(|(_, p)| {
                p["metadata"]["labels"]["pod-template-hash"].as_str() == Some(&hash)
            });
            let new_ready = new.iter().filter(|(_, p)| pod_ready(p)).count();
            if new.len() < replicas {
                let name = format!("{}-{hash}-{}", k.3, crate::random_suffix());
                let pod = Self::pod_from_template(
                    &template,
                    &name,
                    owner_ref(&d, "Deployment", "apps/v1"),
                    &[("pod-template-hash", hash.clone())],
                );
                self.create(&mut st, "v1", "pods", &ns, pod);
            } else if new.len() > replicas {
                self.delete(&mut st, &new[0].0);
            } else if new_ready >= replicas {
                // The new pods carry the load: old ones go.
                if let Some((ok, _)) = old.first() {
                    self.delete(&mut st, ok);
                }
            }
            let ready = pods.iter().filter(|(_, p)| pod_ready(p)).count();
            let available = if ready >= replicas { "True" } else { "False" };
            let status = json!({
                "observedGeneration": d["metadata"]["generation"],
                "replicas": pods.len(), "updatedReplicas": new.len(),
                "readyReplicas": ready, "availableReplicas": ready,
                "conditions": [
                    {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
            });
            self.set_status(&mut st, &k, status);
        }
    }

    fn reconcile_jobs(&self) {
        let server = self.server.clone();
        let mut st = server.store.lock().expect("store lock");
        for (k, j) in Self::objects(&st, "batch/v1", "jobs") {
            if meta_str(&j, "deletionTimestamp").is_some() {
                continue;
            }
            let ns = k.2.clone();
            let uid = meta_str(&j, "uid").unwrap_or_default().to_string();
            let completions = j["spec"]["completions"].as_i64().unwrap_or(1).max(1) as usize;
            let parallelism = j["spec"]["parallelism"].as_i64().unwrap_or(1).max(1) as usize;
            let backoff_limit = j["spec"]["backoffLimit"].as_i64().unwrap_or(6).max(0) as usize;
            let pods = Self::owned_pods(&st, &ns, &uid);
            let phase = |p: &Value| {
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or("Pending")
                    .to_string()
            };
            let succeeded = pods.iter().filter(|(_, p)| phase(p) == "Succeeded").count();
            let failed = pods.iter().filter(|(_, p)| phase(p) == "Failed").count();
            let active: Vec<&(Key, Value)> = pods
                .iter()
                .filter(|(_, p)| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
                .collect();
            let done = succeeded >= completions;
            let gave_up = failed > backoff_limit;
            if done || gave_up {
                for (pk, _) in &active {
                    self.delete(&mut st, pk);
                }
            } else if active.len() < parallelism && succeeded + active.len() < completions {
                let name = format!("{}-{}", k.3, crate::random_suffix());
                let pod = Self::pod_from_template(
                    &j["spec"]["template"],
                    &name,
                    owner_ref(&j, "Job", "batch/v1"),
                    &[
                        ("batch.kubernetes.io/job-name", k.3.clone()),
                        ("job-name", k.3.clone()),
                        ("batch.kubernetes.io/controller-uid", uid.clone()),
                        ("controller-uid", uid.clone()),
                    ],
                );
                self.create(&mut st, "v1", "pods", &ns, pod);
            }
            let prev = &j["status"];
            let start = prev["startTime"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(crate::now_rfc3339);
            let mut status = json!({
                "startTime": start,
                "active": if done || gave_up { 0 } else { active.len() },
                "succeeded": succeeded, "failed": failed,
                "ready": active.iter().filter(|(_, p)| pod_ready(p)).count(),
            });
            let cond = |t: &str, reason: &str| {
                json!({"type": t, "status": "True", "reason": reason,
                       "lastTransitionTime": prev["conditions"][0]["lastTransitionTime"]
                           .as_str().map(str::to_string).unwrap_or_else(crate::now_rfc3339)})
            };
            if done {
                status["conditions"] = json!([
                    cond("SuccessCriteriaMet", "CompletionsReached"),
                    cond("Complete", "CompletionsReached")
                ]);
                status["completionTime"] = prev
                    .get("completionTime")
                    .cloned()
                    .unwrap_or_else(|| json!(crate::now_rfc3339()));
            } else if gave_up {
                status["conditions"] = json!([
                    cond("FailureTarget", "BackoffLimitExceeded"),
                    cond("Failed", "BackoffLimitExceeded")
                ]);
            }
            self.set_status(&mut st, &k, status);
        }
    }

    fn ip_for(&mut self, ns: &str, name: &str) -> String {
        let k = (ns.to_string(), name.to_string());
        if let Some(ip) = self.ips.get(&k) {
            return ip.clone();
        }
        let n = self.next_ip;
        self.next_ip += 1;
        let ip = format!("127.0.{}.{}", n / 254, n % 254 + 1);
        self.ips.insert(k, ip.clone());
        ip
    }

    fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(ns).join(name)
    }

    pub fn log_path(state_dir: &std::path::Path, ns: &str, name: &str) -> PathBuf {
        state_dir.join("pods").join(ns).join(name).join("log")
    }

    /// The directory of each volume of a pod, by volume name.
    fn volume_dirs(
        &self,
        st: &Store,
        ns: &str,
        pod: &Value,
    ) -> Result<HashMap<String, PathBuf>, String> {
        let name = meta_str(pod, "name").unwrap_or_default();
        let mut out = HashMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            let dir = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                if !st
                    .objects
                    .contains_key(&key("v1", "persistentvolumeclaims", ns, claim))
                {
                    return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
                }
                self.config.state_dir.join("pvc").join(ns).join(claim)
            } else {
                let dir = self.pod_dir(ns, name).join("volumes").join(&vname);
                let files = if let Some(cm) = v["configMap"]["name"].as_str() {
                    st.objects
                        .get(&key("v1", "configmaps", ns, cm))
                        .map(|o| o["data"].clone())
                } else if let Some(s) = v["secret"]["secretName"].as_str() {
                    st.objects.get(&key("v1", "secrets", ns, s)).map(|o| {
                        use base64::Engine;
                        let mut data = json!({});
                        for (k, val) in o["data"].as_object().into_iter().flatten() {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(val.as_str().unwrap_or_default())
                                .unwrap_or_default();
                            data[k] = json!(String::from_utf8_lossy(&raw));
                        }
                        data
                    })
                } else {
                    None
                };
                // As the kubelet: a pod waits for a Secret or ConfigMap it
                // mounts (unless `optional`), retried until it exists.
                let source = if v["secret"].is_object() {
                    Some(("secret", &v["secret"], v["secret"]["secretName"].as_str()))
                } else if v["configMap"].is_object() {
                    Some((
                        "configmap",
                        &v["configMap"],
                        v["configMap"]["name"].as_str(),
                    ))
                } else {
                    None
                };
                if let Some((kind, spec, obj)) = source {
                    if files.is_none() && spec["optional"].as_bool() != Some(true) {
                        return Err(format!("{kind} \"{}\" not found", obj.unwrap_or_default()));
                    }
                }
                let _ = std::fs::create_dir_all(&dir);
                for (f, content) in files
                    .as_ref()
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let _ = std::fs::write(dir.join(f), content.as_str().unwrap_or_default());
                }
                dir
            };
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            out.insert(vname, dir);
        }
        Ok(out)
    }

    /// argv and env of a pod's first container, volumes and references
    /// resolved.
    fn command(&self, st: &Store, ns: &str, pod: &Value, ip: &str) -> Result<Launch, String> {
        let c = &pod["spec"]["containers"][0];
        let image = c["image"].as_str().unwrap_or_default();
        let base = image.split('@').next().unwrap_or_default();
        let base = match base.rsplit_once(':') {
            Some((b, tag)) if !tag.contains('/') => b,
            _ => base,
        };
        let program = self
            .config
            .images
            .get(image)
            .or_else(|| self.config.images.get(base))
            .ok_or_else(|| format!("image {image:?} is not in localkube's image map"))?;
        let dirs = self.volume_dirs(st, ns, pod)?;
        let mut mounts: Vec<(String, String)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let dir = dirs.get(m["name"].as_str()?)?;
                Some((
                    m["mountPath"].as_str()?.to_string(),
                    dir.display().to_string(),
                ))
            })
            .collect();
        // Longest first, so /data/x is not rewritten as /data + x.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let rewrite = |s: &str| {
            let mut s = s.to_string();
            for (from, to) in &mounts {
                s = s.replace(from.as_str(), to);
            }
            s
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(&rewrite))
                .collect()
        };
        // `command` replaces the image's entrypoint; args follow either.
        let command = strings(&c["command"]);
        let mut argv = if command.is_empty() {
            program.clone()
        } else {
            command
        };
        argv.extend(strings(&c["args"]));
        let name = meta_str(pod, "name").unwrap_or_default();
        let lookup = |res: &str, obj: &str, k: &str| -> Option<String> {
            let o = st.objects.get(&key("v1", res, ns, obj))?;
            let v = o["data"][k].as_str()?;
            if res == "secrets" {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                Some(String::from_utf8_lossy(&raw).into_owned())
            } else {
                Some(v.to_string())
            }
        };
        // Service links first: the container's own variables may use them.
        let mut env: Vec<(String, String)> =
            if pod["spec"]["enableServiceLinks"].as_bool() == Some(false) {
                vec![]
            } else {
                crate::services::env_for(st, ns)
            };
        for from in c["envFrom"].as_array().into_iter().flatten() {
            let (res, obj) = if let Some(n) = from["configMapRef"]["name"].as_str() {
                ("configmaps", n)
            } else if let Some(n) = from["secretRef"]["name"].as_str() {
                ("secrets", n)
            } else {
                continue;
            };
            let prefix = from["prefix"].as_str().unwrap_or_default();
            if let Some(o) = st.objects.get(&key("v1", res, ns, obj)) {
                for k in o["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                {
                    if let Some(v) = lookup(res, obj, &k) {
                        env.push((format!("{prefix}{k}"), v));
                    }
                }
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let Some(n) = e["name"].as_str() else {
                continue;
            };
            let value = if let Some(v) = e["value"].as_str() {
                Some(rewrite(v))
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match f {
                    "metadata.name" => Some(name.to_string()),
                    "metadata.namespace" => Some(ns.to_string()),
                    "metadata.uid" => meta_str(pod, "uid").map(str::to_string),
                    "status.podIP" | "status.hostIP" => Some(ip.to_string()),
                    "spec.nodeName" => pod["spec"]["nodeName"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| Some("localkube".into())),
                    f => f
                        .strip_prefix("metadata.labels['")
                        .map(|k| ("labels", k))
                        .or_else(|| {
                            f.strip_prefix("metadata.annotations['")
                                .map(|k| ("annotations", k))
                        })
                        .and_then(|(field, k)| {
                            let k = k.strip_suffix("']")?;
                            pod["metadata"][field][k].as_str().map(str::to_string)
                        }),
                }
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                lookup(
                    "configmaps",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                )
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let name = r["name"].as_str().unwrap_or_default();
                let k = r["key"].as_str().unwrap_or_default();
                match lookup("secrets", name, k) {
                    None if r.get("optional").and_then(Value::as_bool) != Some(true) => {
                        return Err(format!(
                            "secret \"{name}\" has no key {k} (or does not exist)"
                        ))
                    }
                    v => v,
                }
            } else {
                None
            };
            if let Some(v) = value {
                // `$(VAR)` names a variable defined before this one.
                let v = expand(&v, &env);
                env.push((n.to_string(), v));
            }
        }
        // Command and args may name any of the container's variables.
        let argv = argv.iter().map(|a| expand(a, &env)).collect();
        let cwd = self.pod_dir(ns, name);
        Ok((argv, env, cwd))
    }

    async fn probe(ip: String, c: Value, probe: Value) -> bool {
        let (ip, c) = (ip.as_str(), &c);
        let port_of = |p: &Value| -> Option<u16> {
            if let Some(n) = p.as_u64() {
                return u16::try_from(n).ok();
            }
            let name = p.as_str()?;
            c["ports"].as_array()?.iter().find(|x| x["name"] == name)?["containerPort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
        };
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
        if let Some(h) = probe["httpGet"].as_object() {
            let Some(port) = h.get("port").and_then(port_of) else {
                return false;
            };
            let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .ok()?;
                let mut buf = vec![0u8; 64];
                let n = s.read(&mut buf).await.ok()?;
                let line = String::from_utf8_lossy(&buf[..n]).to_string();
                let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some((200..400).contains(&code))
            };
            return tokio::time::timeout(timeout, attempt)
                .await
                .ok()
                .flatten()
                .unwrap_or(false);
        }
        if let Some(t) = probe["tcpSocket"].as_object() {
            let Some(port) = t.get("port").and_then(port_of) else {
                return false;
            };
            return tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port)))
                .await
                .is_ok_and(|r| r.is_ok());
        }
        // exec probes are not run: counted as passing.
        true
    }

    async fn stop(child: &mut tokio::process::Child, grace: Duration) {
        if let Some(pid) = child.id() {
            // SIGTERM first, SIGKILL after the grace period.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(grace, child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = child.kill().await;
    }

    async fn sync_pods(&mut self) {
        let server = self.server.clone();
        let pods: Vec<(Key, Value)> = {
            let st = server.store.lock().expect("store lock");
            Self::objects(&st, "v1", "pods")
        };
        // Pods gone from the store, or replaced by a new pod of the same
        // name: their processes stop.
        let wanted: HashMap<(String, String), String> = pods
            .iter()
            .filter(|(_, p)| meta_str(p, "deletionTimestamp").is_none())
            .map(|(k, p)| {
                (
                    (k.2.clone(), k.3.clone()),
                    meta_str(p, "uid").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let gone: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(k, r)| wanted.get(*k).is_none_or(|uid| *uid != r.uid))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(mut r) = self.pods.remove(&k) {
                if let Some(mut c) = r.child.take() {
                    // Waited for: a pod recreated under the same name takes
                    // the same address, which must be free by then.
                    Self::stop(&mut c, r.grace).await;
                }
                if let Some(h) = r.stopping.take() {
                    let _ = h.await;
                }
            }
        }
        // PVCs deleted: their directories go.
        if let Ok(nss) = std::fs::read_dir(self.config.state_dir.join("pvc")) {
            let st = server.store.lock().expect("store lock");
            for ns in nss.flatten() {
                for claim in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    let (n, c) = (ns.file_name(), claim.file_name());
                    let k = key(
                        "v1",
                        "persistentvolumeclaims",
                        &n.to_string_lossy(),
                        &c.to_string_lossy(),
                    );
                    if !st.objects.contains_key(&k) {
                        let _ = std::fs::remove_dir_all(claim.path());
                    }
                }
            }
        }
        for (k, pod) in pods {
            if meta_str(&pod, "deletionTimestamp").is_some() {
                continue;
            }
            let pod = self.schedule(&k, pod);
            let (ns, name) = (k.2.clone(), k.3.clone());
            let uid = meta_str(&pod, "uid").unwrap_or_default().to_string();
            let ip = self.ip_for(&ns, &name);
            let pk = (ns.clone(), name.clone());
            let now = Instant::now();
            let grace = Duration::from_secs(
                pod["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30),
            );
            let r = self.pods.entry(pk.clone()).or_insert_with(|| Running {
                uid: uid.clone(),
                grace,
                ip: ip.clone(),
                child: None,
                restarts: 0,
                started: now,
                next_start: Some(now),
                ready: false,
                live_failures: 0,
                ready_failures: 0,
                readiness: Probe::default(),
                liveness: Probe::default(),
                stopping: None,
                error: None,
                terminated: None,
            });
            // Exited? Restart with backoff, as restartPolicy says.
            let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
            if let Some(c) = r.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    r.child = None;
                    r.ready = false;
                    let code = status.code().unwrap_or(128 + 9);
                    if policy == "Never" || (policy == "OnFailure" && code == 0) {
                        r.terminated = Some(code);
                        r.next_start = None;
                    } else {
                        r.restarts += 1;
                        let backoff =
                            Duration::from_millis((500u64 << r.restarts.min(5) as u32).min(10_000));
                        r.next_start = Some(now + backoff);
                    }
                    r.error = Some(format!("exited: {status}"));
                }
            }
            if r.stopping.as_ref().is_some_and(|h| h.is_finished()) {
                r.stopping = None;
            }
            if r.child.is_none() && r.stopping.is_none() && r.next_start.is_some_and(|t| now >= t) {
                let spawned = {
                    let st = server.store.lock().expect("store lock");
                    self_command(&self.config, self, &st, &ns, &pod, &ip)
                };
                let r = self.pods.get_mut(&pk).expect("inserted");
                match spawned {
                    Ok(child) => {
                        r.child = Some(child);
                        r.started = now;
                        r.next_start = None;
                        r.error = None;
                        r.live_failures = 0;
                        r.ready_failures = 0;
                        r.readiness.reset();
                        r.liveness.reset();
                    }
                    Err(e) => {
                        r.error = Some(e);
                        r.next_start = Some(now + Duration::from_secs(1));
                    }
                }
            }
            let r = self.pods.get_mut(&pk).expect("inserted");
            let c = &pod["spec"]["containers"][0];
            // Probes, each at its period, off this loop.
            if r.child.is_some() {
                let readiness = &c["readinessProbe"];
                let liveness = &c["livenessProbe"];
                let period =
                    |p: &Value| Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10));
                let delay =
                    |p: &Value| Duration::from_secs(p["initialDelaySeconds"].as_u64().unwrap_or(0));
                let start = |p: &Value| {
                    let (ip, c, p) = (r.ip.clone(), c.clone(), p.clone());
                    move || tokio::spawn(Self::probe(ip, c, p))
                };
                if !readiness.is_object() {
                    r.ready = true;
                } else if now >= r.started + delay(readiness) {
                    if let Some(ok) = r.readiness.poll(now, period(readiness), start(readiness)) {
                        r.ready_failures = if ok { 0 } else { r.ready_failures + 1 };
                        if ok {
                            r.ready = true;
                        } else if r.ready_failures
                            >= readiness["failureThreshold"].as_u64().unwrap_or(3) as u32
                        {
                            r.ready = false;
                        }
                    }
                }
                let live = (liveness.is_object() && now >= r.started + delay(liveness))
                    .then(|| r.liveness.poll(now, period(liveness), start(liveness)))
                    .flatten();
                if let Some(ok) = live {
                    r.live_failures = if ok { 0 } else { r.live_failures + 1 };
                    if r.live_failures >= liveness["failureThreshold"].as_u64().unwrap_or(3) as u32
                    {
                        if let Some(mut child) = r.child.take() {
                            let grace = r.grace;
                            r.stopping = Some(tokio::spawn(async move {
                                Self::stop(&mut child, grace).await;
                            }));
                        }
                        r.readiness.reset();
                        r.liveness.reset();
                        r.ready = false;
                        r.restarts += 1;
                        r.next_start = Some(Instant::now() + Duration::from_millis(500));
                        r.error = Some("liveness probe failed".into());
                    }
                }
            }
            let running = r.child.is_some();
            let ready = running && r.ready;
            let state = if let Some(code) = r.terminated {
                json!({"terminated": {"exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" }}})
            } else if running {
                json!({"running": {"startedAt": crate::now_rfc3339()}})
            } else {
                json!({"waiting": {"reason": if r.restarts > 0 { "CrashLoopBackOff" } else { "ContainerCreating" },
                    "message": r.error.clone().unwrap_or_default()}})
            };
            let t = |b: bool| if b { "True" } else { "False" };
            let mut status = json!({
                "phase": match r.terminated {
                    Some(0) => "Succeeded",
                    Some(_) => "Failed",
                    None if running || r.restarts > 0 => "Running",
                    None => "Pending",
                },
                "podIP": r.ip, "podIPs": [{"ip": r.ip}], "hostIP": "127.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": t(ready)},
                    {"type": "Ready", "status": t(ready)}],
                "containerStatuses": [{"name": c["name"], "image": c["image"], "ready": ready,
                    "started": running, "restartCount": r.restarts, "state": state}],
            });
            // The running state's start time must not churn the object.
            if let Some(prev) = pod.get("status") {
                if prev["containerStatuses"][0]["state"]["running"].is_object() && running {
                    status["containerStatuses"][0]["state"] =
                        prev["containerStatuses"][0]["state"].clone();
                }
                if let Some(st) = prev.get("startTime") {
                    status["startTime"] = st.clone();
                }
            }
            if status.get("startTime").is_none() {
                status["startTime"] = json!(crate::now_rfc3339());
            }
            let mut st = server.store.lock().expect("store lock");
            self.set_status(&mut st, &k, status);
        }
    }
}

fn self_command(
    config: &Config,
    k: &Kubelet,
    st: &Store,
    ns: &str,
    pod: &Value,
    ip: &str,
) -> Result<tokio::process::Child, String> {
    let (argv, env, cwd) = k.command(st, ns, pod, ip)?;
    std::fs::create_dir_all(&cwd).map_err(|e| e.to_string())?;
    let name = meta_str(pod, "name").unwrap_or_default();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Kubelet::log_path(&config.state_dir, ns, name))
        .map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(prog);
    // Pods die with localkube, however it ends.
    // SAFETY: prctl is async-signal-safe and touches only this process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.args(args)
        .env("KUBECONFIG", &config.kubeconfig)
        .envs(env)
        .env("HOSTNAME", name)
        .current_dir(&cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {prog}: {e}"))
}

/// Kubernetes' variable references: `$(VAR)` becomes the value of `VAR`
/// when it is defined in `env`, and stays as written when it is not; `$$`
/// is a literal `$`.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod expand_tests {
    use super::expand;

    #[test]
    fn variable_references_expand_as_kubernetes_does() {
        let env = vec![
            ("POD_IP".to_string(), "127.0.0.7".to_string()),
            ("PORT".to_string(), "9092".to_string()),
        ];
        assert_eq!(expand("$(POD_IP):$(PORT)", &env), "127.0.0.7:9092");
        assert_eq!(expand("$(NOPE)-x", &env), "$(NOPE)-x");
        assert_eq!(expand("$$(POD_IP) $5 $(", &env), "$(POD_IP) $5 $(");
    }
}
