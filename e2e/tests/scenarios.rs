//! Sluice as a user meets it: `helm install`, `kubectl apply`, Kafka
//! clients. Each scenario installs the chart into its own namespace (on
//! localkube: its own localkube) and can run alone:
//!
//!   bash e2e/run.sh install_becomes_ready
//!   SLUICE_E2E_PROVIDER=kind bash e2e/kind.sh      # all of them on kind
//!
//! They are `#[ignore]`d in a plain `cargo test`: they need the binaries
//! (or images), helm, kubectl and kcat, which `e2e/run.sh` provides.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use sluice_api::v1alpha1::{Topic, User};
use sluice_e2e::{root, wait_for, Cluster, Provider, RELEASE, SECURE};

const MINUTE: Duration = Duration::from_secs(60);

fn report(scenario: &str, what: &str) {
    eprintln!("e2e {scenario}: {what}");
}

/// The chart installs; the operator (two replicas, one leading) brings up
/// three nodes; `helm test` produces and reads back a record.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn install_becomes_ready() -> Result<()> {
    // The chart's defaults: TLS, SCRAM and the authorizer (`helm test`
    // logs in as a User of its own).
    let c = Cluster::install("install", 3, SECURE).await?;
    report(
        "install",
        &format!(
            "helm install to 3 nodes Ready: {:.1} s",
            c.install_to_ready.as_secs_f64()
        ),
    );
    // The NOTES say how to connect and create a first Topic.
    for hint in [
        format!("{RELEASE}.{}.svc:9092", c.namespace),
        "kind: Topic".to_string(),
        format!("helm test {RELEASE}"),
    ] {
        ensure!(c.notes.contains(&hint), "NOTES lack {hint:?}: {}", c.notes);
    }
    let holder = c.wait_controller_holder().await?;
    let ops = c
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await?;
    ensure!(ops.split_whitespace().count() == 2, "operator pods: {ops}");
    ensure!(
        ops.split_whitespace().any(|p| p == holder),
        "the controller lock is held by {holder}, not an operator pod ({ops})"
    );
    let out = c
        .helm(&[
            "test",
            RELEASE,
            "--namespace",
            &c.namespace,
            "--logs",
            "--timeout",
            "3m",
        ])
        .await?;
    ensure!(
        out.contains("produced and read back"),
        "helm test said: {out}"
    );
    Ok(())
}

