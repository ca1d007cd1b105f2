//! The end-to-end suite's harness: a Kubernetes cluster reached only
//! through a kubeconfig (kind, or localkube started here), Sluice installed
//! on it with the real `helm` and the chart in `charts/sluice`, and Kafka
//! clients (librdkafka through `rdkafka`, and `kcat`) talking to it.
//!
//! The provider is `SLUICE_E2E_PROVIDER`:
//! - `localkube` (the default): each scenario starts its own localkube
//!   (`$SLUICE_BIN_DIR/localkube`) with an image map running the binaries
//!   in `SLUICE_BIN_DIR` as the images' entrypoints, and clients run on
//!   this machine (localkube's Services route on loopback).
//! - `kind`: the cluster `KUBECONFIG` names (`e2e/kind.sh` makes it), the
//!   images tagged `SLUICE_E2E_IMAGE_TAG` (and `SLUICE_E2E_NEXT_TAG` for
//!   the upgrade) loaded into it, and clients run in a pod of the
//!   scenario's namespace (`kubectl exec` into the kcat image).
//!
//! Every scenario installs into its own namespace `e2e-<scenario>` and
//! removes it at the end, unless `SLUICE_E2E_KEEP=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use sluice_api::v1alpha1::{ConsumerGroup, Topic};
use tokio::io::AsyncWriteExt;

/// The kcat image the chart's test hook, the examples and the kind
/// client pod use.
pub const KCAT_IMAGE: &str = "docker.io/edenhill/kcat";
pub const KCAT_TAG: &str = "1.7.1";
/// The images' names (the chart's defaults).
pub const NODE_IMAGE: &str = "ghcr.io/sluice-streaming/sluice";
pub const OPERATOR_IMAGE: &str = "ghcr.io/sluice-streaming/sluice-operator";
/// The release and cluster name every scenario installs.
pub const RELEASE: &str = "sluice";

/// The chart's security defaults (TLS from the operator's CAs, SCRAM,
/// the authorizer), for the scenarios about a default install; the others
/// run in the clear ([`Cluster::provider_values`]).
pub const SECURE: &[&str] = &[
    "security.tls=operator",
    "security.authentication=scram-sha-512",
    "security.authorizer=true",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Localkube,
    Kind,
}

