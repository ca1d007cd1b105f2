"""A randomized fault test in the spirit of Jepsen.

Three `sluice serve` processes keep their metadata in Lease objects on
localkube's API server. Idempotent acks=all producers and a consumer group
work on replicated topics (RF=3 and RF=2, min.insync.replicas=2) while a
nemesis, driven by a seeded random generator, picks faults one after
another:

- kill -9 a node and restart it;
- cut a node off from the API server (localkube's fault injection) and heal;
- pause a node (SIGSTOP) and resume it (SIGCONT);
- restart a node with its wall clock skewed (SLUICE_TEST_CLOCK_SKEW_MS);
- make the API server fail a share of writes, before or after making them;
- reassign a partition of the RF=2 topic (kafka-python >= 3.0);
- elect preferred leaders (confluent-kafka >= 2.4).

Then everything is healed and a checker proves: every acknowledged record is
present exactly once, at the offset it was acknowledged with; each producer's
records keep their order in each partition; no record a consumer read ever
vanished; committed group offsets never went backwards; every partition ends
with a leader and its full ISR.

The seed is printed and `SLUICE_NEMESIS_SEED=<n>` replays a run;
`SLUICE_NEMESIS_SECONDS` sets how long the faults go on (90 by default);
`SLUICE_NEMESIS_KEEP=1` keeps the nodes' data directories.
"""
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest
import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import install_crds, read_ready, wait_for

LOCALKUBE = os.environ.get("LOCALKUBE_BIN")
pytestmark = pytest.mark.skipif(
    not LOCALKUBE, reason="LOCALKUBE_BIN is not set (scripts/test.sh sets it)")

LEASE_MS = 2000
TOPICS = {"jepsen-3": (3, 3), "jepsen-2": (3, 2)}  # name: (partitions, RF)
GROUP = "nemesis-group"


def kubeconfig(path, url, token):
    """A kubeconfig whose bearer token names its client to localkube."""
    with open(path, "w") as f:
        f.write(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: lk\n  cluster:\n    server: {url}\n"
            "contexts:\n- name: lk\n  context:\n    cluster: lk\n    user: u\n    namespace: default\n"
            "current-context: lk\n"
            f"users:\n- name: u\n  user:\n    token: {token}\n")


