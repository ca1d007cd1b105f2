"""localkube's API server driven by the real kubectl and by plain HTTP the
way client-go and kube-rs use it: apply, get with selectors, -o yaml, wait,
scale, delete; CRDs served at once with their schema enforced; optimistic
concurrency; watches that resume, and expire; finalizers and garbage
collection; patches.

kubectl and helm run as on a real cluster: they read localkube's OpenAPI
documents, leave validation to the server, and see its Tables."""
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest

LOCALKUBE = os.environ.get("LOCALKUBE_BIN")
pytestmark = pytest.mark.skipif(
    not LOCALKUBE, reason="LOCALKUBE_BIN is not set (scripts/test.sh sets it)")

MANIFESTS = {
    "config.yaml": """
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo, tier: config}
data: {mode: fast}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: other
  labels: {app: other}
data: {}
""",
    "sts.yaml": """
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  labels: {app: demo}
spec:
  replicas: 2
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: example/server}]
""",
    "crd.yaml": """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              ready: {type: boolean}
""",
}


@pytest.fixture(scope="module")
def api():
    work = tempfile.mkdtemp(prefix="localkube-")
    kubeconfig = os.path.join(work, "kubeconfig")
    proc = subprocess.Popen([LOCALKUBE, "--kubeconfig", kubeconfig, "--watch-history", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("localkube ready "), line
    url = dict(kv.split("=", 1) for kv in line.split()[2:])["url"]
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    for name, text in MANIFESTS.items():
        with open(os.path.join(manifests, name), "w") as f:
            f.write(text)
    yield url, kubeconfig, manifests
    proc.kill()
    proc.wait()
    shutil.rmtree(work, ignore_errors=True)


def kubectl(kubeconfig, *args, check=True, stdin=None):
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin,
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def call(url, method, path, body=None, content_type="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_kubectl_apply_get_wait_scale_delete(api):
    url, kc, manifests = api
    out = kubectl(kc, "apply", "-f", manifests).stdout
    assert "configmap/settings created" in out and "statefulset.apps/web created" in out
    names = kubectl(kc, "get", "configmaps", "-l", "app=demo", "-o", "name").stdout.split()
    assert names == ["configmap/settings"]
    assert kubectl(kc, "get", "cm", "-l", "app!=demo", "-o", "name").stdout.split() == ["configmap/other"]
    doc = kubectl(kc, "get", "sts", "web", "-o", "yaml").stdout
    assert "kind: StatefulSet" in doc and "replicas: 2" in doc
    kubectl(kc, "wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    kubectl(kc, "scale", "statefulset", "web", "--replicas=3")
    sts = json.loads(kubectl(kc, "get", "sts", "web", "-o", "json").stdout)
    assert sts["spec"]["replicas"] == 3 and sts["metadata"]["generation"] == 2
    # Applying again is idempotent for unchanged objects.
    out = kubectl(kc, "apply", "-f", os.path.join(manifests, "config.yaml")).stdout
    assert "configmap/settings unchanged" in out
    kubectl(kc, "delete", "cm", "other")
    assert kubectl(kc, "get", "cm", "other", check=False).returncode != 0


def test_crds_are_served_at_once_and_their_schema_enforced(api):
    url, kc, manifests = api
    kubectl(kc, "apply", "-f", os.path.join(manifests, "crd.yaml"))
    bad = kubectl(kc, "apply", "-f", "-", check=False,
                  stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 20}\n")
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr and "less than or equal to 10" in bad.stderr
    bad = kubectl(kc, "apply", "-f", "-", check=False,
                  stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {color: green}\n")
    assert "spec.size: Required value" in bad.stderr and "spec.color: Unsupported value" in bad.stderr
    kubectl(kc, "apply", "-f", "-",
            stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}\n")
    assert kubectl(kc, "get", "wd", "-o", "name").stdout.split() == ["widget.example.com/w"]
    # The status subresource changes status only; the main resource keeps it.
    path = "/apis/example.com/v1/namespaces/default/widgets/w"
    code, _ = call(url, "PATCH", path + "/status", {"status": {"ready": True}, "spec": {"size": 9}},
                   "application/merge-patch+json")
    assert code == 200
    code, w = call(url, "GET", path)
    assert w["status"] == {"ready": True} and w["spec"]["size"] == 3
    code, w = call(url, "PATCH", path, {"spec": {"size": 4}, "status": {"ready": False}},
                   "application/merge-patch+json")
    assert code == 200 and w["spec"]["size"] == 4 and w["status"] == {"ready": True}


def test_optimistic_concurrency_and_patches(api):
    url, _, _ = api
    base = "/api/v1/namespaces/default/configmaps"
    code, cm = call(url, "POST", base, {"metadata": {"name": "cas"}, "data": {"a": "1"}})
    assert code == 201
    code, again = call(url, "POST", base, {"metadata": {"name": "cas"}})
    assert code == 409 and again["reason"] == "AlreadyExists"
    stale = dict(cm)
    cm["data"] = {"a": "2"}
    code, updated = call(url, "PUT", f"{base}/cas", cm)
    assert code == 200
    assert int(updated["metadata"]["resourceVersion"]) > int(stale["metadata"]["resourceVersion"])
    stale["data"] = {"a": "3"}
    code, conflict = call(url, "PUT", f"{base}/cas", stale)
    assert code == 409 and conflict["reason"] == "Conflict"
    code, cur = call(url, "GET", f"{base}/cas")
    assert cur["data"] == {"a": "2"}, "the refused write changed nothing"
    code, cur = call(url, "PATCH", f"{base}/cas",
                     [{"op": "add", "path": "/data/b", "value": "x"}], "application/json-patch+json")
    assert code == 200 and cur["data"] == {"a": "2", "b": "x"}
    code, cur = call(url, "PATCH", f"{base}/cas", {"data": {"a": None}}, "application/strategic-merge-patch+json")
    assert cur["data"] == {"b": "x"}
    code, applied = call(url, "PATCH", f"{base}/applied?fieldManager=t&force=true",
                         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
                          "data": {"k": "v"}}, "application/apply-patch+yaml")
    assert code == 201 and applied["data"] == {"k": "v"}
    code, refused = call(url, "POST", base + "?dryRun=All", {"metadata": {"name": "dry"}})
    assert code == 400 and "dry run" in refused["message"]


def test_watches_resume_and_expire(api):
    url, _, _ = api
    base = "/api/v1/namespaces/watched/configmaps"
    code, first = call(url, "POST", base, {"metadata": {"name": "w0", "labels": {"w": "yes"}}})
    rv = first["metadata"]["resourceVersion"]
    for i in range(1, 4):
        call(url, "POST", base, {"metadata": {"name": f"w{i}", "labels": {"w": "yes"}}})
    call(url, "DELETE", f"{base}/w1")
    path = f"{base}?watch=true&resourceVersion={rv}&timeoutSeconds=1&labelSelector=w%3Dyes"
    with urllib.request.urlopen(url + path) as r:
        events = [json.loads(l) for l in r.read().decode().splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w1"), ("ADDED", "w2"), ("ADDED", "w3"), ("DELETED", "w1")]
    # More changes than the history keeps: resuming from the start is 410.
    for i in range(60):
        call(url, "POST", "/api/v1/namespaces/churn/configmaps", {"metadata": {"name": f"c{i}"}})
    with urllib.request.urlopen(url + f"{base}?watch=true&resourceVersion={rv}&timeoutSeconds=1") as r:
        events = [json.loads(l) for l in r.read().decode().splitlines()]
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_finalizers_and_garbage_collection(api):
    url, _, _ = api
    base = "/api/v1/namespaces/gc/configmaps"
    code, owner = call(url, "POST", base, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    call(url, "POST", base, {"metadata": {"name": "dependent", "ownerReferences": [ref]}})
    call(url, "POST", base, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    assert call(url, "DELETE", f"{base}/owner")[0] == 200
    assert call(url, "GET", f"{base}/dependent")[0] == 404, "dependents go with their owner"
    code, held = call(url, "DELETE", f"{base}/held")
    assert code == 200 and held["metadata"].get("deletionTimestamp")
    assert call(url, "GET", f"{base}/held")[0] == 200, "finalizers hold the object"
    call(url, "PATCH", f"{base}/held", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert call(url, "GET", f"{base}/held")[0] == 404, "the last finalizer removed lets it go"


CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    "values.yaml": "replicas: 1\n",
    "templates/config.yaml": """
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  replicas: "{{ .Values.replicas }}"
""",
    "templates/gadget.yaml": """
apiVersion: example.com/v1
kind: Gadget
metadata:
  name: {{ .Release.Name }}-gadget
spec:
  size: {{ .Values.replicas }}
""",
    "crds/gadgets.yaml": """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
""",
}


def test_helm_install_upgrade_uninstall(api, tmp_path):
    """helm install, upgrade and uninstall with helm's own validation (it
    reads localkube's OpenAPI documents)."""
    _, kc, _ = api
    for name, text in CHART.items():
        p = tmp_path / "chart" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    chart = str(tmp_path / "chart")

    def helm(*args):
        r = subprocess.run(["helm", "--kubeconfig", kc, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    helm("install", "demo", chart)
    assert kubectl(kc, "get", "cm", "demo-settings", "-o", "jsonpath={.data.replicas}").stdout == "1"
    helm("upgrade", "demo", chart, "--set", "replicas=3")
    assert kubectl(kc, "get", "cm", "demo-settings", "-o", "jsonpath={.data.replicas}").stdout == "3"
    assert kubectl(kc, "get", "gadgets", "demo-gadget", "-o", "jsonpath={.spec.size}").stdout == "3"
    assert "deployed" in helm("list")
    helm("uninstall", "demo")
    assert kubectl(kc, "get", "cm", "demo-settings", check=False).returncode != 0
    assert "demo" not in helm("list")


CRDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crds")


def topic(name, partitions, rf=1, extra=""):
    return (f"apiVersion: sluice.dev/v1alpha1\nkind: Topic\nmetadata: {{name: {name}}}\n"
            f"spec:\n  partitions: {partitions}\n  replicationFactor: {rf}\n{extra}")


def test_sluice_crds_install_and_refuse_bad_topics(api):
    """`kubectl apply -f crds/` installs Sluice's CRDs; the API server then
    refuses what the schema forbids, undeclared config keys under strict
    field validation, and a decrease of partitions (a CEL transition rule)."""
    url, kc, _ = api
    kubectl(kc, "apply", "-f", CRDS)
    kubectl(kc, "wait", "--for=condition=Established", "crd/topics.sluice.dev",
            "crd/consumergroups.sluice.dev", "--timeout=10s")
    kubectl(kc, "apply", "-f", "-",
            stdin=topic("orders", 3, 1, "  config: {retention.ms: '60000'}\n"))
    assert kubectl(kc, "get", "st", "-o", "name").stdout.split() == ["topic.sluice.dev/orders"]
    bad = kubectl(kc, "apply", "-f", "-", check=False, stdin=topic("zero", 0))
    assert "spec.partitions" in bad.stderr and "greater than or equal to 1" in bad.stderr
    bad = kubectl(kc, "apply", "-f", "-", check=False,
                  stdin=topic("odd", 1, 1, "  topicName: 'no spaces'\n"))
    assert "spec.topicName" in bad.stderr and "should match" in bad.stderr
    bad = kubectl(kc, "apply", "-f", "-", check=False,
                  stdin=topic("codec", 1, 1, "  config: {compression.type: sideways}\n"))
    assert "spec.config.compression.type: Unsupported value" in bad.stderr
    # An unknown config key is refused (kubectl's default asks for
    # fieldValidation=Strict), pruned (--validate=false asks for Ignore) or
    # named in a warning (Warn).
    loose = topic("loose", 1, 1, "  config: {retention.ms: '1', colour: blue}\n")
    bad = kubectl(kc, "apply", "-f", "-", check=False, stdin=loose)
    assert 'unknown field "spec.config.colour"' in bad.stderr, bad.stderr
    kubectl(kc, "apply", "--validate=false", "-f", "-", stdin=loose)
    got = json.loads(kubectl(kc, "get", "st", "loose", "-o", "json").stdout)
    assert got["spec"]["config"] == {"retention.ms": "1"}
    topics = "/apis/sluice.dev/v1alpha1/namespaces/default/topics"
    body = {"apiVersion": "sluice.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "warned"},
            "spec": {"partitions": 1, "replicationFactor": 1, "config": {"colour": "blue"}}}
    req = urllib.request.Request(url + topics + "?fieldValidation=Warn", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.headers.get_all("Warning") == ['299 - "unknown field \\"spec.config.colour\\""']
    body["metadata"]["name"] = "strict"
    code, answer = call(url, "POST", topics + "?fieldValidation=Strict", body)
    assert code == 400 and 'unknown field "spec.config.colour"' in answer["message"], answer
    # Partitions may grow, never shrink.
    kubectl(kc, "apply", "-f", "-", stdin=topic("orders", 6))
    bad = kubectl(kc, "apply", "-f", "-", check=False, stdin=topic("orders", 2))
    assert "partitions may not decrease" in bad.stderr, bad.stderr
    assert kubectl(kc, "get", "st", "orders", "-o", "jsonpath={.spec.partitions}").stdout == "6"
    # A ConsumerGroup with an offset reset of an unknown kind.
    bad = kubectl(kc, "apply", "-f", "-", check=False,
                  stdin="apiVersion: sluice.dev/v1alpha1\nkind: ConsumerGroup\nmetadata: {name: g}\n"
                        "spec: {groupId: g, offsetReset: {to: yesterday}}\n")
    assert "spec.offsetReset.to: Unsupported value" in bad.stderr


def test_kubectl_reads_openapi_validates_on_the_server_and_prints_tables(api):
    """No client-side flags: kubectl reads localkube's OpenAPI documents
    (`kubectl explain` too), the server refuses unknown fields of built-in
    kinds as strict decoding does, and `kubectl get` prints a CRD's
    columns from the server's Table."""
    url, kc, _ = api
    status, index = call(url, "GET", "/openapi/v3")
    assert status == 200 and "apis/apps/v1" in index["paths"]
    misspelt = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\n"
                "datta: {k: v}\n")
    bad = kubectl(kc, "apply", "-f", "-", check=False, stdin=misspelt)
    assert 'unknown field "datta"' in bad.stderr, bad.stderr
    assert kubectl(kc, "get", "cm", "typo", check=False).returncode != 0
    svc = ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
           "spec:\n  ports: [{port: 80, targetPortt: 8080}]\n")
    bad = kubectl(kc, "apply", "-f", "-", check=False, stdin=svc)
    assert 'unknown field "spec.ports[0].targetPortt"' in bad.stderr, bad.stderr
    kubectl(kc, "apply", "-f", CRDS)
    kubectl(kc, "wait", "--for=condition=Established", "crd/topics.sluice.dev", "--timeout=10s")
    explained = kubectl(kc, "explain", "topic.spec.partitions").stdout
    assert "may grow, never shrink" in explained, explained
    kubectl(kc, "apply", "-f", "-", stdin=topic("tabled", 4, 1))
    lines = kubectl(kc, "get", "topics").stdout.splitlines()
    assert lines[0].split() == ["NAME", "PARTITIONS", "REPLICAS", "READY", "AGE"], lines
    row = next(line.split() for line in lines[1:] if line.startswith("tabled "))
    assert row[1:3] == ["4", "1"], row
    kubectl(kc, "delete", "topic", "tabled")
