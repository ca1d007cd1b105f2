//! localkube driven by kube-rs, the way the operator and the nodes use the
//! API: CRUD, optimistic concurrency, server-side apply, status patches, a
//! reflector that survives restarts of its watch, and Lease election
//! between two contenders.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;

struct Localkube {
    child: Child,
    _dir: tempfile::TempDir,
    client: Client,
}

impl Drop for Localkube {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Localkube {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_localkube"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("localkube ready "), "{line}");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Localkube {
        child,
        _dir: dir,
        client: Client::try_from(config).unwrap(),
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_conflicts_apply_and_status() {
    let lk = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(lk.client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .unwrap();
    let err = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    let mut next = created.clone();
    next.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    cms.replace("a", &PostParams::default(), &next)
        .await
        .unwrap();
    // The first version is stale now.
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("k".into(), "3".into())]));
    let err = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        cms.get("a").await.unwrap().data.unwrap()["k"],
        "2",
        "the refused write changed nothing"
    );
    assert_eq!(cms.list(&Default::default()).await.unwrap().items.len(), 1);

    // Server-side apply creates, then updates.
    let pp = PatchParams::apply("localkube-test").force();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied"}, "data": {"x": "1"}});
    cms.patch("applied", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied"}, "data": {"x": "2"}});
    let got = cms
        .patch("applied", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(got.data.unwrap()["x"], "2");

    // Status through its subresource; the main resource keeps it.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(lk.client.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap();
    pvcs.create(&PostParams::default(), &claim).await.unwrap();
    pvcs.patch_status(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound"}})),
    )
    .await
    .unwrap();
    let got = pvcs
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Lost"}})),
        )
        .await
        .unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(got.metadata.labels.unwrap()["x"], "y");
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn a_reflector_survives_restarts_of_its_watch() {
    let lk = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(lk.client.clone(), "default");
    let (store, writer) = reflector::store::<ConfigMap>();
    // One-second watches: every second the watch ends and resumes from the
    // last resource version it saw.
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().timeout(1)),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = stream.boxed();
        while s.next().await.is_some() {}
    });
    for i in 0..4 {
        cms.create(&PostParams::default(), &cm(&format!("r{i}"), &[]))
            .await
            .unwrap();
        // Across at least one restart of the watch.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    cms.delete("r0", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        if names == ["r1", "r2", "r3"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector has {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

/// One round of a contender for a Lease: acquire it if free or expired,
/// renew it if held; compare-and-swap on the resourceVersion throughout.
async fn try_lead(leases: &Api<Lease>, me: &str, now_ms: i64, duration_s: i32) -> bool {
    let now = MicroTime(k8s_openapi::chrono::DateTime::from_timestamp_millis(now_ms).unwrap());
    let Some(mut l) = leases.get_opt("leader").await.unwrap() else {
        let l = Lease {
            metadata: ObjectMeta {
                name: Some("leader".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(duration_s),
                renew_time: Some(now.clone()),
                acquire_time: Some(now),
                lease_transitions: Some(0),
            }),
        };
        return leases.create(&PostParams::default(), &l).await.is_ok();
    };
    let spec = l.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0.timestamp_millis())
        .unwrap_or(0);
    let expired = now_ms > renewed + i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
    if holder != me && !expired {
        return false;
    }
    let mut next = spec;
    if holder != me {
        next.holder_identity = Some(me.into());
        next.acquire_time = Some(now.clone());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
    }
    next.renew_time = Some(now);
    l.spec = Some(next);
    leases
        .replace("leader", &PostParams::default(), &l)
        .await
        .is_ok()
}

#[tokio::test]
async fn two_contenders_share_a_lease() {
    let lk = start().await;
    let leases: Api<Lease> = Api::namespaced(lk.client.clone(), "default");
    // Times are given, not read, so the test is exact.
    assert!(try_lead(&leases, "a", 1_000, 10).await, "a acquires");
    assert!(!try_lead(&leases, "b", 2_000, 10).await, "b waits");
    assert!(try_lead(&leases, "a", 8_000, 10).await, "a renews");
    assert!(
        !try_lead(&leases, "b", 12_000, 10).await,
        "renewed: b still waits"
    );
    // a stops renewing; once the lease lapses, b takes over.
    assert!(try_lead(&leases, "b", 18_001, 10).await, "b takes over");
    assert!(!try_lead(&leases, "a", 19_000, 10).await, "a lost it");
    let l = leases.get("leader").await.unwrap().spec.unwrap();
    assert_eq!(l.holder_identity.as_deref(), Some("b"));
    assert_eq!(l.lease_transitions, Some(1));
    // Two contenders racing with the same stale read: only one write wins.
    let stale = leases.get("leader").await.unwrap();
    let mut one = stale.clone();
    one.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let mut two = stale;
    two.spec.as_mut().unwrap().holder_identity = Some("d".into());
    let r1 = leases.replace("leader", &PostParams::default(), &one).await;
    let r2 = leases.replace("leader", &PostParams::default(), &two).await;
    assert!(r1.is_ok() && r2.is_err());
}