impl Provider {
    pub fn from_env() -> Result<Provider> {
        match std::env::var("SLUICE_E2E_PROVIDER").as_deref() {
            Err(_) | Ok("") | Ok("localkube") => Ok(Provider::Localkube),
            Ok("kind") => Ok(Provider::Kind),
            Ok(other) => bail!("SLUICE_E2E_PROVIDER={other}: expected localkube or kind"),
        }
    }
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn keep() -> bool {
    std::env::var("SLUICE_E2E_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Waits until `check` answers `Some`, polling every 200 ms, for at most
/// `limit`; the error names `what` and the last thing `check` said.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One scenario's Sluice: a namespace with the chart installed.
pub struct Cluster {
    pub provider: Provider,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub client: Client,
    /// From `helm install` to every node Ready.
    pub install_to_ready: Duration,
    /// What `helm install` printed (the chart's NOTES).
    pub notes: String,
    work: tempfile::TempDir,
    localkube: Option<tokio::process::Child>,
    bin_dir: Option<PathBuf>,
}

impl Cluster {
    /// Installs the chart for `scenario` with `values` (`key=value`, as
    /// `helm --set`) on top of the provider's, and waits until the
    /// operator and `nodes` storage nodes are Ready.
    pub async fn install(scenario: &str, nodes: i32, values: &[&str]) -> Result<Cluster> {
        let provider = Provider::from_env()?;
        let work = tempfile::Builder::new()
            .prefix(&format!("sluice-e2e-{scenario}-"))
            .tempdir()?;
        let namespace = format!("e2e-{}", scenario.replace('_', "-"));
        let (kubeconfig, localkube, bin_dir) = match provider {
            Provider::Localkube => {
                let bin = PathBuf::from(
                    std::env::var("SLUICE_BIN_DIR")
                        .context("SLUICE_BIN_DIR: the directory holding sluice, sluice-operator and localkube (e2e/run.sh sets it)")?,
                );
                let (kc, child) = start_localkube(&bin, work.path()).await?;
                (kc, Some(child), Some(bin))
            }
            Provider::Kind => {
                let kc = std::env::var("KUBECONFIG").context("KUBECONFIG: the kind cluster's")?;
                (PathBuf::from(kc), None, None)
            }
        };
        let client = client_for(&kubeconfig).await?;
        let mut c = Cluster {
            provider,
            kubeconfig,
            namespace,
            client,
            install_to_ready: Duration::ZERO,
            notes: String::new(),
            work,
            localkube,
            bin_dir,
        };
        if provider == Provider::Kind {
            // A namespace left by a kept run goes first.
            let _ = c
                .run(
                    "kubectl",
                    &["delete", "namespace", &c.namespace, "--wait=true"],
                    None,
                )
                .await;
        }
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
        ns.create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": c.namespace}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {}", c.namespace))?;
        let mut all = vec![format!("nodes.minNodes={nodes}")];
        all.extend(values.iter().map(|v| v.to_string()));
        let start = Instant::now();
        c.notes = c.helm_chart("install", &all).await?;
        c.wait_nodes_ready(nodes, Duration::from_secs(300)).await?;
        c.install_to_ready = start.elapsed();
        if provider == Provider::Kind {
            c.start_client_pod().await?;
        }
        Ok(c)
    }

    /// The values each provider needs.
    pub fn provider_values(&self) -> Vec<String> {
        // Scenarios about other things talk to the nodes in the clear;
        // those about a default install pass [`SECURE`], which wins.
        let clear = [
            "security.tls=none",
            "security.authentication=none",
            "security.authorizer=false",
        ]
        .map(String::from);
        let mut values: Vec<String> = match self.provider {
            Provider::Localkube => vec![
                // Pods are processes of one machine with their own loopback
                // addresses, and no DNS names.
                "nodes.advertise=podIp".into(),
                // localkube has three zones: the nodes' rack RBAC and
                // rack-aware placement are exercised too.
                "nodes.rackTopologyKey=topology.kubernetes.io/zone".into(),
                "nodes.storage.size=1Gi".into(),
            ],
            Provider::Kind => {
                let tag = image_tag();
                vec![
                    format!("nodes.image.tag={tag}"),
                    format!("operator.image.tag={tag}"),
                    // kind.sh labels its workers with zones a, b, c.
                    "nodes.rackTopologyKey=topology.kubernetes.io/zone".into(),
                    "nodes.storage.size=1Gi".into(),
                ]
            }
        };
        values.extend(clear);
        values
    }

    /// A file the clients can read (on kind: in the client pod); its path.
    pub async fn client_file(&self, name: &str, content: &str) -> Result<String> {
        match self.provider {
            Provider::Localkube => {
                let path = self.work.path().join(name);
                std::fs::write(&path, content)?;
                Ok(path.display().to_string())
            }
            Provider::Kind => {
                let path = format!("/tmp/{name}");
                self.in_client_pod(&["sh", "-c", &format!("cat > {path}")], Some(content))
                    .await?;
                Ok(path)
            }
        }
    }

    /// kcat's `-X` options to log in as the User whose Secret is `secret`
    /// (SCRAM-SHA-512 over TLS with `password`, or TLS with `user.crt`),
    /// trusting the cluster's CA from the Secret. On localkube the nodes
    /// are reached by IP, which their certificate cannot name: the name is
    /// not checked there (it is on kind).
    pub async fn login_args(&self, secret: &str) -> Result<Vec<String>> {
        use k8s_openapi::api::core::v1::Secret;
        let s = self.api::<Secret>().get(secret).await?;
        let data = s.data.unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        };
        let ca = get("ca.crt").ok_or_else(|| anyhow!("Secret {secret} has no ca.crt"))?;
        let mut args = vec![
            "ssl.ca.location".to_string(),
            self.client_file(&format!("{secret}-ca.crt"), &ca).await?,
        ];
        if self.provider == Provider::Localkube {
            args.extend([
                "ssl.endpoint.identification.algorithm".into(),
                "none".into(),
            ]);
        }
        match (get("password"), get("user.crt"), get("user.key")) {
            (Some(password), _, _) => args.extend([
                "security.protocol".into(),
                "sasl_ssl".into(),
                "sasl.mechanisms".into(),
                "SCRAM-SHA-512".into(),
                "sasl.username".into(),
                secret.into(),
                "sasl.password".into(),
                password,
            ]),
            (None, Some(cert), Some(key)) => {
                let cert = self.client_file(&format!("{secret}.crt"), &cert).await?;
                let key = self.client_file(&format!("{secret}.key"), &key).await?;
                args.extend([
                    "security.protocol".into(),
                    "ssl".into(),
                    "ssl.certificate.location".into(),
                    cert,
                    "ssl.key.location".into(),
                    key,
                ]);
            }
            _ => bail!("Secret {secret} holds neither a password nor a certificate"),
        }
        Ok(args
            .chunks(2)
            .flat_map(|kv| ["-X".to_string(), format!("{}={}", kv[0], kv[1])])
            .collect())
    }