/// Users on a default (secured) install: a SCRAM User gets a Secret whose
/// password works for what its ACLs allow and nothing else; the
/// operator's own login reads a group's status; a wrong password is
/// refused; a TLS User reports it cannot log in to a SCRAM listener; the
/// deleted User's password stops working.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn scram_users_log_in_until_deleted() -> Result<()> {
    let mut values = SECURE.to_vec();
    values.push("operator.groupStatusIntervalMs=1000");
    let c = Cluster::install("users", 3, &values).await?;
    c.topic("payments", 1, 3).await?;
    c.topic("secret", 1, 3).await?;
    apply_user(&c, "alice", "scram-sha-512").await?;
    apply_user(&c, "carol", "tls").await?;
    wait_user(&c, "alice", "True").await?;
    let carol = wait_user(&c, "carol", "False").await?;
    ensure!(carol.contains("AuthenticationMismatch"), "carol: {carol}");
    let alice = c.login_args("alice").await?;
    // The first write waits for every node to have the new credential.
    wait_for("alice writes to payments", MINUTE, || async {
        let out = kcat(
            &c,
            &alice,
            &["-P", "-t", "payments", "-X", "acks=all"],
            Some("from-alice\n"),
        )
        .await;
        Ok(out.is_ok().then_some(()))
    })
    .await?;
    let read = kcat(
        &c,
        &alice,
        &["-C", "-t", "payments", "-o", "beginning", "-e", "-q"],
        None,
    )
    .await?;
    ensure!(read == "from-alice\n", "alice read {read:?}");
    // Nothing else: a topic no ACL names is refused.
    let refused = kcat(
        &c,
        &alice,
        &["-C", "-t", "secret", "-o", "beginning", "-e", "-q"],
        None,
    )
    .await;
    ensure!(
        refused.is_err(),
        "alice read a topic no ACL gives her: {refused:?}"
    );
    // The operator's own login (SCRAM over TLS, a super user) reads the
    // group alice's consumer committed to.
    let read = kcat(
        &c,
        &alice,
        &[
            "-G",
            "billing",
            "-X",
            "auto.offset.reset=earliest",
            "-c",
            "1",
            "-q",
            "payments",
        ],
        None,
    )
    .await?;
    ensure!(read.lines().count() == 1, "the group read {read:?}");
    c.apply("apiVersion: sluice.dev/v1alpha1\nkind: ConsumerGroup\nmetadata: {name: billing}\nspec: {groupId: billing}\n").await?;
    wait_for(
        "ConsumerGroup billing read by the operator",
        MINUTE,
        || async {
            let s = c
                .consumer_group("billing")
                .await?
                .status
                .unwrap_or_default();
            Ok((s.state.as_deref() == Some("Empty") && s.total_lag == Some(0)).then_some(()))
        },
    )
    .await?;
    let wrong: Vec<String> = alice
        .iter()
        .map(|a| {
            if a.starts_with("sasl.password=") {
                "sasl.password=wrong".into()
            } else {
                a.clone()
            }
        })
        .collect();
    ensure!(
        kcat(&c, &wrong, &["-L"], None).await.is_err(),
        "a wrong password was let in"
    );
    // Deleted: the Secret goes and the same password stops working.
    c.kubectl(&["delete", "user", "alice", "--wait=true"])
        .await?;
    wait_for("Secret alice removed", MINUTE, || async {
        let gone = c.api::<Secret>().get_opt("alice").await?.is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    wait_for("alice's login refused", MINUTE, || async {
        Ok(kcat(&c, &alice, &["-L"], None).await.is_err().then_some(()))
    })
    .await?;
    report(
        "users",
        "a SCRAM User logs in, is held to its ACLs, and is refused once deleted",
    );
    Ok(())
}

/// With `security.authentication=tls`: a TLS User's certificate (from the
/// clients' CA) logs it in and its ACLs hold; once the User is deleted,
/// its Secret is gone and its certificate can do nothing.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn tls_users_log_in_with_their_certificate() -> Result<()> {
    let mut values = SECURE.to_vec();
    values.push("security.authentication=tls");
    let c = Cluster::install("tls-users", 3, &values).await?;
    c.topic("payments", 1, 3).await?;
    apply_user(&c, "carol", "tls").await?;
    wait_user(&c, "carol", "True").await?;
    let carol = c.login_args("carol").await?;
    wait_for("carol writes to payments", MINUTE, || async {
        let out = kcat(
            &c,
            &carol,
            &["-P", "-t", "payments", "-X", "acks=all"],
            Some("from-carol\n"),
        )
        .await;
        Ok(out.is_ok().then_some(()))
    })
    .await?;
    let read = kcat(
        &c,
        &carol,
        &["-C", "-t", "payments", "-o", "beginning", "-e", "-q"],
        None,
    )
    .await?;
    ensure!(read == "from-carol\n", "carol read {read:?}");
    c.kubectl(&["delete", "user", "carol", "--wait=true"])
        .await?;
    wait_for("carol's certificate does nothing", MINUTE, || async {
        let out = kcat(
            &c,
            &carol,
            &["-C", "-t", "payments", "-o", "beginning", "-e", "-q"],
            None,
        )
        .await;
        Ok(out.is_err().then_some(()))
    })
    .await?;
    ensure!(
        c.api::<Secret>().get_opt("carol").await?.is_none(),
        "Secret carol is still there"
    );
    report(
        "tls-users",
        "a TLS User logs in with its certificate and is refused once deleted",
    );
    Ok(())
}

/// Applies User `name` with `kind` authentication and ACLs for topic
/// `payments` and group `billing`.
async fn apply_user(c: &Cluster, name: &str, kind: &str) -> Result<String> {
    c.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: User\nmetadata: {{name: {name}}}\n\
         spec:\n  authentication: {{type: {kind}}}\n  acls:\n\
         \x20   - resource: {{type: topic, name: payments}}\n\
         \x20     operations: [Read, Write, Describe]\n\
         \x20   - resource: {{type: group, name: billing}}\n\
         \x20     operations: [Read]\n"
    ))
    .await
}

