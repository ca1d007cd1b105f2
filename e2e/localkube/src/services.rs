//! Services that route, as kube-proxy makes them: each Service of type
//! ClusterIP (not headless) gets a cluster IP on loopback (127.1.x.y) when
//! it is created, and a proxy listening on that address and each of its
//! ports forwards every connection to a Ready pod its selector matches
//! (round robin), at the port `targetPort` names. Pods see the Services of
//! their namespace as `<NAME>_SERVICE_HOST` / `<NAME>_SERVICE_PORT[_<PORT>]`
//! variables ([`env_for`]), as a kubelet sets them. DNS names are not
//! served: nothing on this machine would resolve them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{meta_str, Server, Store};

/// Gives a new Service a free cluster IP (`spec.clusterIP` unset or empty;
/// `None` stays headless).
pub(crate) fn allocate_cluster_ip(st: &Store, svc: &mut Value) {
    let spec = &svc["spec"];
    let given = spec["clusterIP"].as_str().unwrap_or_default();
    if !given.is_empty() || spec["type"].as_str() == Some("ExternalName") {
        return;
    }
    let used: std::collections::HashSet<&str> = st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == "v1" && k.1 == "services")
        .filter_map(|(_, v)| v["spec"]["clusterIP"].as_str())
        .collect();
    for n in 1u32..65_000 {
        let ip = Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8).to_string();
        if !used.contains(ip.as_str()) {
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            return;
        }
    }
}

/// The service link variables of a pod in `ns`.
pub(crate) fn env_for(st: &Store, ns: &str) -> Vec<(String, String)> {
    let mut env = vec![];
    for (k, svc) in &st.objects {
        if k.0 != "v1" || k.1 != "services" || k.2 != ns {
            continue;
        }
        let Some(ip) = svc["spec"]["clusterIP"].as_str().filter(|ip| *ip != "None") else {
            continue;
        };
        let prefix = k.3.to_uppercase().replace('-', "_");
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        for (i, p) in ports.iter().enumerate() {
            let port = p["port"].as_u64().unwrap_or_default();
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            if i == 0 {
                env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
                env.push((format!("{prefix}_SERVICE_PORT"), port.to_string()));
                env.push((format!("{prefix}_PORT"), format!("tcp://{ip}:{port}")));
            }
            if let Some(name) = p["name"].as_str() {
                let n = name.to_uppercase().replace('-', "_");
                env.push((format!("{prefix}_SERVICE_PORT_{n}"), port.to_string()));
            }
            let l = proto.to_lowercase();
            let u = proto.to_uppercase();
            env.push((
                format!("{prefix}_PORT_{port}_{u}"),
                format!("{l}://{ip}:{port}"),
            ));
            env.push((format!("{prefix}_PORT_{port}_{u}_PROTO"), l));
            env.push((format!("{prefix}_PORT_{port}_{u}_PORT"), port.to_string()));
            env.push((format!("{prefix}_PORT_{port}_{u}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// Where a connection to (namespace, service, port) goes now: a Ready,
/// running pod the selector matches, at the target port.
fn endpoints(st: &Store, ns: &str, name: &str, port: u64) -> Vec<(String, u16)> {
    let Some(svc) = st
        .objects
        .get(&("v1".into(), "services".into(), ns.into(), name.into()))
    else {
        return vec![];
    };
    let Some(selector) = svc["spec"]["selector"].as_object() else {
        return vec![];
    };
    let Some(sp) = svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port)))
    else {
        return vec![];
    };
    let target = sp.get("targetPort").cloned().unwrap_or(json!(port));
    let mut out = vec![];
    for (k, pod) in &st.objects {
        if k.0 != "v1" || k.1 != "pods" || k.2 != ns || meta_str(pod, "deletionTimestamp").is_some()
        {
            continue;
        }
        let labels = &pod["metadata"]["labels"];
        if !selector.iter().all(|(lk, lv)| &labels[lk] == lv) {
            continue;
        }
        let ready = crate::kubelet::pod_ready(pod);
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|_| ready) else {
            continue;
        };
        let p = match &target {
            Value::Number(n) => n.as_u64(),
            Value::String(name) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64()),
            _ => None,
        };
        if let Some(p) = p.and_then(|p| u16::try_from(p).ok()) {
            out.push((ip.to_string(), p));
        }
    }
    out
}

/// Keeps one proxy per (cluster IP, port) of every Service, and stops the
/// proxies of Services gone.
pub(crate) async fn run(server: Arc<Server>) {
    let mut events = server.events.subscribe();
    let mut proxies: HashMap<(String, String, String, u64), tokio::task::JoinHandle<()>> =
        HashMap::new();
    loop {
        let wanted: Vec<(String, String, String, u64)> = {
            let st = server.store.lock().expect("store lock");
            st.objects
                .iter()
                .filter(|(k, _)| k.0 == "v1" && k.1 == "services")
                .flat_map(|(k, svc)| {
                    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
                    let ports: Vec<u64> = svc["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_u64())
                        .collect();
                    let ok = ip.starts_with("127.");
                    ports
                        .into_iter()
                        .filter(move |_| ok)
                        .map(move |p| (k.2.clone(), k.3.clone(), ip.to_string(), p))
                })
                .collect()
        };
        proxies.retain(|k, task| {
            let keep = wanted.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        for w in wanted {
            if proxies.contains_key(&w) {
                continue;
            }
            let server = server.clone();
            let (ns, name, ip, port) = w.clone();
            proxies.insert(
                w,
                tokio::spawn(async move { proxy(server, ns, name, ip, port).await }),
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    }
}

async fn proxy(server: Arc<Server>, ns: String, name: String, ip: String, port: u64) {
    let listener = loop {
        match tokio::net::TcpListener::bind((ip.as_str(), port as u16)).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(%ip, port, error = %e, "service proxy cannot listen; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let next = AtomicUsize::new(0);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let eps = {
            let st = server.store.lock().expect("store lock");
            endpoints(&st, &ns, &name, port)
        };
        if eps.is_empty() {
            // No ready endpoint: refused, as kube-proxy's reject rule does.
            continue;
        }
        let (host, p) = eps[next.fetch_add(1, Ordering::Relaxed) % eps.len()].clone();
        tokio::spawn(async move {
            if let Ok(mut up) = tokio::net::TcpStream::connect((host.as_str(), p)).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            }
        });
    }
}