    /// Runs `program` (kubectl or helm) against this cluster; its stdout,
    /// or an error with its stderr.
    pub async fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("piped");
            w.write_all(input.as_bytes()).await?;
            drop(w);
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl in the scenario's namespace.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--namespace", &self.namespace];
        all.extend_from_slice(args);
        self.run("kubectl", &all, None).await
    }

    /// `kubectl apply -f -` of `yaml` in the scenario's namespace.
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        self.run(
            "kubectl",
            &["--namespace", &self.namespace, "apply", "-f", "-"],
            Some(yaml),
        )
        .await
    }

    pub async fn helm(&self, args: &[&str]) -> Result<String> {
        self.run("helm", args, None).await
    }

    /// `helm install` or `helm upgrade` of the chart, waiting for the
    /// operator, with the provider's values and then `values` (`key=value`;
    /// later ones win).
    pub async fn helm_chart(&self, verb: &str, values: &[String]) -> Result<String> {
        let chart = root().join("charts/sluice").display().to_string();
        let mut args: Vec<&str> = vec![
            verb,
            RELEASE,
            &chart,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "5m",
        ];
        let provider = self.provider_values();
        for v in provider.iter().chain(values) {
            args.push("--set");
            args.push(v);
        }
        self.helm(&args).await
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Until the StatefulSet has `nodes` pods, all Ready and of its
    /// current template, and the operator's Deployment is available.
    pub async fn wait_nodes_ready(&self, nodes: i32, limit: Duration) -> Result<()> {
        let sts: Api<StatefulSet> = self.api();
        let deploy: Api<Deployment> = self.api();
        let name = format!("{RELEASE}-node");
        wait_for(&format!("{nodes} storage nodes Ready"), limit, || async {
            let Some(s) = sts.get_opt(&name).await? else {
                return Ok(None);
            };
            let st = s.status.clone().unwrap_or_default();
            let spec_n = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if spec_n != nodes || st.ready_replicas.unwrap_or(0) != nodes {
                return Ok(None);
            }
            let ps = self.node_pods().await?;
            let ready = ps.iter().filter(|p| pod_ready(p)).count() as i32;
            if ps.len() as i32 != nodes || ready != nodes {
                return Ok(None);
            }
            let d = deploy.get(&format!("{RELEASE}-operator")).await?;
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Ok((available >= 1).then_some(()))
        })
        .await
    }

    /// The Kafka bootstrap address clients use: the client Service.
    pub async fn bootstrap(&self) -> Result<String> {
        match self.provider {
            // localkube routes the Service's cluster IP on loopback.
            Provider::Localkube => {
                let ip = self
                    .kubectl(&[
                        "get",
                        "service",
                        RELEASE,
                        "-o",
                        "jsonpath={.spec.clusterIP}",
                    ])
                    .await?;
                Ok(format!("{}:9092", ip.trim()))
            }
            Provider::Kind => Ok(format!("{RELEASE}:9092")),
        }
    }

    async fn start_client_pod(&self) -> Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e2e-client}}\nspec:\n  \
             containers:\n  - name: kcat\n    image: {KCAT_IMAGE}:{KCAT_TAG}\n    \
             command: [sh, -c, 'sleep 86400']\n"
        ))
        .await?;
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/e2e-client",
            "--timeout=120s",
        ])
        .await?;
        Ok(())
    }

    /// kcat with `args` (after `-b <bootstrap>`), fed `stdin`: on this
    /// machine with localkube, in the client pod on kind.
    pub async fn kcat(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let bootstrap = self.bootstrap().await?;
        let mut all: Vec<&str> = vec!["-b", &bootstrap];
        all.extend_from_slice(args);
        match self.provider {
            Provider::Localkube => self.run("kcat", &all, stdin).await,
            Provider::Kind => {
                let mut argv = vec!["kcat"];
                argv.extend(all);
                self.in_client_pod(&argv, stdin).await
            }
        }
    }

    /// `argv` run in the kind client pod (`kubectl exec`), fed `stdin`.
    async fn in_client_pod(&self, argv: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut exec = vec![
            "--namespace",
            &self.namespace,
            "exec",
            "-i",
            "e2e-client",
            "--",
        ];
        exec.extend_from_slice(argv);
        self.run("kubectl", &exec, stdin).await
    }

    /// Every record of `topic` from the beginning: (partition, offset,
    /// key, value), through kcat.
    pub async fn read_all(&self, topic: &str) -> Result<Vec<(i32, i64, String, String)>> {
        let out = self
            .kcat(
                &[
                    "-C",
                    "-t",
                    topic,
                    "-o",
                    "beginning",
                    "-e",
                    "-q",
                    "-f",
                    "%p %o %k %s\\n",
                ],
                None,
            )
            .await?;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let p = it.next().unwrap_or_default().parse()?;
                let o = it.next().unwrap_or_default().parse()?;
                let k = it.next().unwrap_or_default().to_string();
                let v = it.next().unwrap_or_default().to_string();
                Ok((p, o, k, v))
            })
            .collect()
    }

    /// Applies a Topic and waits until it is Ready.
    pub async fn topic(&self, name: &str, partitions: i32, replicas: i32) -> Result<()> {
        self.apply(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Topic\nmetadata: {{name: {name}}}\n\
             spec: {{partitions: {partitions}, replicationFactor: {replicas}}}\n"
        ))
        .await?;
        self.wait_topic_ready(name, Duration::from_secs(120)).await
    }

    /// Until the Topic's Ready condition is True (every partition led,
    /// every ISR full).
    pub async fn wait_topic_ready(&self, name: &str, limit: Duration) -> Result<()> {
        let topics: Api<Topic> = self.api();
        wait_for(&format!("Topic {name} Ready"), limit, || async {
            let t = topics.get(name).await?;
            let ready = t.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            Ok(ready.then_some(()))
        })
        .await
    }

    /// The node leading `partition` of `topic` (its Topic's status).
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Result<i32> {
        let topics: Api<Topic> = self.api();
        let t = topics.get(topic).await?;
        t.status
            .and_then(|s| s.partitions.into_iter().find(|p| p.partition == partition))
            .and_then(|p| p.leader)
            .ok_or_else(|| anyhow!("{topic}/{partition} has no leader in status"))
    }

    /// Who holds the controller lock (the leading operator replica).
    pub async fn controller_holder(&self) -> Result<Option<String>> {
        let leases: Api<Lease> = self.api();
        let l = leases.get(&format!("{RELEASE}-controller")).await?;
        Ok(l.spec.and_then(|s| s.holder_identity))
    }

    /// Until an operator replica holds the controller lock; its name.
    pub async fn wait_controller_holder(&self) -> Result<String> {
        wait_for(
            "an operator replica leads",
            Duration::from_secs(60),
            || async { Ok(self.controller_holder().await.ok().flatten()) },
        )
        .await
    }

    /// The storage nodes' pods.
    pub async fn node_pods(&self) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=node"
        ));
        Ok(self.api::<Pod>().list(&lp).await?.items)
    }

    /// A ConsumerGroup object.
    pub async fn consumer_group(&self, name: &str) -> Result<ConsumerGroup> {
        Ok(self.api::<ConsumerGroup>().get(name).await?)
    }

    /// Kills a pod as a crash would: deleted at once, no grace period.
    pub async fn kill_pod(&self, pod: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await?;
        Ok(())
    }

    /// Starts an idempotent, acks=all producer writing `count` records
    /// (values "0".."count-1", keyed by value) to `topic` at about `rate`
    /// records a second.
    pub async fn start_load(&self, topic: &str, count: u64, rate: u64) -> Result<Load> {
        let bootstrap = self.bootstrap().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = match self.provider {
            Provider::Localkube => {
                let topic = topic.to_string();
                let stop = stop.clone();
                tokio::spawn(
                    async move { rdkafka_load(&bootstrap, &topic, count, rate, stop).await },
                )
            }
            Provider::Kind => {
                // kcat in the client pod: its exit status says whether every
                // record sent was acknowledged; the loop ends early when the
                // stop file appears, and prints how many it sent.
                let per_tick = (rate / 20).max(1);
                let stop_file = format!("/tmp/stop-{topic}");
                let script = format!(
                    "rm -f {stop_file}; ( i=0; while [ $i -lt {count} ] && [ ! -e {stop_file} ]; do \
                     echo \"$i:$i\"; i=$((i+1)); [ $((i % {per_tick})) -eq 0 ] && sleep 0.05; done; \
                     echo $i > /tmp/sent-{topic} ) | kcat -b {bootstrap} -P -t {topic} -K: \
                     -X enable.idempotence=true -X acks=all -X message.timeout.ms=120000 \
                     && cat /tmp/sent-{topic}"
                );
                let exec = |cmd: String| -> Vec<String> {
                    [
                        "--namespace",
                        &self.namespace,
                        "exec",
                        "e2e-client",
                        "--",
                        "sh",
                        "-c",
                        &cmd,
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
                };
                let args = exec(script);
                let stop_args = exec(format!("touch {stop_file}"));
                let kubeconfig = self.kubeconfig.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let run = tokio::process::Command::new("kubectl")
                        .args(&args)
                        .env("KUBECONFIG", &kubeconfig)
                        .output();
                    tokio::pin!(run);
                    let out = loop {
                        tokio::select! {
                            out = &mut run => break out?,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                                if stop.swap(false, Ordering::Relaxed) {
                                    tokio::process::Command::new("kubectl")
                                        .args(&stop_args)
                                        .env("KUBECONFIG", &kubeconfig)
                                        .output()
                                        .await?;
                                }
                            }
                        }
                    };
                    if !out.status.success() {
                        return Ok(LoadReport {
                            acked: vec![],
                            failed: vec![(0, String::from_utf8_lossy(&out.stderr).into_owned())],
                            longest_gap: Duration::ZERO,
                        });
                    }
                    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
                    Ok(LoadReport {
                        acked: (0..sent).collect(),
                        failed: vec![],
                        longest_gap: Duration::ZERO,
                    })
                })
            }
        };
        Ok(Load { task, stop })
    }

    /// The scenario's operator logs, for failure messages.
    pub async fn operator_logs(&self) -> String {
        self.kubectl(&["logs", &format!("deploy/{RELEASE}-operator"), "--tail=50"])
            .await
            .unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }

    /// The work directory (localkube's state and pod logs).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The binaries' directory (localkube).
    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if keep() {
            let work = std::mem::replace(&mut self.work, tempfile::tempdir().expect("a temp dir"));
            let path = work.keep();
            eprintln!(
                "SLUICE_E2E_KEEP: namespace {} kept; KUBECONFIG={} (work dir {})",
                self.namespace,
                self.kubeconfig.display(),
                path.display()
            );
            if let Some(lk) = self.localkube.take() {
                // Left running, so the cluster can be looked at.
                let _ = lk.id();
                std::mem::forget(lk);
            }
            return;
        }
        if let Some(mut lk) = self.localkube.take() {
            // Pods die with localkube.
            let _ = lk.start_kill();
        }
        if self.provider == Provider::Kind {
            let run = |args: &[&str]| {
                std::process::Command::new(args[0])
                    .args(&args[1..])
                    .env("KUBECONFIG", &self.kubeconfig)
                    .output()
            };
            let ns = self.namespace.as_str();
            let _ = run(&["helm", "uninstall", RELEASE, "--namespace", ns, "--wait"]);
            // With the operator gone nothing would end the finalizers of
            // the Topics and ConsumerGroups left, and the namespace would
            // stay Terminating.
            if let Ok(out) = run(&[
                "kubectl",
                "-n",
                ns,
                "get",
                "topics,consumergroups",
                "-o",
                "name",
            ]) {
                for obj in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = run(&[
                        "kubectl",
                        "-n",
                        ns,
                        "patch",
                        obj,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ]);
                }
            }
            let _ = run(&["kubectl", "delete", "namespace", ns, "--wait=false"]);
        }
    }
}