/// Until User `name`'s Ready condition is `status`; its reason and message.
async fn wait_user(c: &Cluster, name: &str, status: &str) -> Result<String> {
    let users: kube::Api<User> = c.api();
    wait_for(&format!("User {name} Ready={status}"), MINUTE, || async {
        let u = users.get(name).await?;
        let ready = u
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.type_ == "Ready" && c.status == status);
        Ok(ready.map(|c| format!("{}: {}", c.reason, c.message)))
    })
    .await
}

/// kcat with a User's login options and `args`.
async fn kcat(c: &Cluster, login: &[String], args: &[&str], stdin: Option<&str>) -> Result<String> {
    let all: Vec<&str> = login
        .iter()
        .map(String::as_str)
        .chain(args.iter().copied())
        .collect();
    c.kcat(&all, stdin).await
}

/// `examples/`: a Topic, a ConsumerGroup and a client Job apply cleanly and
/// do what their comments say.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn examples_apply_cleanly() -> Result<()> {
    // The examples are written for the chart's defaults.
    let c = Cluster::install("examples", 3, SECURE).await?;
    let ex = root().join("examples");
    for f in [
        "topic.yaml",
        "consumergroup.yaml",
        "user.yaml",
        "client-job.yaml",
    ] {
        let mut yaml = std::fs::read_to_string(ex.join(f))?;
        if c.provider == Provider::Localkube && f == "client-job.yaml" {
            // localkube has no DNS: the Job reaches the Service by its
            // IP, which the nodes' certificate cannot name.
            let (dns, ip) = (
                "value: sluice:9092",
                "value: $(SLUICE_SERVICE_HOST):$(SLUICE_SERVICE_PORT_KAFKA)",
            );
            let names = "-X sasl.username=hello-client";
            ensure!(
                yaml.contains(dns) && yaml.contains(names),
                "examples/{f} changed shape"
            );
            yaml = yaml.replace(dns, ip).replace(
                names,
                &format!("{names} -X ssl.endpoint.identification.algorithm=none"),
            );
        }
        c.apply(&yaml)
            .await
            .with_context(|| format!("examples/{f}"))?;
    }
    c.wait_topic_ready("hello", 2 * MINUTE).await?;
    c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/hello-client",
        "--timeout=180s",
    ])
    .await
    .context("the client Job did not complete")?;
    let pod = c
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "job-name=hello-client",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await?;
    let logs = c.kubectl(&["logs", pod.trim()]).await?;
    for k in ["k1=hello", "k2=from", "k3=kubernetes"] {
        ensure!(logs.contains(k), "the Job read back: {logs}");
    }
    // The group the Job read with: Empty, offsets committed, nothing left.
    wait_for(
        "ConsumerGroup hello-readers shows the Job's offsets",
        MINUTE,
        || async {
            let g = c.consumer_group("hello-readers").await?;
            let s = g.status.unwrap_or_default();
            Ok((s.state.as_deref() == Some("Empty")
                && !s.offsets.is_empty()
                && s.total_lag == Some(0))
            .then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Records written with librdkafka (and kcat) come back in order per
/// partition, each key always on one partition.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn produce_and_consume_with_librdkafka_and_kcat() -> Result<()> {
    let c = Cluster::install("clients", 3, &[]).await?;
    c.topic("events", 3, 3).await?;
    let report = c.start_load("events", 3000, 5000).await?.finish().await?;
    ensure!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..report.failed.len().min(3)]
    );
    c.kcat(
        &["-P", "-t", "events", "-K:", "-X", "acks=all"],
        Some("kcat-key:from kcat\n"),
    )
    .await?;
    let records = c.read_all("events").await?;
    ensure!(
        records.len() == 3001,
        "read {} records, wrote 3001",
        records.len()
    );
    report.check_against(&records)?;
    let mut by_partition: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
    let mut key_home: std::collections::BTreeMap<&str, i32> = Default::default();
    for (p, o, k, _) in &records {
        by_partition.entry(*p).or_default().push(*o);
        if let Some(home) = key_home.insert(k, *p) {
            ensure!(home == *p, "key {k} on partitions {home} and {p}");
        }
    }
    ensure!(
        by_partition.len() == 3,
        "partitions used: {:?}",
        by_partition.keys()
    );
    for (p, offsets) in by_partition {
        ensure!(
            offsets.iter().copied().eq(0..offsets.len() as i64),
            "partition {p}: offsets not 0..n in order"
        );
    }
    Ok(())
}

