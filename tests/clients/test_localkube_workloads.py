"""localkube's controllers and process kubelet with the real kubectl and
helm: a StatefulSet of a tiny test server (e2e/testserver/server.py) whose
pods get distinct loopback IPs and keep their volumes across deletion and
scaling; `kubectl logs`; a Deployment's rolling update; `helm install
--wait` returning once pods are Ready."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from conftest import wait_for

LOCALKUBE = os.environ.get("LOCALKUBE_BIN")
pytestmark = pytest.mark.skipif(
    not LOCALKUBE, reason="LOCALKUBE_BIN is not set (scripts/test.sh sets it)")

SERVER = os.path.join(os.path.dirname(__file__), "..", "..", "e2e", "testserver", "server.py")

POD_ENV = """
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
        ports: [{name: http, containerPort: 8080}]
"""

STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: server
        image: example/server:1.0
        args: [--data, /var/lib/web]
        volumeMounts: [{name: data, mountPath: /var/lib/web}]
""" + POD_ENV + """
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""


@pytest.fixture(scope="module")
def kube():
    work = tempfile.mkdtemp(prefix="localkube-workloads-")
    kubeconfig = os.path.join(work, "kubeconfig")
    images = os.path.join(work, "images.json")
    with open(images, "w") as f:
        json.dump({"example/server": [sys.executable, os.path.abspath(SERVER)],
                   "example/crasher": ["/bin/false"]}, f)
    proc = subprocess.Popen([LOCALKUBE, "--kubeconfig", kubeconfig, "--images", images],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().startswith("localkube ready ")
    yield kubeconfig, work
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(work, ignore_errors=True)


def kubectl(kc, *args, stdin=None):
    r = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=stdin,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def pods(kc, selector):
    return json.loads(kubectl(kc, "get", "pods", "-l", selector, "-o", "json"))["items"]


def ask(pod):
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
        return json.load(r)


def ready_replicas(kc, kind, name):
    return json.loads(kubectl(kc, "get", kind, name, "-o", "json")).get("status", {}).get("readyReplicas", 0)


def test_statefulset_pods_have_addresses_and_keep_their_volumes(kube):
    kc, work = kube
    kubectl(kc, "apply", "-f", "-", stdin=STATEFULSET)
    kubectl(kc, "wait", "--for=jsonpath={.status.readyReplicas}=3", "statefulset/web", "--timeout=90s")
    ps = sorted(pods(kc, "app=web"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["name"] for p in ps] == ["web-0", "web-1", "web-2"]
    ips = [p["status"]["podIP"] for p in ps]
    assert len(set(ips)) == 3 and all(ip.startswith("127.") for ip in ips)
    for p in ps:
        answer = ask(p)
        assert answer["pod"] == p["metadata"]["name"] and answer["ip"] == p["status"]["podIP"]
        assert answer["starts"] == 1
    assert "serving web-0" in kubectl(kc, "logs", "web-0")
    pvcs = kubectl(kc, "get", "pvc", "-o", "name").split()
    assert sorted(pvcs) == [f"persistentvolumeclaim/data-web-{i}" for i in range(3)]

    # A deleted pod comes back with its name, address and volume.
    kubectl(kc, "delete", "pod", "web-1")
    wait_for(lambda: any(p["metadata"]["name"] == "web-1" and p["status"].get("podIP")
                         and ask_ok(p) and ask(p)["starts"] == 2 for p in pods(kc, "app=web")), timeout=90)
    back = [p for p in pods(kc, "app=web") if p["metadata"]["name"] == "web-1"][0]
    assert back["status"]["podIP"] == ips[1]

    # Scale 3 -> 1 -> 3: ordinals and volumes are kept.
    kubectl(kc, "scale", "statefulset", "web", "--replicas=1")
    wait_for(lambda: [p["metadata"]["name"] for p in pods(kc, "app=web")] == ["web-0"], timeout=90)
    assert len(kubectl(kc, "get", "pvc", "-o", "name").split()) == 3, "claims outlive their pods"
    kubectl(kc, "scale", "statefulset", "web", "--replicas=3")
    kubectl(kc, "wait", "--for=jsonpath={.status.readyReplicas}=3", "statefulset/web", "--timeout=90s")
    starts = {p["metadata"]["name"]: ask(p)["starts"] for p in pods(kc, "app=web")}
    assert starts == {"web-0": 1, "web-1": 3, "web-2": 2}

    # A changed template rolls out pod by pod; volumes stay.
    before = json.loads(kubectl(kc, "get", "sts", "web", "-o", "json"))["status"]["updateRevision"]
    kubectl(kc, "set", "env", "statefulset/web", "GREETING=v2")

    def rolled():
        s = json.loads(kubectl(kc, "get", "sts", "web", "-o", "json"))["status"]
        ps = pods(kc, "app=web")
        return (s["updateRevision"] != before and s["currentRevision"] == s["updateRevision"]
                and s.get("readyReplicas") == 3 and len(ps) == 3
                and all(ask_ok(p) and ask(p)["greeting"] == "v2" for p in ps))
    wait_for(rolled, timeout=120)
    starts = {p["metadata"]["name"]: ask(p)["starts"] for p in pods(kc, "app=web")}
    assert starts == {"web-0": 2, "web-1": 4, "web-2": 3}

    # A PVC's directory goes with the PVC.
    kubectl(kc, "scale", "statefulset", "web", "--replicas=2")
    wait_for(lambda: len(pods(kc, "app=web")) == 2, timeout=90)
    claim_dir = os.path.join(work, "localkube-state", "pvc", "default", "data-web-2")
    assert os.path.isdir(claim_dir)
    kubectl(kc, "delete", "pvc", "data-web-2")
    wait_for(lambda: not os.path.exists(claim_dir), timeout=30)


def ask_ok(pod):
    try:
        ask(pod)
        return True
    except OSError:
        return False


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: server
        image: example/server
""" + POD_ENV.replace("        env:\n", "        env:\n        - {name: GREETING, value: %s}\n")