/// The tag of the images under test on kind.
pub fn image_tag() -> String {
    std::env::var("SLUICE_E2E_IMAGE_TAG").unwrap_or_else(|_| "e2e".into())
}

/// The second tag the upgrade scenario moves to.
pub fn next_image_tag() -> String {
    std::env::var("SLUICE_E2E_NEXT_TAG").unwrap_or_else(|_| "e2e-next".into())
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(Client::try_from(cfg)?)
}

/// Starts localkube with three zones and an image map running the
/// binaries in `bin` (and this machine's kcat) as the images.
async fn start_localkube(bin: &Path, work: &Path) -> Result<(PathBuf, tokio::process::Child)> {
    let kcat = which("kcat").context("kcat is not installed")?;
    let images = serde_json::json!({
        NODE_IMAGE: [bin.join("sluice")],
        OPERATOR_IMAGE: [bin.join("sluice-operator")],
        KCAT_IMAGE: [kcat],
    });
    let images_path = work.join("images.json");
    std::fs::write(&images_path, serde_json::to_vec(&images)?)?;
    let kubeconfig = work.join("kubeconfig");
    let out = std::fs::File::create(work.join("localkube.out"))?;
    let err = std::fs::File::create(work.join("localkube.log"))?;
    let child = tokio::process::Command::new(bin.join("localkube"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--images")
        .arg(&images_path)
        .arg("--zones")
        .arg("a,b,c")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.join("localkube").display()))?;
    let ready = work.join("localkube.out");
    wait_for("localkube ready", Duration::from_secs(20), || async {
        let s = std::fs::read_to_string(&ready).unwrap_or_default();
        Ok(s.contains("localkube ready").then_some(()))
    })
    .await?;
    Ok((kubeconfig, child))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// A running load.
pub struct Load {
    task: tokio::task::JoinHandle<Result<LoadReport>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Waits for every record to be acknowledged or to fail.
    pub async fn finish(self) -> Result<LoadReport> {
        self.task.await?
    }

    /// Stops sending; what was sent is still waited for.
    pub async fn stop(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }
}

#[derive(Debug)]
pub struct LoadReport {
    /// Values acknowledged (acks=all).
    pub acked: Vec<u64>,
    /// Values whose delivery failed, and why.
    pub failed: Vec<(u64, String)>,
    /// The longest time without an acknowledgement while records were
    /// outstanding.
    pub longest_gap: Duration,
}

impl LoadReport {
    /// Fails unless every acknowledged value is in `records` exactly once,
    /// and nothing failed.
    pub fn check_against(&self, records: &[(i32, i64, String, String)]) -> Result<()> {
        if !self.failed.is_empty() {
            bail!(
                "{} records failed, e.g. {:?}",
                self.failed.len(),
                &self.failed[..self.failed.len().min(3)]
            );
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, _, _, v) in records {
            *seen.entry(v.as_str()).or_default() += 1;
        }
        let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        if !dup.is_empty() {
            bail!("duplicates in the topic (idempotence broken): {dup:?}");
        }
        let lost: Vec<u64> = self
            .acked
            .iter()
            .filter(|v| !seen.contains_key(v.to_string().as_str()))
            .copied()
            .collect();
        if !lost.is_empty() {
            bail!(
                "{} acknowledged records are missing, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            );
        }
        Ok(())
    }
}

async fn rdkafka_load(
    bootstrap: &str,
    topic: &str,
    count: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> Result<LoadReport> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer<rdkafka::client::DefaultClientContext, Tokio> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "120000")
            .set("linger.ms", "5")
            .create()?;
    let mut pending = FuturesUnordered::new();
    let mut tally = Tally::default();
    let start = Instant::now();
    for i in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Paced: record i goes out at i / rate seconds.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            tokio::select! {
                Some((v, r)) = pending.next(), if !pending.is_empty() => tally.settle(v, r),
                _ = tokio::time::sleep(due - now) => {}
            }
        }
        if pending.is_empty() {
            // Nothing outstanding: the time until the next send is no gap.
            tally.last_ack = Instant::now();
        }
        let value = i.to_string();
        let fut = producer.send_result(FutureRecord::to(topic).key(&value).payload(&value));
        match fut {
            Ok(delivery) => pending.push(async move { (i, delivery.await) }),
            Err((e, _)) => tally.failed.push((i, e.to_string())),
        }
    }
    while let Some((v, r)) = pending.next().await {
        tally.settle(v, r);
    }
    Ok(LoadReport {
        acked: tally.acked,
        failed: tally.failed,
        longest_gap: tally.longest_gap,
    })
}