/// A ConsumerGroup object shows a group's lag, and its offsetReset moves
/// the committed offsets the group's consumers then start from.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn consumer_group_lag_and_reset() -> Result<()> {
    let c = Cluster::install("groups", 3, &["operator.groupStatusIntervalMs=1000"]).await?;
    c.topic("orders", 1, 3).await?;
    let lines: String = (0..100).map(|i| format!("order-{i}\n")).collect();
    c.kcat(&["-P", "-t", "orders", "-X", "acks=all"], Some(&lines))
        .await?;
    // A consumer of the group reads 40 records and leaves, committing.
    let read = c
        .kcat(
            &[
                "-G",
                "billing",
                "-X",
                "auto.offset.reset=earliest",
                "-c",
                "40",
                "-q",
                "orders",
            ],
            None,
        )
        .await?;
    ensure!(read.lines().count() == 40, "read {}", read.lines().count());
    c.apply("apiVersion: sluice.dev/v1alpha1\nkind: ConsumerGroup\nmetadata: {name: billing}\nspec: {groupId: billing}\n")
        .await?;
    wait_for("ConsumerGroup billing shows lag 60", MINUTE, || async {
        let s = c
            .consumer_group("billing")
            .await?
            .status
            .unwrap_or_default();
        Ok((s.state.as_deref() == Some("Empty") && s.total_lag == Some(60)).then_some(()))
    })
    .await?;
    c.apply(
        "apiVersion: sluice.dev/v1alpha1\nkind: ConsumerGroup\nmetadata: {name: billing}\n\
         spec: {groupId: billing, offsetReset: {to: earliest, topics: [orders]}}\n",
    )
    .await?;
    wait_for("the reset applied: lag 100", MINUTE, || async {
        let s = c
            .consumer_group("billing")
            .await?
            .status
            .unwrap_or_default();
        Ok((s.last_offset_reset.is_some() && s.total_lag == Some(100)).then_some(()))
    })
    .await?;
    let again = c
        .kcat(&["-G", "billing", "-e", "-q", "orders"], None)
        .await?;
    ensure!(
        again.lines().count() == 100 && again.starts_with("order-0\n"),
        "after the reset the group read {} records",
        again.lines().count()
    );
    Ok(())
}

/// The leader of a partition is killed under an idempotent acks=all load:
/// every acknowledged record is in the topic, exactly once.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn leader_killed_under_load_loses_nothing() -> Result<()> {
    let c = Cluster::install("failover", 3, &["nodes.leaseMs=3000"]).await?;
    c.topic("payments", 3, 3).await?;
    let load = c.start_load("payments", 16_000, 2000).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = c.leader_of("payments", 0).await?;
    let victim = format!("{RELEASE}-node-{leader}");
    report(
        "failover",
        &format!("killing {victim}, leader of payments/0"),
    );
    c.kill_pod(&victim).await?;
    let new_leader = wait_for("payments/0 led by another node", MINUTE, || async {
        let l = c.leader_of("payments", 0).await?;
        Ok((l != leader).then_some(l))
    })
    .await?;
    let r = load.finish().await?;
    report(
        "failover",
        &format!(
            "new leader node {new_leader}; {} acknowledged, {} failed, longest gap {:.2} s",
            r.acked.len(),
            r.failed.len(),
            r.longest_gap.as_secs_f64()
        ),
    );
    c.wait_nodes_ready(3, 2 * MINUTE).await?;
    c.wait_topic_ready("payments", 2 * MINUTE).await?;
    let records = c.read_all("payments").await?;
    r.check_against(&records)?;
    ensure!(
        r.acked.len() == 16_000,
        "{} of 16000 acknowledged",
        r.acked.len()
    );
    Ok(())
}