class Node:
    def __init__(self, node_id, work, url):
        self.id = node_id
        self.data_dir = os.path.join(work, f"node-{node_id}")
        self.kubeconfig = os.path.join(work, f"kubeconfig-{node_id}")
        kubeconfig(self.kubeconfig, url, f"node-{node_id}")
        self.kafka = "127.0.0.1:0"
        self.admin = "127.0.0.1:0"
        self.proc = None
        self.skew_ms = 0

    def start(self):
        binary = os.environ.get("SLUICE_BIN", "sluice")
        self.proc = subprocess.Popen(
            [binary, "serve", "--node-id", str(self.id), "--listen", self.kafka,
             "--admin-listen", self.admin, "--replication-listen", "127.0.0.1:0",
             "--data-dir", self.data_dir, "--metadata", "kubernetes",
             "--namespace", "default", "--cluster-name", "nemesis", "--expected-nodes", "3",
             "--controller",
             "--lease-duration-ms", str(LEASE_MS), "--replica-lag-time-max-ms", "3000",
             "--offsets-topic-num-partitions", "3", "--group-initial-rebalance-delay-ms", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "KUBECONFIG": self.kubeconfig,
                 "SLUICE_TEST_CLOCK_SKEW_MS": str(self.skew_ms),
                 "RUST_LOG": os.environ.get("RUST_LOG", "error")})
        fields = read_ready(self.proc, "sluice ready ")
        self.kafka, self.admin = fields["kafka"], fields["admin"]
        # Drain stdout so the node never blocks on a full pipe.
        threading.Thread(target=lambda p=self.proc: [None for _ in p.stdout], daemon=True).start()
        return self

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class LocalKube:
    def __init__(self, work):
        self.kubeconfig = os.path.join(work, "kubeconfig")
        self.proc = subprocess.Popen(
            [LOCALKUBE, "--kubeconfig", self.kubeconfig],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = read_ready(self.proc, "localkube ready ")["url"]
        install_crds(self.kubeconfig)

    def faults(self, rules):
        req = urllib.request.Request(
            f"{self.url}/localkube/faults", data=json.dumps(rules).encode(), method="PUT")
        with urllib.request.urlopen(req) as r:
            return json.load(r)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class History:
    """What producers were told and what consumers saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # value -> (topic, partition, offset)
        self.failed = {}  # value -> error
        self.consumed = {}  # (topic, partition, offset) -> value
        self.commits = {}  # (topic, partition) -> last committed offset seen
        self.backwards = []  # (topic, partition, before, after)
        self.client_errors = []  # fatal client errors, with librdkafka's reason
        self.known_client_bugs = []  # fatal errors of librdkafka < 2.3.0 (see below)

    def delivered(self, err, msg):
        value = msg.value().decode()
        with self.lock:
            if err is None:
                self.acked[value] = (msg.topic(), msg.partition(), msg.offset())
            else:
                self.failed[value] = err


# librdkafka before 2.3.0 counts a batch that failed with a "possibly
# persisted" error (a timeout, NOT_ENOUGH_REPLICAS_AFTER_APPEND) as
# acknowledged before retrying it, and then takes a broker's later
# OUT_OF_ORDER_SEQUENCE_NUMBER (a sequence gap after a refused batch, which
# Kafka answers too) for a fatal error (librdkafka PR #4438). Such a
# producer is replaced by a new one; the checker still holds everything it
# was told. Current clients must never meet a fatal error.
OLD_IDEMPOTENCE = confluent_kafka.libversion()[1] < 0x02030000


def producer(bootstrap, history, writer, stop):
    generation = 0
    while not stop.is_set():
        fatal = []

        def on_error(err):
            if err.fatal():
                fatal.append(err)

        p = Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "message.timeout.ms": 180000, "request.timeout.ms": 10000,
            "topic.metadata.refresh.interval.ms": 1000, "error_cb": on_error,
        })
        name = f"{writer}.{generation}"
        seq = 0
        topics = sorted(TOPICS)
        while not stop.is_set() and not fatal:
            topic = topics[seq % len(topics)]
            partition = (seq // len(topics)) % TOPICS[topic][0]
            value = f"w{name}:{topic}:{partition}:{seq}".encode()
            try:
                p.produce(topic, value=value, partition=partition, on_delivery=history.delivered)
                seq += 1
                p.poll(0.002)
            except BufferError:
                p.poll(0.002)
            except KafkaException as e:
                fatal.append(e.args[0])
        if not fatal:
            p.flush(240)
            return
        err = fatal[0]
        known = OLD_IDEMPOTENCE and err.code() in (
            KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError._FATAL)
        with history.lock:
            (history.known_client_bugs if known else history.client_errors).append(
                f"producer {name}: {err}")
        if not known:
            return
        # Delivery reports of what the fatal producer held still arrive.
        p.flush(30)
        generation += 1


def consumer(bootstrap, history, stop):
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": GROUP, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    c.subscribe(sorted(TOPICS))
    n = 0
    while not stop.is_set():
        for m in c.consume(200, timeout=0.5):
            if m.error() is not None:
                continue
            with history.lock:
                history.consumed[(m.topic(), m.partition(), m.offset())] = m.value().decode()
            n += 1
        if n >= 200:
            try:
                c.commit(asynchronous=False)
            except KafkaException:
                pass  # a rebalance or a coordinator move: the next commit carries on
            n = 0
    c.close()


def watch_commits(bootstrap, history, stop):
    """Samples the group's committed offsets; they must never go back."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    parts = [TopicPartition(t, p) for t, (n, _) in TOPICS.items() for p in range(n)]
    while not stop.is_set():
        try:
            got = c.committed(parts, timeout=5)
        except KafkaException:
            time.sleep(0.2)
            continue
        with history.lock:
            for tp in got:
                if tp.error is not None or tp.offset < 0:
                    continue
                key = (tp.topic, tp.partition)
                before = history.commits.get(key, -1)
                if tp.offset < before:
                    history.backwards.append((tp.topic, tp.partition, before, tp.offset))
                history.commits[key] = max(before, tp.offset)
        time.sleep(0.5)
    c.close()


class Nemesis:
    """Faults, one at a time, from a seeded generator."""

    def __init__(self, rng, kube, nodes, bootstrap):
        self.rng = rng
        self.kube = kube
        self.nodes = nodes
        self.bootstrap = bootstrap
        self.log = []
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        try:
            from kafka.admin import KafkaAdminClient
            self.ka = KafkaAdminClient if hasattr(KafkaAdminClient, "alter_partition_reassignments") else None
        except ImportError:
            self.ka = None

    def faults(self):
        out = ["kill", "isolate", "pause", "skew", "store-before", "store-after"]
        if self.ka is not None:
            out.append("reassign")
        if hasattr(self.admin, "elect_leaders"):
            out.append("elect")
        return out

    def hold(self, lo, hi):
        time.sleep(self.rng.uniform(lo, hi))

    def step(self):
        fault = self.rng.choice(self.faults())
        node = self.rng.choice(self.nodes)
        self.log.append((fault, node.id))
        if fault == "kill":
            node.kill9()
            self.hold(1, 4)
            node.start()
        elif fault == "isolate":
            self.kube.faults({"isolated": [f"node-{node.id}"]})
            self.hold(2, 2.5 * LEASE_MS / 1000)
            self.kube.faults({})
        elif fault == "pause":
            node.signal(signal.SIGSTOP)
            self.hold(1, 2 * LEASE_MS / 1000)
            node.signal(signal.SIGCONT)
        elif fault == "skew":
            node.kill9()
            node.skew_ms = self.rng.choice([-1, 1]) * self.rng.randint(2_000, 20_000)
            node.start()
        elif fault in ("store-before", "store-after"):
            self.kube.faults({"failing_writes": {
                "percent": 30, "applied": fault == "store-after"}})
            self.hold(2, 5)
            self.kube.faults({})
        elif fault == "reassign":
            from kafka import TopicPartition as KTP
            from kafka.admin import KafkaAdminClient
            partition = self.rng.randrange(TOPICS["jepsen-2"][0])
            target = self.rng.sample([0, 1, 2], 2)
            ka = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
            try:
                ka.alter_partition_reassignments({KTP("jepsen-2", partition): target})
            except Exception as e:  # noqa: BLE001 - a fault in flight may refuse it
                self.log.append(("reassign-refused", str(e)))
            finally:
                ka.close()
            self.hold(1, 3)
        elif fault == "elect":
            from confluent_kafka import ElectionType
            topic = self.rng.choice(sorted(TOPICS))
            tp = TopicPartition(topic, self.rng.randrange(TOPICS[topic][0]))
            try:
                self.admin.elect_leaders(ElectionType.PREFERRED, [tp]).result(15)
            except Exception as e:  # noqa: BLE001 - ELECTION_NOT_NEEDED and friends
                self.log.append(("elect-answer", str(e)[:80]))
            self.hold(1, 2)
        self.hold(0.5, 2)

    def heal(self):
        self.kube.faults({})
        for n in self.nodes:
            n.signal(signal.SIGCONT)
            if n.proc.poll() is not None or n.skew_ms:
                n.kill9()
                n.skew_ms = 0
                n.start()


def read_back(bootstrap, topic, partition, end):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}-{partition}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, 0)])
    out = {}
    deadline = time.monotonic() + 120
    while len(out) < end and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1):
            if m.error() is None:
                out[m.offset()] = m.value().decode()
        if out and max(out) >= end - 1:
            break
    c.close()
    return out