/// What a load's deliveries came to so far.
struct Tally {
    acked: Vec<u64>,
    failed: Vec<(u64, String)>,
    /// When the last delivery settled (or the producer last had nothing
    /// outstanding).
    last_ack: Instant,
    longest_gap: Duration,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            acked: vec![],
            failed: vec![],
            last_ack: Instant::now(),
            longest_gap: Duration::ZERO,
        }
    }
}

impl Tally {
    /// Records the delivery of value `v` and the gap since the last one.
    fn settle<E>(
        &mut self,
        v: u64,
        r: std::result::Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
    ) {
        match r {
            Ok(Ok(_)) => self.acked.push(v),
            Ok(Err((e, _))) => self.failed.push((v, e.to_string())),
            Err(_) => self
                .failed
                .push((v, "the producer dropped the record".into())),
        }
        let now = Instant::now();
        self.longest_gap = self.longest_gap.max(now - self.last_ack);
        self.last_ack = now;
    }
}

/// rdkafka's futures on the test's tokio runtime.
struct Tokio;

impl rdkafka::util::AsyncRuntime for Tokio {
    type Delay = std::pin::Pin<Box<tokio::time::Sleep>>;

    fn spawn<T>(task: T)
    where
        T: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(task);
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        Box::pin(tokio::time::sleep(duration))
    }
}