def test_deployment_rolls_out_a_changed_template(kube):
    kc, _ = kube
    kubectl(kc, "apply", "-f", "-", stdin=DEPLOYMENT % "hello")
    kubectl(kc, "wait", "--for=condition=Available", "deployment/api", "--timeout=90s")
    first = {p["metadata"]["name"] for p in pods(kc, "app=api")}
    assert len(first) == 2
    kubectl(kc, "apply", "-f", "-", stdin=DEPLOYMENT % "bonjour")
    wait_for(lambda: (lambda ps: len(ps) == 2 and not ({p["metadata"]["name"] for p in ps} & first)
                      and all(ask_ok(p) and ask(p)["greeting"] == "bonjour" for p in ps))(pods(kc, "app=api")),
             timeout=120)


def test_helm_install_upgrade_uninstall_with_wait(kube, tmp_path):
    kc, _ = kube
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: svc\nversion: 0.1.0\n")
    (chart / "templates" / "deployment.yaml").write_text(
        (DEPLOYMENT % "{{ .Values.greeting }}").replace("name: api", "name: {{ .Release.Name }}")
        .replace("app: api", "app: {{ .Release.Name }}"))
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "crds").mkdir()
    (chart / "crds" / "notes.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "metadata: {name: notes.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n"
        "  names: {plural: notes, singular: note, kind: Note}\n"
        "  versions: [{name: v1, served: true, storage: true,"
        " schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]\n")

    def helm(*args):
        r = subprocess.run(["helm", "--kubeconfig", kc, *args, "--wait", "--timeout", "90s"],
                           capture_output=True, text=True, timeout=150)
        assert r.returncode == 0, r.stderr

    helm("install", "waited", str(chart))
    ps = pods(kc, "app=waited")
    assert len(ps) == 2 and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) for p in ps)
    assert "notes.example.com" in kubectl(kc, "get", "crd", "-o", "name")
    helm("upgrade", "waited", str(chart), "--set", "greeting=bonjour")
    wait_for(lambda: (lambda ps: len(ps) == 2 and all(ask_ok(p) and ask(p)["greeting"] == "bonjour"
                                                       for p in ps))(pods(kc, "app=waited")), timeout=60)
    helm("uninstall", "waited")
    wait_for(lambda: not pods(kc, "app=waited"), timeout=60)