def batches(bootstrap, topic, partition, lo, hi):
    """The headers of the batches the partition's leader holds from `lo` to
    `hi`, as (base offset, last offset delta, partition leader epoch,
    producer id, producer epoch, base sequence), read with kafka-python 2's
    own record batch parser (Debian's interpreter has it; kafka-python 3
    moved its protocol classes)."""
    try:
        from kafka import KafkaConsumer, TopicPartition as KTP
        from kafka.protocol.fetch import FetchRequest
        from kafka.record import MemoryRecords
    except ImportError as e:
        if sys.executable == "/usr/bin/python3" or not os.path.exists("/usr/bin/python3"):
            raise RuntimeError(f"batch headers need kafka-python 2: {e}") from e
        here = os.path.dirname(os.path.abspath(__file__))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from test_nemesis import batches; "
                "print(repr(batches(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))))")
        out = subprocess.run(["/usr/bin/python3", "-c", code, here, bootstrap, topic,
                              str(partition), str(lo), str(hi)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-500:])
        return ast.literal_eval(out.stdout.strip())
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        cli = c._client
        cli.poll(future=cli.cluster.request_update())
        leader = cli.cluster.leader_for_partition(KTP(topic, partition))
        out, offset = [], lo
        while offset <= hi:
            req = FetchRequest[4](-1, 100, 1, 1 << 20, 0, [(topic, [(partition, offset, 1 << 20)])])
            while not cli.ready(leader):
                cli.poll(timeout_ms=100)
            f = cli.send(leader, req)
            cli.poll(future=f)
            records = MemoryRecords(f.value.topics[0][1][0][-1])
            got = False
            while records.has_next():
                h = records.next_batch()._header_data
                # (base offset, length, leader epoch, magic, crc, attributes,
                #  last offset delta, first ts, max ts, producer id, epoch,
                #  base sequence, count)
                out.append((h[0], h[6], h[2], h[9], h[10], h[11]))
                offset = h[0] + h[6] + 1
                got = True
            if not got:
                break
        return out
    finally:
        c.close()