/// `helm upgrade` with a new image tag and one more node: the nodes are
/// rolled one at a time onto the new image and the cluster grows, while a
/// producer loses nothing.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn helm_upgrade_rolls_and_scales() -> Result<()> {
    let c = Cluster::install("upgrade", 3, &[]).await?;
    c.topic("ledger", 3, 3).await?;
    let tag = match c.provider {
        Provider::Localkube => "next".to_string(),
        Provider::Kind => sluice_e2e::next_image_tag(),
    };
    let load = c.start_load("ledger", 1_000_000, 500).await?;
    let start = Instant::now();
    c.helm_chart(
        "upgrade",
        &["nodes.minNodes=4".into(), format!("nodes.image.tag={tag}")],
    )
    .await?;
    wait_for(
        "4 nodes, all on the new image, every ISR full",
        6 * MINUTE,
        || async {
            let new = c
                .node_pods()
                .await?
                .iter()
                .filter(|p| {
                    sluice_e2e::pod_ready(p)
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers[0]
                                .image
                                .as_deref()
                                .is_some_and(|i| i.ends_with(&format!(":{tag}")))
                        })
                })
                .count();
            if new != 4 {
                return Ok(None);
            }
            let t: Topic = c.api::<Topic>().get("ledger").await?;
            let full = t.status.is_some_and(|s| {
                s.partitions.len() == 3 && s.partitions.iter().all(|p| p.isr.len() == 3)
            });
            Ok(full.then_some(()))
        },
    )
    .await
    .with_context(|| "the upgrade did not settle")?;
    report(
        "upgrade",
        &format!(
            "rolled 3 nodes and grew to 4 in {:.1} s",
            start.elapsed().as_secs_f64()
        ),
    );
    let sts: StatefulSet = c
        .api::<StatefulSet>()
        .get(&format!("{RELEASE}-node"))
        .await?;
    ensure!(sts.spec.and_then(|s| s.replicas) == Some(4));
    let r = load.stop().await?;
    report(
        "upgrade",
        &format!(
            "{} acknowledged during the upgrade, longest gap {:.2} s",
            r.acked.len(),
            r.longest_gap.as_secs_f64()
        ),
    );
    let records = c.read_all("ledger").await?;
    r.check_against(&records)?;
    Ok(())
}

/// The leading operator replica dies: the other takes the controller lock
/// and acts (a new Topic becomes Ready).
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn operator_failover() -> Result<()> {
    let c = Cluster::install("operator-failover", 3, &["operator.leaseMs=3000"]).await?;
    let holder = c.wait_controller_holder().await?;
    let start = Instant::now();
    c.kill_pod(&holder).await?;
    let next = wait_for(
        "another replica takes the controller lock",
        MINUTE,
        || async {
            let h = c.controller_holder().await?;
            Ok(h.filter(|h| *h != holder))
        },
    )
    .await?;
    report(
        "operator-failover",
        &format!(
            "{holder} killed, {next} leads after {:.1} s",
            start.elapsed().as_secs_f64()
        ),
    );
    c.topic("after-failover", 2, 3)
        .await
        .with_context(|| c.work_dir().display().to_string())?;
    Ok(())
}

/// Deleting a Topic removes it from Kafka clients' view and its data: a
/// topic of the same name made again starts empty.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn delete_topic() -> Result<()> {
    let c = Cluster::install("delete-topic", 3, &[]).await?;
    c.topic("doomed", 2, 3).await?;
    let lines: String = (0..50).map(|i| format!("{i}\n")).collect();
    c.kcat(&["-P", "-t", "doomed", "-X", "acks=all"], Some(&lines))
        .await?;
    c.kubectl(&["delete", "topic", "doomed", "--timeout=120s"])
        .await?;
    wait_for("doomed gone from Metadata", MINUTE, || async {
        let meta = c.kcat(&["-L", "-J"], None).await?;
        let v: serde_json::Value = serde_json::from_str(&meta)?;
        let listed = v["topics"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["topic"] == "doomed"));
        Ok((!listed).then_some(()))
    })
    .await?;
    c.topic("doomed", 2, 3).await?;
    let records = c.read_all("doomed").await?;
    ensure!(
        records.is_empty(),
        "the new doomed holds {} old records",
        records.len()
    );
    Ok(())
}

