"""The operator end to end on localkube: its kubelet runs the real `sluice`
binary as the StatefulSet's pods, two `sluice-operator` processes campaign
for the controller lock, and everything is driven the way a user drives it:
`kubectl apply` of Topics, then librdkafka clients against the pods.

Scenarios (one cluster of three zones, in order, each lean): the node
cluster comes up, each node with its zone as its rack;
a 12-partition RF=3 Topic becomes Ready and takes 100,000 idempotent
acks=all records that read back intact; partitions are raised; a topic a
Kafka client creates appears as a Topic object, and one deleted with
kubectl leaves Metadata; bad objects get conditions; the leader pod of a
partition is killed under load and a new leader takes over with every
acknowledged record present once; another leader hangs (SIGSTOP) and is
replaced when its lease lapses; a restart rolls every node one at a time,
waiting while a node is out of the ISR; the active operator is killed and the
standby leads; a consumer group's members, lag and an offset reset show
in its ConsumerGroup object; the cluster scales 3 -> 5 -> 3 under load (a
fair share moves onto the new nodes; replicas drain before the StatefulSet
shrinks); a template change rolls every node under load; a scale-down below
a topic's replication factor is refused.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient

from conftest import install_crds, read_ready, wait_for

LOCALKUBE = os.environ.get("LOCALKUBE_BIN")
OPERATOR = os.environ.get("SLUICE_OPERATOR_BIN")
pytestmark = pytest.mark.skipif(
    not (LOCALKUBE and OPERATOR),
    reason="LOCALKUBE_BIN and SLUICE_OPERATOR_BIN are not set (scripts/test.sh sets them)")

IMAGE = "ghcr.io/sluice-streaming/sluice"


class Env:
    def __init__(self, work):
        self.work = work
        self.kubeconfig = os.path.join(work, "kubeconfig")
        images = os.path.join(work, "images.json")
        with open(images, "w") as f:
            json.dump({IMAGE: [os.environ.get("SLUICE_BIN", "sluice")]}, f)
        self.kube = subprocess.Popen(
            [LOCALKUBE, "--kubeconfig", self.kubeconfig, "--images", images,
             "--zones", "zone-a,zone-b,zone-c"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "warn"})
        read_ready(self.kube, "localkube ready ")
        install_crds(self.kubeconfig)
        self.operators = {}

    def kubectl(self, *args, check=True, stdin=None):
        r = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=stdin,
                           capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def get(self, *args):
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def start_operator(self, name, *settings):
        """Starts an operator replica; `settings` (`key=value`) override
        the defaults below, as a changed settings file would."""
        base = {"advertise": "podIp", "minNodes": "3", "maxNodes": "5",
                "controllerLeaseMs": "3000", "statusIntervalMs": "1000",
                "rackTopologyKey": "topology.kubernetes.io/zone",
                "groupStatusIntervalMs": "2000",
                # These tests are about placement, roll and groups: the
                # nodes in the clear (the e2e suite runs the secure default).
                "security": "{tls: none, authentication: none, authorizer: false}"}
        base.update(dict(s.split("=", 1) for s in settings))
        sets = [a for k, v in base.items() for a in ("--set", f"{k}={v}")]
        proc = subprocess.Popen(
            [OPERATOR, "--kubeconfig", self.kubeconfig, "--namespace", "default",
             "--identity", name, "--metrics-listen", "127.0.0.1:0", *sets],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, f"{name}.log"), "w"),
            text=True, env={**os.environ, "RUST_LOG": "info,kube=warn"})
        read_ready(proc, "sluice-operator ready ")
        self.operators[name] = proc
        return proc

    def replace_operators(self, name, *settings):
        """What `helm upgrade` with new settings does: a new replica starts,
        the old ones stop, and the new one leads."""
        self.start_operator(name, *settings)
        for n, p in list(self.operators.items()):
            if n != name and p.poll() is None:
                p.terminate()
                p.wait(30)
        wait_for(lambda: self.leader() == name or None, timeout=30)

    def leader(self):
        lease = self.get("lease", "sluice-controller")
        return lease["spec"]["holderIdentity"]

    def bootstrap(self):
        pods = self.get("pods", "-l", "app.kubernetes.io/instance=sluice")["items"]
        return ",".join(f"{p['status']['podIP']}:9092" for p in pods if p["status"].get("podIP"))

    def stop(self):
        for p in self.operators.values():
            p.kill()
            p.wait()
        self.kube.kill()
        self.kube.wait()


@pytest.fixture(scope="module")
def env():
    work = tempfile.mkdtemp(prefix="sluice-operator-")
    e = Env(work)
    yield e
    e.stop()
    if os.environ.get("SLUICE_KEEP_WORK"):
        print(f"operator test state and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def condition(topic, kind):
    for c in (topic.get("status") or {}).get("conditions", []):
        if c["type"] == kind:
            return c
    return None


def topic_yaml(name, partitions, rf, extra=""):
    return (f"apiVersion: sluice.dev/v1alpha1\nkind: Topic\nmetadata: {{name: {name}}}\n"
            f"spec:\n  partitions: {partitions}\n  replicationFactor: {rf}\n{extra}")


def ready(env, name):
    t = env.get("topic", name)
    c = condition(t, "Ready")
    return t if c and c["status"] == "True" and t["status"].get("observedGeneration") == \
        t["metadata"]["generation"] else None


def test_the_node_cluster_comes_up_under_an_elected_operator(env):
    env.start_operator("op-a")
    env.start_operator("op-b")
    wait_for(lambda: env.kubectl("get", "lease", "sluice-controller", check=False).returncode == 0,
             timeout=30)
    sts = wait_for(lambda: (lambda s: s if s.get("status", {}).get("readyReplicas") == 3 else None)(
        env.get("statefulset", "sluice-node")), timeout=120)
    assert sts["metadata"]["ownerReferences"][0]["name"] == "sluice-operator"
    for kind, name in [("service", "sluice"), ("service", "sluice-nodes"),
                       ("pdb", "sluice-node"), ("serviceaccount", "sluice-node"),
                       ("role", "sluice-node"), ("rolebinding", "sluice-node")]:
        env.get(kind, name)
    assert env.leader() in ("op-a", "op-b")
    # Each node took its rack from the zone label of the Kubernetes node
    # its pod was scheduled on, and tells Kafka clients.
    env.get("clusterrolebinding", "sluice-node-racks-default")
    pods = env.get("pods", "-l", "app.kubernetes.io/instance=sluice")["items"]
    zone_of = {n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"]
               for n in env.get("nodes")["items"]}
    want = {int(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"]):
            zone_of[p["spec"]["nodeName"]] for p in pods}
    assert sorted(want.values()) == ["zone-a", "zone-b", "zone-c"]
    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap().split(","))
    try:
        # kafka-python 2 names the id node_id, 3 broker_id.
        racks = {b.get("node_id", b.get("broker_id")): b["rack"]
                 for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()
    assert racks == want


def test_a_topic_applied_becomes_ready_and_keeps_every_record(env):
    started = time.monotonic()
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("orders", 12, 3))
    t = wait_for(lambda: ready(env, "orders"), timeout=90)
    print(f"operator: 12-partition RF=3 Topic Ready in {time.monotonic() - started:.1f} s")
    assert len(t["status"]["partitions"]) == 12
    assert all(len(p["isr"]) == 3 and p["leader"] is not None for p in t["status"]["partitions"])
    assert t["status"]["topicId"]
    bootstrap = env.bootstrap()
    acked = []
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})

    def done(err, msg):
        assert err is None, err
        acked.append((msg.partition(), msg.offset(), msg.value()))
    for i in range(100_000):
        while True:
            try:
                p.produce("orders", key=str(i).encode(), value=b"v%d" % i, on_delivery=done)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0
    assert len(acked) == 100_000
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "orders-check",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("orders", i, 0) for i in range(12)])
    seen = {}
    deadline = time.monotonic() + 120
    while len(seen) < 100_000 and time.monotonic() < deadline:
        for m in c.consume(5000, timeout=1):
            if m.error() is None:
                seen[(m.partition(), m.offset())] = m.value()
    c.close()
    assert seen == {(part, off): v for part, off, v in acked}


def test_partitions_are_raised_and_never_lowered(env):
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("orders", 16, 3))
    t = wait_for(lambda: (lambda t: t if t and len(t["status"]["partitions"]) == 16 else None)(
        ready(env, "orders")), timeout=60)
    md = AdminClient({"bootstrap.servers": env.bootstrap()}).list_topics("orders", timeout=10)
    assert len(md.topics["orders"].partitions) == 16
    bad = env.kubectl("apply", "-f", "-", check=False,
                      stdin=topic_yaml("orders", 8, 3))
    assert "partitions may not decrease" in bad.stderr
    assert t["spec"]["partitions"] == 16


def test_kafka_clients_and_kubectl_share_one_topic_store(env):
    admin = AdminClient({"bootstrap.servers": env.bootstrap()})
    admin.create_topics([NewTopic("From_Kafka", 2, 1)])["From_Kafka"].result(30)
    # The Kafka name is not a valid object name: the object carries it.
    objs = wait_for(lambda: [t for t in env.get("topics")["items"]
                             if t["spec"].get("topicName") == "From_Kafka"] or None, timeout=30)
    assert objs[0]["spec"]["partitions"] == 2
    name = objs[0]["metadata"]["name"]
    wait_for(lambda: ready(env, name), timeout=60)
    held = lambda: [p for p in env.get("pods", "-l", "app.kubernetes.io/instance=sluice")["items"]
                    if 'topic="From_Kafka"' in metrics_of(p)]
    assert held(), "no node reports the topic's data"
    env.kubectl("delete", "topic", name, "--wait=false")
    wait_for(lambda: "From_Kafka" not in admin.list_topics(timeout=10).topics or None, timeout=60)
    # The finalizer lets the object go once every node dropped the data.
    wait_for(lambda: env.kubectl("get", "topic", name, check=False).returncode != 0, timeout=60)
    assert not held()


def metrics_of(pod):
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:9644/metrics", timeout=10) as r:
        return r.read().decode()


def test_the_replication_factor_changes_with_the_data_intact(env):
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("grow", 2, 1))
    wait_for(lambda: ready(env, "grow"), timeout=60)
    bootstrap = env.bootstrap()
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(1000):
        p.produce("grow", value=b"g%d" % i, partition=i % 2)
    assert p.flush(60) == 0
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("grow", 2, 3))
    t = wait_for(lambda: (lambda t: t if t and all(len(x["replicas"]) == 3 and len(x["isr"]) == 3
                                                   for x in t["status"]["partitions"]) else None)(
        ready(env, "grow")), timeout=90)
    # Every replica has it all: read each partition from its new leader.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "grow-check",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("grow", 0, 0), TopicPartition("grow", 1, 0)])
    got = set()
    deadline = time.monotonic() + 60
    while len(got) < 1000 and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1):
            if m.error() is None:
                got.add(m.value())
    c.close()
    assert got == {b"g%d" % i for i in range(1000)}
    # Then down to two: the extra replicas leave.
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("grow", 2, 2))
    wait_for(lambda: (lambda t: t if t and all(len(x["replicas"]) == 2
                                               for x in t["status"]["partitions"]) else None)(
        ready(env, "grow")), timeout=90)


class Load:
    """An idempotent acks=all producer writing to one partition until
    stopped, remembering when each acknowledged record was sent and acked."""

    def __init__(self, bootstrap, topic, partition):
        self.acked, self.lock, self.halt = [], threading.Lock(), threading.Event()
        self.failed = []
        self.topic, self.partition = topic, partition
        # A daemon: a failed test does not leave the run hanging on it.
        self.thread = threading.Thread(target=self.run, args=(bootstrap,), daemon=True)
        self.thread.start()

    def run(self, bootstrap):
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "acks": "all", "linger.ms": 2, "topic.metadata.refresh.interval.ms": 500})
        i = 0
        while not self.halt.is_set():
            sent = time.monotonic()

            def done(err, msg, sent=sent):
                with self.lock:
                    if err is None:
                        self.acked.append((time.monotonic(), sent, msg.offset(), msg.value()))
                    else:
                        self.failed.append((time.monotonic(), str(err)))
            try:
                p.produce(self.topic, value=b"p%d-%d" % (self.partition, i),
                          partition=self.partition, on_delivery=done)
                i += 1
            except BufferError:
                pass
            p.poll(0.001)
        p.flush(60)

    def first_ack_sent_after(self, t):
        with self.lock:
            return next((a[0] for a in self.acked if a[1] > t), None)

    def stop(self):
        self.halt.set()
        self.thread.join(90)

    def verify(self, bootstrap):
        """Every acknowledged record is at its offset, once."""
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "load-check",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.assign([TopicPartition(self.topic, self.partition, 0)])
        held = {}
        want = {(off, v) for _, _, off, v in self.acked}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not want <= set(held.items()):
            for m in c.consume(5000, timeout=1):
                if m.error() is None:
                    held[m.offset()] = m.value()
        c.close()
        assert want <= set(held.items())
        values = list(held.values())
        assert len(values) == len(set(values)), "a record is there twice"


def all_nodes_ready(env):
    return wait_for(lambda: (lambda s: s if s.get("status", {}).get("readyReplicas") == 3 else None)(
        env.get("statefulset", "sluice-node")), timeout=120)


def new_leader(env, topic, partition, old):
    return wait_for(lambda: (lambda p: p if p["leader"] not in (None, old) else None)(
        env.get("topic", topic)["status"]["partitions"][partition]), timeout=60)


def test_a_killed_leader_pod_is_replaced_by_an_in_sync_replica(env):
    before = ready(env, "orders")["status"]["partitions"][0]
    load = Load(env.bootstrap(), "orders", 0)
    wait_for(lambda: len(load.acked) > 1000 or None, timeout=30)
    killed = time.monotonic()
    env.kubectl("delete", "pod", f"sluice-node-{before['leader']}", "--grace-period=0", "--force",
                "--wait=false")
    gone = time.monotonic()
    after = new_leader(env, "orders", 0, before["leader"])
    assert after["leaderEpoch"] > before["leaderEpoch"]
    # The first acknowledgement of a record sent once the pod was gone.
    first = wait_for(lambda: load.first_ack_sent_after(gone), timeout=60)
    print(f"operator: leader pod killed -> first acks=all ack of a record sent after it in "
          f"{first - killed:.1f} s (new leader {after['leader']}, epoch {after['leaderEpoch']})")
    wait_for(lambda: len([a for a in load.acked if a[1] > gone]) > 100 or None, timeout=30)
    load.stop()
    # The pod comes back and catches up; every acknowledged record is there once.
    all_nodes_ready(env)
    load.verify(env.bootstrap())


def pid_of(pod):
    """The process the kubelet runs for `pod` (found by its POD_NAME)."""
    want = f"POD_NAME={pod}".encode()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        return int(d)
            except OSError:
                pass
    return None


def test_a_hung_leader_is_replaced_when_its_lease_lapses(env):
    """The leader's process stops (SIGSTOP: no crash, no restart, nothing
    for the operator to see but silence). Its lease lapses, the controller
    elects an in-sync replica, and when the old process resumes it has
    fenced itself: it follows, and no acknowledged record is lost or
    doubled."""
    before = ready(env, "orders")["status"]["partitions"][1]
    pid = wait_for(lambda: pid_of(f"sluice-node-{before['leader']}"), timeout=30)
    load = Load(env.bootstrap(), "orders", 1)
    wait_for(lambda: len(load.acked) > 1000 or None, timeout=30)
    stopped = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        after = new_leader(env, "orders", 1, before["leader"])
        elected = time.monotonic()
        assert after["leaderEpoch"] > before["leaderEpoch"]
        # The load's producer has requests in flight to the hung node and
        # waits out its request.timeout.ms (30 s) before it moves on, as
        # against Kafka. A client not stuck on the hung node is served by
        # the new leader:
        live = ",".join(f"{p['status']['podIP']}:9092" for p in
                        env.get("pods", "-l", "app.kubernetes.io/instance=sluice")["items"]
                        if p["metadata"]["name"] != f"sluice-node-{before['leader']}")
        probe = Producer({"bootstrap.servers": live, "acks": "all", "enable.idempotence": True})
        got = []
        probe.produce("orders", value=b"probe", partition=1,
                      on_delivery=lambda err, msg: got.append((time.monotonic(), err)))
        probe.flush(30)
        assert got and got[0][1] is None, got
        print(f"operator: leader hung (SIGSTOP) -> new leader {after['leader']} "
              f"(epoch {after['leaderEpoch']}) in the Topic's status after "
              f"{elected - stopped:.1f} s (its lease lapsed); a new client's first acks=all "
              f"ack from it {got[0][0] - stopped:.1f} s after the hang")
    finally:
        os.kill(pid, signal.SIGCONT)
    # The old leader rejoins as a follower and the partition is whole again.
    wait_for(lambda: (lambda p: p if sorted(p["isr"]) == sorted(p["replicas"]) else None)(
        env.get("topic", "orders")["status"]["partitions"][1]), timeout=60)
    assert env.get("topic", "orders")["status"]["partitions"][1]["leader"] == after["leader"]
    load.stop()
    load.verify(env.bootstrap())


def group_yaml(name, reset=""):
    return (f"apiVersion: sluice.dev/v1alpha1\nkind: ConsumerGroup\nmetadata: {{name: {name}}}\n"
            f"spec:\n  groupId: {name}\n{reset}")


class Readers:
    """Consumers of one group, each polling in its own thread."""

    def __init__(self, bootstrap, group, topic, n, reset="earliest"):
        self.seen, self.lock, self.halt = [], threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(bootstrap, group, topic, i, reset))
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, bootstrap, group, topic, i, reset):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": f"reader-{i}",
                      "auto.offset.reset": reset, "auto.commit.interval.ms": 200})
        c.subscribe([topic])
        while not self.halt.is_set():
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                with self.lock:
                    self.seen.append((m.partition(), m.offset()))
        c.close()

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(60)


def group_status(env, name, check):
    last = {}

    def probe():
        last["status"] = env.get("consumergroup", name).get("status") or {}
        return last["status"] if check(last["status"]) else None
    try:
        return wait_for(probe, timeout=90)
    except AssertionError:
        raise AssertionError(f"ConsumerGroup {name} status never matched; last: {last}")


def test_a_consumer_group_shows_members_and_lag_and_takes_an_offset_reset(env):
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("clicks", 6, 3))
    wait_for(lambda: ready(env, "clicks"), timeout=60)
    bootstrap = env.bootstrap()
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(3000):
        p.produce("clicks", key=b"%d" % i, value=b"c%d" % i)
    assert p.flush(60) == 0
    env.kubectl("apply", "-f", "-", stdin=group_yaml("clicks-readers"))
    readers = Readers(bootstrap, "clicks-readers", "clicks", 3)
    try:
        wait_for(lambda: len(readers.seen) >= 3000 or None, timeout=60)
        caught_up = time.monotonic()
        st = group_status(env, "clicks-readers", lambda st: st.get("memberCount") == 3
                          and st.get("totalLag") == 0 and len(st.get("offsets", [])) == 6)
        print(f"operator: ConsumerGroup status shows lag 0 {time.monotonic() - caught_up:.1f} s "
              f"after the consumers caught up (groupStatusIntervalMs=2000)")
        assert st["state"] == "Stable"
        assigned = sorted(p for m in st["members"] for p in m["partitions"])
        assert assigned == [f"clicks-{i}" for i in range(6)]
        assert {m["clientId"] for m in st["members"]} == {"reader-0", "reader-1", "reader-2"}
        lines = env.kubectl("get", "scg", "clicks-readers").stdout.splitlines()
        assert lines[0].split()[:4] == ["NAME", "STATE", "MEMBERS", "LAG"], lines
        # A reset asked for while the group has members waits, and says why.
        env.kubectl("apply", "-f", "-", stdin=group_yaml(
            "clicks-readers", "  offsetReset: {to: earliest}\n"))
        st = group_status(env, "clicks-readers", lambda st: condition_of(st, "OffsetReset"))
        assert condition_of(st, "OffsetReset")["reason"] == "GroupNotEmpty", st
    finally:
        readers.stop()
    # Once the consumers have left, it is applied: every partition at 0.
    st = group_status(env, "clicks-readers", lambda st: (condition_of(st, "OffsetReset") or {})
                      .get("status") == "True")
    assert {(o["partition"], o["offset"]) for o in st["lastOffsetReset"]["offsets"]} == \
        {(i, 0) for i in range(6)}
    # One consumer comes back (its own default would be the end): it
    # replays every partition from offset 0.
    again = Readers(bootstrap, "clicks-readers", "clicks", 1, reset="latest")
    try:
        first = wait_for(lambda: (lambda seen: seen if len(seen) == 6 else None)(
            {p: o for p, o in reversed(list(again.seen))}), timeout=60)
        assert all(o == 0 for o in first.values()), first
    finally:
        again.stop()


def condition_of(status, kind):
    return condition({"status": status}, kind)


def node_pods(env):
    return {p["metadata"]["name"]: p for p in
            env.get("pods", "-l", "app.kubernetes.io/instance=sluice")["items"]}


def events_on_owner(env, reason):
    evs = env.get("events.events.k8s.io")["items"]
    mine = [e for e in evs if e.get("reason") == reason
            and (e.get("regarding") or {}).get("name") == "sluice-operator"]
    return sorted(mine, key=lambda e: e.get("eventTime") or "")


def wait_rolled(env, uids, old_revision=None):
    """Waits until every node pod was replaced (its uid is not in `uids`)
    and runs the StatefulSet's update revision, Ready; returns the order
    the pods were replaced in."""
    order = []

    def rolled():
        pods = node_pods(env)
        for n, p in sorted(pods.items()):
            if p["metadata"]["uid"] != uids.get(n) and n not in order:
                order.append(n)
        new = env.get("statefulset", "sluice-node")["status"]["updateRevision"]
        return new != old_revision and len(pods) == 3 and all(
            p["metadata"]["uid"] != uids.get(n)
            and p["metadata"]["labels"].get("controller-revision-hash") == new
            and condition(p, "Ready") and condition(p, "Ready")["status"] == "True"
            for n, p in pods.items()) or None
    wait_for(rolled, timeout=240)
    return order


def test_a_restart_rolls_every_node_one_at_a_time_never_below_the_isr(env):
    """`sluice.dev/restart` on the StatefulSet rolls every node under an
    acks=all load: not while a node is out of the ISR, then one at a
    time, highest ordinal first, each handing its leaderships over before
    it stops; every acknowledged record is there once."""
    all_nodes_ready(env)
    wait_for(lambda: ready(env, "orders"), timeout=60)
    load = Load(env.bootstrap(), "orders", 2)
    wait_for(lambda: len(load.acked) > 500 or None, timeout=30)
    uids = {n: p["metadata"]["uid"] for n, p in node_pods(env).items()}
    # Hold node 0 out: it stops answering, leaves the ISRs, is not Ready.
    pid = wait_for(lambda: pid_of("sluice-node-0"), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: any(0 not in p["isr"] for p in
                             env.get("topic", "orders")["status"]["partitions"]) or None, timeout=30)
        started = time.monotonic()
        env.kubectl("annotate", "statefulset", "sluice-node", "sluice.dev/restart=1", "--overwrite")
        waited = wait_for(lambda: events_on_owner(env, "RollWaiting") or None, timeout=30)
        assert {n: p["metadata"]["uid"] for n, p in node_pods(env).items()} == uids, \
            "a node restarted while another was out of the ISR"
        print(f"operator: roll waits: {waited[-1].get('note')}")
    finally:
        os.kill(pid, signal.SIGCONT)
    # Then every node restarts, one at a time.
    order = wait_rolled(env, uids)
    wait_for(lambda: ready(env, "orders"), timeout=60)
    took = time.monotonic() - started
    assert order == ["sluice-node-2", "sluice-node-1", "sluice-node-0"], order
    assert events_on_owner(env, "Restarting")
    wait_for(lambda: len([a for a in load.acked if a[1] > started + took]) > 100 or None, timeout=30)
    load.stop()
    acks = sorted(a[0] for a in load.acked if started <= a[0])
    stall = max(b - a for a, b in zip(acks, acks[1:]))
    print(f"operator: rolled 3 nodes under an acks=all load in {took:.1f} s "
          f"(with a node held out of the ISR first); longest gap between acks {stall:.2f} s")
    load.verify(env.bootstrap())


def test_a_bad_topic_is_a_condition_and_the_rest_goes_on(env):
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("too-wide", 1, 7))
    t = wait_for(lambda: (lambda t: t if condition(t, "Degraded") and
                          condition(t, "Degraded")["status"] == "True" else None)(
        env.get("topic", "too-wide")), timeout=60)
    assert "above maxNodes (5)" in condition(t, "Degraded")["message"]
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("fine", 1, 1))
    wait_for(lambda: ready(env, "fine"), timeout=60)
    env.kubectl("delete", "topic", "too-wide", "fine", "--wait=false")


def test_the_standby_operator_leads_when_the_active_one_dies(env):
    active = env.leader()
    standby = ({"op-a", "op-b"} - {active}).pop()
    killed = time.monotonic()
    env.operators[active].kill()
    wait_for(lambda: env.leader() == standby or None, timeout=30)
    print(f"operator: standby leads {time.monotonic() - killed:.1f} s after the active one died")
    # And it reconciles: a new Topic becomes Ready under it.
    env.kubectl("apply", "-f", "-", stdin=topic_yaml("after-failover", 3, 3))
    wait_for(lambda: ready(env, "after-failover"), timeout=60)


def metric(pod, name):
    """The sum of a metric's samples on a node pod."""
    total = 0.0
    for line in metrics_of(pod).splitlines():
        if line.startswith(name) and line.split("{")[0].split(" ")[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def replica_map(bootstrap):
    """Every partition's (replicas, ISR), internal topics included, as a
    Kafka client's Metadata shows them."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {(t, p): (sorted(pm.replicas), sorted(pm.isrs))
            for t, tm in md.topics.items() for p, pm in tm.partitions.items()}


def statefulset_at(env, n):
    def check():
        sts = env.get("statefulset", "sluice-node")
        pods = node_pods(env)
        return sts if sts["spec"]["replicas"] == n and \
            sts.get("status", {}).get("readyReplicas") == n and len(pods) == n else None
    return wait_for(check, timeout=180)


def zones_of(env):
    """Each node's zone (its rack), by ordinal."""
    zone = {n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"]
            for n in env.get("nodes")["items"]}
    return {int(name.rsplit("-", 1)[1]): zone[p["spec"]["nodeName"]]
            for name, p in node_pods(env).items()}


def balanced_over(env, nodes):
    """Every partition whole on `nodes`, and each topic's replicas spread
    evenly over the nodes of each zone (placement keeps one replica per
    zone where it can, so a zone with one node holds more); the map when
    so."""
    zones = zones_of(env)

    def check():
        try:
            m = replica_map(env.bootstrap())
        except Exception:
            return None
        per_topic = {}
        for (t, _), (replicas, isr) in m.items():
            if replicas != isr or not set(replicas) <= set(nodes):
                return None
            load = per_topic.setdefault(t, {n: 0 for n in nodes})
            for r in replicas:
                load[r] += 1
        for load in per_topic.values():
            for z in set(zones[n] for n in nodes):
                in_zone = [load[n] for n in nodes if zones[n] == z]
                if max(in_zone) - min(in_zone) > 1:
                    return None
        return m
    return wait_for(check, timeout=240, interval=0.5)


def test_scaling_3_to_5_to_3_moves_only_a_fair_share_and_drains_before_shrinking(env):
    """minNodes 3 -> 5 -> 3 (as `helm upgrade` changes it) under idempotent
    acks=all loads on an RF=3, min.insync.replicas=2 topic: the new nodes
    get their fair share and no more; going back, replicas leave nodes 3-4
    before the StatefulSet shrinks; no record fails, every acknowledged one
    is there once."""
    env.kubectl("apply", "-f", "-", stdin=topic_yaml(
        "scale", 6, 3, "  config:\n    min.insync.replicas: \"2\"\n"))
    wait_for(lambda: ready(env, "scale"), timeout=60)
    statefulset_at(env, 3)
    loads = [Load(env.bootstrap(), "scale", p) for p in range(3)]
    wait_for(lambda: all(len(l.acked) > 2000 for l in loads) or None, timeout=60)
    before = balanced_over(env, [0, 1, 2])

    started = time.monotonic()
    env.replace_operators("op-c", "minNodes=5")
    statefulset_at(env, 5)
    after = balanced_over(env, [0, 1, 2, 3, 4])
    up = time.monotonic() - started
    moved = sum(len(set(after[k][0]) - set(before[k][0])) for k in before)
    # Each move lands on a new node, and the new nodes end with their share
    # of their zone (balanced_over): the fewest moves that balance it.
    landed = sum(len(set(after[k][0]) - set(before[k][0]) - {3, 4}) for k in before)
    on_new = sum(1 for k in after for r in after[k][0] if r in (3, 4))
    pods = node_pods(env)
    fetched = sum(metric(pods[f"sluice-node-{n}"], "sluice_reassignment_fetched_bytes_total")
                  for n in (3, 4))
    held = sum(metric(pods[f"sluice-node-{n}"], "sluice_log_size_bytes") for n in range(5))
    print(f"operator: scale 3 -> 5 settled in {up:.1f} s: {moved} of "
          f"{sum(len(r) for r, _ in after.values())} replicas moved, all onto the new nodes "
          f"(their share of their zones); they fetched {fetched / 2**20:.1f} MiB under the "
          f"throttle, of {held / 2**20:.1f} MiB of replicas on the five nodes "
          f"(zones {zones_of(env)})")
    assert landed == 0 and moved == on_new, (landed, moved, on_new)
    assert fetched > 0

    started = time.monotonic()
    env.replace_operators("op-d", "minNodes=3")
    draining = wait_for(lambda: events_on_owner(env, "Draining") or None, timeout=60)
    statefulset_at(env, 3)
    down = time.monotonic() - started
    drained = events_on_owner(env, "Drained")
    assert drained, "the StatefulSet shrank without the drain finishing"
    final = balanced_over(env, [0, 1, 2])
    assert all(set(r) <= {0, 1, 2} for r, _ in final.values())
    for l in loads:
        l.stop()
    print(f"operator: scale 5 -> 3 in {down:.1f} s (waited: {draining[0].get('note')})")
    acks = sorted(a[0] for l in loads for a in l.acked if a[0] >= started - up)
    stall = max(b - a for a, b in zip(acks, acks[1:]))
    print(f"operator: longest gap between acks while scaling {stall:.2f} s")
    for l in loads:
        assert not l.failed, l.failed[:5]
        l.verify(env.bootstrap())
    # The PVCs of nodes 3 and 4 stay (StatefulSets keep them), holding
    # nothing any partition needs: every replica is on nodes 0-2.
    pvcs = [c["metadata"]["name"] for c in env.get("pvc")["items"]]
    print(f"operator: PVCs kept after the scale-down: {sorted(pvcs)}")


def test_a_template_change_rolls_every_node_under_load(env):
    """New container resources (a template change, as `helm upgrade` makes
    one) roll every node one at a time under an acks=all load."""
    statefulset_at(env, 3)
    wait_for(lambda: ready(env, "scale"), timeout=60)
    uids = {n: p["metadata"]["uid"] for n, p in node_pods(env).items()}
    revision = env.get("statefulset", "sluice-node")["status"]["updateRevision"]
    load = Load(env.bootstrap(), "scale", 3)
    wait_for(lambda: len(load.acked) > 500 or None, timeout=30)
    started = time.monotonic()
    env.replace_operators("op-e", "requests={cpu: 50m}")
    order = wait_rolled(env, uids, revision)
    wait_for(lambda: ready(env, "scale"), timeout=60)
    took = time.monotonic() - started
    assert order == ["sluice-node-2", "sluice-node-1", "sluice-node-0"], order
    pod = node_pods(env)["sluice-node-0"]
    assert pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "50m"
    wait_for(lambda: len([a for a in load.acked if a[1] > started + took]) > 100 or None,
             timeout=30)
    load.stop()
    acks = sorted(a[0] for a in load.acked if started <= a[0])
    stall = max(b - a for a, b in zip(acks, acks[1:]))
    print(f"operator: template change rolled 3 nodes under an acks=all load in {took:.1f} s; "
          f"longest gap between acks {stall:.2f} s")
    assert not load.failed, load.failed[:5]
    load.verify(env.bootstrap())


def test_a_scale_down_below_a_replication_factor_is_refused(env):
    """minNodes 2 with RF=3 topics: the cluster keeps three nodes, untouched,
    and says why on the topics and in an event."""
    uids = {n: p["metadata"]["uid"] for n, p in node_pods(env).items()}
    env.replace_operators("op-f", "minNodes=2", "requests={cpu: 50m}")
    ev = wait_for(lambda: events_on_owner(env, "ScaleDownRefused") or None, timeout=60)
    assert "minNodes is 2" in ev[-1]["note"] and "scale" in ev[-1]["note"], ev[-1]
    t = wait_for(lambda: (lambda t: t if (condition(t, "HoldsNodes") or {}).get("status") == "True"
                          else None)(env.get("topic", "scale")), timeout=60)
    print(f"operator: scale-down refused: {condition(t, 'HoldsNodes')['message']}")
    sts = env.get("statefulset", "sluice-node")
    assert sts["spec"]["replicas"] == 3
    assert {n: p["metadata"]["uid"] for n, p in node_pods(env).items()} == uids