def batch_headers(bootstrap, topic, partition, lo, hi):
    """Diagnostics for a failed check: `batches` as text."""
    try:
        return "\n".join(f"@{b} n={d + 1} leader_epoch={le} pid={pid} epoch={e} seq={seq}"
                         for b, d, le, pid, e, seq in batches(bootstrap, topic, partition, lo, hi))
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"(batch headers unavailable: {e})"


def resent_under_a_new_epoch(bootstrap, copies):
    """Whether the copies of one record, [(topic, partition, offset)], are a
    producer's own re-send: every later copy in a batch of the same producer
    id under a higher producer epoch than the first. librdkafka does this
    after an epoch bump (confluentinc/librdkafka#4953): it sends again, with
    new sequences, batches it had not seen acknowledged, and one that was
    written is written twice. No broker can recognise a batch across
    producer epochs (Kafka neither), so this is the client's duplicate, not
    a broker's; anything else stays a failure."""
    copies = sorted(copies)
    if len({(t, p) for t, p, _ in copies}) != 1 or copies[0][2] is None:
        return False
    t, p = copies[0][0], copies[0][1]
    try:
        held = batches(bootstrap, t, p, copies[0][2], copies[-1][2])
    except Exception:  # noqa: BLE001 - unknown is not excused
        return False

    def holding(off):
        return next(((pid, e) for b, d, _, pid, e, _ in held if b <= off <= b + d), None)

    first = holding(copies[0][2])
    later = [holding(off) for _, _, off in copies[1:]]
    return (first is not None and first[0] >= 0
            and all(h is not None and h[0] == first[0] and h[1] > first[1] for h in later))


def produce_as(bootstrap, topic, value, pid, epoch, seq):
    """Writes one record to partition 0 as producer `pid` at `epoch` with
    sequence `seq`, through kafka-python 2's batch builder; returns the
    partition's answer (error code, base offset)."""
    from kafka import KafkaConsumer, TopicPartition as KTP
    from kafka.protocol.produce import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder
    b = DefaultRecordBatchBuilder(2, 0, False, pid, epoch, seq, 1 << 20)
    b.append(0, int(time.time() * 1000), None, value, [])
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        cli = c._client
        cli.poll(future=cli.cluster.request_update())
        cli.add_topic(topic)
        cli.poll(future=cli.cluster.request_update())
        leader = cli.cluster.leader_for_partition(KTP(topic, 0))
        while not cli.ready(leader):
            cli.poll(timeout_ms=100)
        f = cli.send(leader, ProduceRequest[3](None, -1, 5000, [(topic, [(0, bytes(b.build()))])]))
        cli.poll(future=f)
        _, code, offset, _ = f.value.topics[0][1][0][:4]
        return code, offset
    finally:
        c.close()