ENV_AND_PROBES = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {MODE: fast, greeting: salut}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: envy, labels: {app: envy}}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{name: scratch, emptyDir: {}}]
  containers:
  - name: server
    image: example/server
    args: [--data, /scratch]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
    ports: [{name: http, containerPort: 8080}]
    envFrom: [{configMapRef: {name: settings}}]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token}}}
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers: [{name: c, image: example/crasher}]
"""


def test_env_sources_probes_and_restarts(kube):
    kc, work = kube
    kubectl(kc, "apply", "-f", "-", stdin=ENV_AND_PROBES)
    kubectl(kc, "wait", "--for=condition=Ready", "pod/envy", "--timeout=60s")
    pod = pods(kc, "app=envy")[0]
    answer = ask(pod)
    assert answer["greeting"] == "salut" and answer["mode"] == "fast"
    assert answer["token"] == "s3cret" and answer["namespace"] == "default"
    # A failing liveness probe restarts the container; its emptyDir stays.
    scratch = os.path.join(work, "localkube-state", "pods", "default", "envy", "volumes", "scratch")
    open(os.path.join(scratch, "unhealthy"), "w").close()

    def restarts(name):
        p = json.loads(kubectl(kc, "get", "pod", name, "-o", "json"))
        return p["status"]["containerStatuses"][0]["restartCount"]
    wait_for(lambda: restarts("envy") >= 1, timeout=60)
    os.remove(os.path.join(scratch, "unhealthy"))
    kubectl(kc, "wait", "--for=condition=Ready", "pod/envy", "--timeout=60s")
    assert ask(pods(kc, "app=envy")[0])["starts"] >= 2
    # A container that exits is restarted with backoff.
    wait_for(lambda: restarts("crasher") >= 2, timeout=60)
    state = json.loads(kubectl(kc, "get", "pod", "crasher", "-o", "json"))["status"]
    assert state["phase"] == "Running" and not state["containerStatuses"][0]["ready"]
    kubectl(kc, "delete", "pod", "envy", "crasher")


SERVICE_AND_JOB = """
apiVersion: v1
kind: Service
metadata: {name: api-svc}
spec:
  selector: {app: api2}
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api2}
spec:
  replicas: 2
  selector: {matchLabels: {app: api2}}
  template:
    metadata: {labels: {app: api2}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: server
        image: example/server
""" + POD_ENV


JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: %(name)s}
spec:
  backoffLimit: %(backoff)d
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: client
        image: example/server
        # `command` replaces the image's entrypoint, as a container runtime
        # does; the Service's variables are in the environment.
        command: [sh, -c]
        args:
        - |
          %(script)s
"""


def test_services_route_to_ready_pods_and_jobs_run_to_completion(kube):
    kc, _ = kube
    kubectl(kc, "apply", "-f", "-", stdin=SERVICE_AND_JOB)
    kubectl(kc, "wait", "--for=condition=Available", "deployment/api2", "--timeout=90s")
    svc = json.loads(kubectl(kc, "get", "service", "api-svc", "-o", "json"))
    ip = svc["spec"]["clusterIP"]
    assert ip.startswith("127.1."), ip
    # The cluster IP reaches the Deployment's pods, round robin.
    seen = set()

    def answered_by_both():
        try:
            with urllib.request.urlopen(f"http://{ip}:80/", timeout=5) as r:
                seen.add(json.load(r)["pod"])
        except OSError:
            return False
        return len(seen) == 2
    wait_for(answered_by_both, timeout=30)
    # A Job's pod reads the Service through its link variables and ends.
    script = ('test "$API_SVC_SERVICE_PORT_WEB" = 80 && python3 -c "import os, urllib.request; '
              'urllib.request.urlopen(\'http://\' + os.environ[\'API_SVC_SERVICE_HOST\'] + \'/\')"')
    kubectl(kc, "apply", "-f", "-", stdin=JOB % {"name": "ok", "backoff": 2, "script": script})
    kubectl(kc, "wait", "--for=condition=complete", "job/ok", "--timeout=60s")
    job = json.loads(kubectl(kc, "get", "job", "ok", "-o", "json"))
    assert job["status"]["succeeded"] == 1 and job["status"].get("failed", 0) == 0
    done = pods(kc, "job-name=ok")
    assert len(done) == 1 and done[0]["status"]["phase"] == "Succeeded"
    assert done[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # A failing Job is retried backoffLimit times, then Failed.
    kubectl(kc, "apply", "-f", "-", stdin=JOB % {"name": "bad", "backoff": 1, "script": "exit 3"})
    kubectl(kc, "wait", "--for=condition=failed", "job/bad", "--timeout=60s")
    failed = pods(kc, "job-name=bad")
    assert len(failed) == 2 and all(p["status"]["phase"] == "Failed" for p in failed)
