"""Three `sluice serve` processes sharing their metadata through Kubernetes
objects (`--metadata kubernetes`: Topics and Leases), against localkube's API server: the
Kubernetes coordination backend carrying a real cluster, including a leader
killed with SIGKILL and its replacement elected through the API server."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import install_crds, read_ready, wait_for

LOCALKUBE = os.environ.get("LOCALKUBE_BIN")
pytestmark = pytest.mark.skipif(
    not LOCALKUBE, reason="LOCALKUBE_BIN is not set (scripts/test.sh sets it)")


class ServeNode:
    def __init__(self, node_id, data_dir, kubeconfig):
        self.id = node_id
        self.data_dir = data_dir
        self.kubeconfig = kubeconfig
        self.kafka = "127.0.0.1:0"
        self.admin = "127.0.0.1:0"
        self.proc = None

    def start(self):
        binary = os.environ.get("SLUICE_BIN", "sluice")
        self.proc = subprocess.Popen(
            [binary, "serve", "--node-id", str(self.id), "--listen", self.kafka,
             "--admin-listen", self.admin, "--replication-listen", "127.0.0.1:0",
             "--data-dir", self.data_dir, "--metadata", "kubernetes",
             "--namespace", "default", "--cluster-name", "e2e", "--expected-nodes", "3",
             "--controller",
             "--lease-duration-ms", "2000", "--replica-lag-time-max-ms", "2000",
             "--auto-create-topics", "true", "--default-replication-factor", "3"],
            stdout=subprocess.PIPE, stderr=None, text=True,
            env={**os.environ, "KUBECONFIG": self.kubeconfig,
                 "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        fields = read_ready(self.proc, "sluice ready ")
        self.kafka, self.admin = fields["kafka"], fields["admin"]
        return self

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def kube_cluster():
    work = tempfile.mkdtemp(prefix="sluice-kube-")
    kubeconfig = os.path.join(work, "kubeconfig")
    lk = subprocess.Popen([LOCALKUBE, "--kubeconfig", kubeconfig],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = read_ready(lk, "localkube ready ")["url"]
    install_crds(kubeconfig)
    nodes = [ServeNode(i, os.path.join(work, f"node-{i}"), kubeconfig).start() for i in range(3)]
    yield url, nodes
    for n in nodes:
        n.kill9()
    lk.kill()
    lk.wait()
    shutil.rmtree(work, ignore_errors=True)


def leases(url):
    q = "labelSelector=sluice.io/cluster%3De2e"
    with urllib.request.urlopen(f"{url}/apis/coordination.k8s.io/v1/namespaces/default/leases?{q}") as r:
        return json.load(r)["items"]


def test_a_cluster_runs_on_lease_objects_and_fails_over(kube_cluster):
    url, nodes = kube_cluster
    bootstrap = ",".join(n.kafka for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Each node reads leases from its own watch cache: wait until every one
    # has seen all three (a just-started node may be a moment behind).
    for n in nodes:
        one = AdminClient({"bootstrap.servers": n.kafka})
        wait_for(lambda: len(one.list_topics(timeout=10).brokers) == 3)
    admin.create_topics([NewTopic("k", 1, 3, config={"min.insync.replicas": "2"})])["k"].result(30)

    def part():
        # A metadata request may time out while it was in flight to the
        # node just killed; the next one goes to a live node.
        for _ in range(5):
            try:
                return admin.list_topics(topic="k", timeout=10).topics["k"].partitions[0]
            except KafkaException:
                continue
        raise AssertionError("no metadata from any live node")

    wait_for(lambda: len(part().isrs) == 3)
    # The metadata is in the API server: a Topic object per topic, a Lease
    # per node and per partition.
    kinds = [l["metadata"]["labels"]["sluice.io/kind"] for l in leases(url)]
    assert kinds.count("node") == 3
    with urllib.request.urlopen(f"{url}/apis/sluice.dev/v1alpha1/namespaces/default/topics") as r:
        topics = json.load(r)["items"]
    names = {t["spec"].get("topicName", t["metadata"]["name"]) for t in topics}
    assert "k" in names, names
    record = [l for l in leases(url) if l["metadata"]["labels"]["sluice.io/kind"] == "partition"
              and json.loads(l["metadata"]["annotations"]["sluice.io/value"])["topic"] == "k"][0]
    assert record["spec"]["holderIdentity"] == str(part().leader)

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "message.timeout.ms": 60000})
    for i in range(1000):
        p.produce("k", value=f"a{i}".encode(), partition=0)
    assert p.flush(60) == 0

    leader = part().leader
    nodes[leader].kill9()
    wait_for(lambda: part().leader not in (leader, -1), timeout=60)
    assert leader not in part().isrs
    for i in range(1000):
        p.produce("k", value=f"b{i}".encode(), partition=0)
    assert p.flush(60) == 0

    nodes[leader].start()
    wait_for(lambda: len(part().isrs) == 3, timeout=60)

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kube-check",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("k", 0, 0)])
    seen = []
    while len(seen) < 2000:
        for m in c.consume(1000, timeout=5):
            assert m.error() is None, m.error()
            seen.append(m.value().decode())
    c.close()
    assert seen == [f"a{i}" for i in range(1000)] + [f"b{i}" for i in range(1000)]