/// `helm uninstall` removes everything the chart and the operator made
/// except the data: the nodes' PVCs, and the topics' metadata (Topic
/// objects and their partition Leases, here only Sluice's internal
/// `__consumer_offsets` and `__transaction_state`, as user topics were
/// deleted first). The cleanup
/// docs/operations.md gives then leaves the namespace empty.
#[tokio::test]
#[ignore = "end to end: run by e2e/run.sh or e2e/kind.sh"]
async fn uninstall_leaves_only_data() -> Result<()> {
    let c = Cluster::install("uninstall", 3, &[]).await?;
    c.topic("short-lived", 1, 3).await?;
    c.kcat(&["-P", "-t", "short-lived", "-X", "acks=all"], Some("x\n"))
        .await?;
    // A group, so the internal offsets topic exists.
    c.kcat(
        &[
            "-G",
            "readers",
            "-X",
            "auto.offset.reset=earliest",
            "-c",
            "1",
            "-q",
            "short-lived",
        ],
        None,
    )
    .await?;
    // Topics first, while the operator runs to finish their finalizers.
    c.kubectl(&["delete", "topic", "short-lived", "--timeout=120s"])
        .await?;
    c.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        &c.namespace,
        "--wait",
        "--timeout",
        "3m",
    ])
    .await?;
    let runtime = "pods,statefulsets,deployments,replicasets,services,configmaps,secrets,\
                   serviceaccounts,roles,rolebindings,poddisruptionbudgets,jobs,consumergroups";
    let left = |kinds: &'static str| {
        let c = &c;
        async move {
            let out = c
                .kubectl(&[
                    "get",
                    kinds,
                    "-o",
                    "jsonpath={range .items[*]}{.kind}/{.metadata.name} {end}",
                ])
                .await?;
            Ok::<Vec<String>, anyhow::Error>(
                out.split_whitespace()
                    // What every namespace has on a real cluster.
                    .filter(|o| {
                        *o != "ConfigMap/kube-root-ca.crt" && *o != "ServiceAccount/default"
                    })
                    .map(str::to_string)
                    .collect(),
            )
        }
    };
    wait_for(
        "nothing of the running cluster left",
        2 * MINUTE,
        || async {
            let l = left(runtime).await?;
            if l.is_empty() {
                Ok(Some(()))
            } else {
                bail!("left: {l:?}")
            }
        },
    )
    .await?;
    let leases = wait_for("only partition Leases left", MINUTE, || async {
        let all = c.kubectl(&["get", "leases", "-o", "name"]).await?;
        let partitions = c
            .kubectl(&[
                "get",
                "leases",
                "-l",
                "sluice.io/kind=partition",
                "-o",
                "name",
            ])
            .await?;
        if all == partitions {
            Ok(Some(all))
        } else {
            bail!("leases left: {all}")
        }
    })
    .await?;
    let topics = c.kubectl(&["get", "topics", "-o", "name"]).await?;
    ensure!(
        topics
            .lines()
            .all(|t| t.contains("consumer-offsets") || t.contains("transaction-state")),
        "Topics left besides the internal ones: {topics}"
    );
    ensure!(
        !leases.trim().is_empty(),
        "the offsets topic's partition Leases went"
    );
    let cluster_wide = c
        .run(
            "kubectl",
            &["get", "clusterroles,clusterrolebindings", "-o", "name"],
            None,
        )
        .await?;
    ensure!(
        !cluster_wide.lines().any(|l| l.contains(&c.namespace)),
        "cluster-wide objects left: {cluster_wide}"
    );
    let pvcs = c.kubectl(&["get", "pvc", "-o", "name"]).await?;
    ensure!(pvcs.lines().count() == 3, "PVCs: {pvcs}");
    // The documented removal of the data.
    c.kubectl(&[
        "delete",
        "pvc",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
    ])
    .await?;
    for t in topics.lines() {
        c.kubectl(&[
            "patch",
            t,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await?;
    }
    c.kubectl(&["delete", "topics", "--all"]).await?;
    c.kubectl(&[
        "delete",
        "leases",
        "-l",
        &format!("sluice.io/cluster={RELEASE}"),
    ])
    .await?;
    let rest = left("pvc,topics,leases").await?;
    ensure!(rest.is_empty(), "after the cleanup: {rest:?}");
    Ok(())
}