def test_only_a_resend_under_a_new_epoch_is_the_clients_duplicate(fresh_node):
    """The checker's one excuse, against a real node: a record written again
    by the same producer id under a higher epoch. A copy under the same
    epoch, or from another producer, is still a duplicate."""
    pytest.importorskip("kafka.protocol.produce", reason="needs kafka-python 2 (Debian's run)")
    bootstrap = fresh_node.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for t in ("resent", "same-epoch", "other-pid"):
        admin.create_topics([NewTopic(t, 1, 1)])[t].result(30)
    assert produce_as(bootstrap, "resent", b"v", 7, 0, 0) == (0, 0)
    assert produce_as(bootstrap, "resent", b"w", 7, 0, 1) == (0, 1)
    assert produce_as(bootstrap, "resent", b"v", 7, 1, 0) == (0, 2)
    assert resent_under_a_new_epoch(bootstrap, [("resent", 0, 2), ("resent", 0, 0)])
    # The same epoch: the broker should have known it (here a new sequence
    # range, which it cannot, so the checker must not excuse it either).
    assert produce_as(bootstrap, "same-epoch", b"v", 8, 0, 0) == (0, 0)
    assert produce_as(bootstrap, "same-epoch", b"v", 8, 0, 1) == (0, 1)
    assert not resent_under_a_new_epoch(bootstrap, [("same-epoch", 0, 0), ("same-epoch", 0, 1)])
    assert produce_as(bootstrap, "other-pid", b"v", 9, 0, 0) == (0, 0)
    assert produce_as(bootstrap, "other-pid", b"v", 10, 1, 0) == (0, 1)
    assert not resent_under_a_new_epoch(bootstrap, [("other-pid", 0, 0), ("other-pid", 0, 1)])
    # Copies in two partitions are never one producer's re-send.
    assert not resent_under_a_new_epoch(bootstrap, [("resent", 0, 0), ("other-pid", 0, 1)])


