//! The Kubernetes coordination backend against a real API server: the same
//! contract the in-memory backend passes. Needs a cluster, so it is ignored
//! (reported as such) unless run with `--ignored` and SLUICE_TEST_KUBECONFIG
//! naming a kubeconfig; scripts/test.sh does that when one is available.

use sluice_node::coord::{contract, Kubernetes};

#[tokio::test]
#[ignore = "needs a Kubernetes API server: set SLUICE_TEST_KUBECONFIG and run with --ignored"]
async fn kubernetes_backend_passes_the_contract() {
    let path = std::env::var("SLUICE_TEST_KUBECONFIG")
        .expect("SLUICE_TEST_KUBECONFIG names the kubeconfig of the API server to test against");
    let namespace = std::env::var("SLUICE_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    // A fresh cluster name: the contract starts from an empty store.
    let cluster = format!(
        "contract-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    install_crds(std::path::Path::new(&path)).await;
    let k = Kubernetes::from_kubeconfig(std::path::Path::new(&path), &namespace, &cluster)
        .await
        .expect("connecting to the API server");
    contract::run(&k).await;
}

/// Applies the Topic and ConsumerGroup CRDs, as `kubectl apply -f crds/` does.
async fn install_crds(kubeconfig: &std::path::Path) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    use kube::CustomResourceExt;
    let client = sluice_node::coord::client_from_kubeconfig(kubeconfig)
        .await
        .expect("a client");
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    for crd in [
        sluice_api::v1alpha1::Topic::crd(),
        sluice_api::v1alpha1::ConsumerGroup::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("installing a CRD");
    }
}