@pytest.fixture
def cluster():
    work = tempfile.mkdtemp(prefix="sluice-nemesis-")
    kube = LocalKube(work)
    nodes = [Node(i, work, kube.url).start() for i in range(3)]
    yield kube, nodes
    for n in nodes:
        n.kill9()
    kube.stop()
    if os.environ.get("SLUICE_NEMESIS_KEEP"):
        # The nodes' data directories, for reading a failure's batches.
        print(f"nemesis: data kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def test_randomized_faults_lose_nothing_acknowledged(cluster):
    kube, nodes = cluster
    seed = int(os.environ.get("SLUICE_NEMESIS_SEED", random.randrange(1 << 32)))
    seconds = float(os.environ.get("SLUICE_NEMESIS_SECONDS", "90"))
    print(f"nemesis: SLUICE_NEMESIS_SEED={seed} SLUICE_NEMESIS_SECONDS={seconds}")
    rng = random.Random(seed)
    bootstrap = ",".join(n.kafka for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_for(lambda: len(admin.list_topics(timeout=10).brokers) == 3, timeout=60)
    for name, (parts, rf) in TOPICS.items():
        admin.create_topics([NewTopic(name, parts, rf, config={"min.insync.replicas": "2"})])[name].result(60)

    history = History()
    stop = threading.Event()
    workers = [threading.Thread(target=producer, args=(bootstrap, history, w, stop)) for w in range(2)]
    workers.append(threading.Thread(target=consumer, args=(bootstrap, history, stop)))
    workers.append(threading.Thread(target=watch_commits, args=(bootstrap, history, stop)))
    for w in workers:
        w.start()
    nemesis = Nemesis(rng, kube, nodes, bootstrap)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            nemesis.step()
    finally:
        nemesis.heal()
        # Let the cluster settle under load, then stop the clients.
        time.sleep(5)
        stop.set()
        for w in workers:
            w.join(300)
    print(f"nemesis: faults {nemesis.log}")

    def healthy():
        md = admin.list_topics(timeout=10)
        for name, (parts, rf) in TOPICS.items():
            for p in md.topics[name].partitions.values():
                if p.leader < 0 or len(p.isrs) != len(p.replicas):
                    return False
        return True

    # Every partition ends with a leader and its full ISR.
    wait_for(healthy, timeout=120)
    with history.lock:
        acked = dict(history.acked)
        failed = dict(history.failed)
        consumed = dict(history.consumed)
        backwards = list(history.backwards)
    # An idempotent producer meets no fatal error (a broker answer it
    # cannot explain: a lost or reordered sequence).
    assert not history.client_errors, f"{history.client_errors} (seed {seed})"
    assert acked, "nothing was acknowledged"
    print(f"nemesis: {len(acked)} acknowledged, {len(failed)} failed, {len(consumed)} consumed")
    print(f"nemesis: producers replaced after librdkafka < 2.3.0's fatal errors: {history.known_client_bugs}")

    final = {}  # (topic, partition, offset) -> value
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "nemesis-probe"})
    for name, (parts, _) in TOPICS.items():
        for p in range(parts):
            _, end = probe.get_watermark_offsets(TopicPartition(name, p), timeout=30)
            for off, v in read_back(bootstrap, name, p, end).items():
                final[(name, p, off)] = v
    probe.close()
    where = {}
    for k, v in final.items():
        where.setdefault(v, []).append(k)

    def around(at):
        t, p, off = at[0]
        off = off or 0
        lo, hi = max(0, off - 20), (at[-1][2] or off) + 20
        held = "\n".join(f"{o}: {final.get((t, p, o), '-')}" for o in range(lo, hi + 1))
        return f"{t}-{p} holds:\n{held}\nbatches:\n" + batch_headers(bootstrap, t, p, lo, hi)

    # Records a producer sent again under a new epoch (see
    # resent_under_a_new_epoch) are reported, and checked for everything else.
    twice = {v: at for v, at in where.items() if len(at) > 1}
    resent = {v for v, at in twice.items() if resent_under_a_new_epoch(bootstrap, at)}
    if resent:
        print(f"nemesis: records librdkafka {confluent_kafka.libversion()[0]} sent again "
              f"under a new producer epoch: {sorted(resent)[:10]}")
    # Exactly once, at the acknowledged offset. (A client may acknowledge a
    # record without its offset: librdkafka does when a later batch of the
    # same producer succeeded after this one's answer was lost.)
    for v, at in acked.items():
        found = where.get(v)
        if v in resent:
            ok = at[2] is None or at in found
        else:
            ok = found == [at] if at[2] is not None else (found is not None and len(found) == 1)
        assert ok, (f"acknowledged {v} at {at}, found at {found} (seed {seed})\n"
                    + around(found or [at]))
    # Nothing twice, acknowledged or not.
    twice = {v: at for v, at in twice.items() if v not in resent}
    assert not twice, (f"duplicates: {list(twice.items())[:5]} (seed {seed})\n"
                       + around(next(iter(twice.values()))) if twice else "")
    # Each producer's order per partition.
    last = {}
    copies = {k for v in resent for k in sorted(where[v])[1:]}
    for (t, p, off), v in sorted(final.items()):
        if (t, p, off) in copies:
            continue
        writer, _, _, seq = v.split(":")
        key = (writer, t, p)
        assert int(seq) > last.get(key, -1), f"{v} out of order at {t}-{p}@{off} (seed {seed})"
        last[key] = int(seq)
    # No record a consumer read vanished.
    for k, v in consumed.items():
        assert final.get(k) == v, f"consumed {v} at {k}, now {final.get(k)} (seed {seed})"
    # Committed offsets never went back.
    assert not backwards, f"committed offsets went back: {backwards[:5]} (seed {seed})"
