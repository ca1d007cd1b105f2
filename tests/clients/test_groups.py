"""Consumer groups with real clients: librdkafka (eager and cooperative),
kafka-python, kcat; committed offsets across a node restart."""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


def create(node, name, partitions):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def produce(node, topic, values):
    p = Producer({"bootstrap.servers": node.bootstrap, "linger.ms": 5})
    for v in values:
        p.produce(topic, key=v, value=v)
        p.poll(0)
    assert p.flush(30) == 0


class Member:
    """A group member process (group_member.py) and what it reports."""

    def __init__(self, node, group, topic, strategy="range"):
        fd, self.outfile = tempfile.mkstemp(prefix="member-", suffix=".log")
        os.close(fd)
        self.assigned = None
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "group_member.py"), node.bootstrap, group,
             topic, self.outfile, strategy],
            stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            self.lines.append(line)
            if line.startswith("ASSIGNED"):
                parts = line.split(" ", 1)[1] if " " in line else ""
                self.assigned = frozenset(int(p) for p in parts.split(",") if p)

    def processed(self):
        with open(self.outfile) as f:
            return [tuple(l.split()) for l in f if l.strip()]

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        os.unlink(self.outfile)


def balanced(members, partitions, per_member):
    """True when the members' assignments split `partitions` evenly."""
    sets = [m.assigned for m in members]
    if any(s is None for s in sets):
        return False
    union = set().union(*sets)
    return (union == set(range(partitions)) and sum(len(s) for s in sets) == partitions
            and all(len(s) in per_member for s in sets))


def test_three_members_kill_one_then_add_one(node):
    topic, group = "grp-six", "grp-eager"
    create(node, topic, 6)
    first = [f"a{i}" for i in range(3000)]
    produce(node, topic, first)
    members = [Member(node, group, topic) for _ in range(3)]
    try:
        wait_for(lambda: balanced(members, 6, {2}), timeout=60)
        wait_for(lambda: sum(len(m.processed()) for m in members) >= len(first), timeout=60)

        # SIGKILL one member; the survivors take its partitions once its
        # session (6 s) expires.
        victim = members[2]
        victim.kill9()
        killed_at = time.monotonic()
        survivors = members[:2]
        wait_for(lambda: balanced(survivors, 6, {3}), timeout=60)
        loss_rebalance = time.monotonic() - killed_at

        second = [f"b{i}" for i in range(3000)]
        produce(node, topic, second)

        # A fourth member joins and the group rebalances again.
        joined_at = time.monotonic()
        newcomer = Member(node, group, topic)
        everyone = survivors + [newcomer]
        wait_for(lambda: balanced(everyone, 6, {1, 2, 3}) and newcomer.assigned, timeout=60)
        join_rebalance = time.monotonic() - joined_at

        third = [f"c{i}" for i in range(3000)]
        produce(node, topic, third)
        produced = set(first + second + third)
        wait_for(lambda: produced <= {v for m in members + [newcomer] for _, _, v in m.processed()},
                 timeout=90)

        all_lines = [l for m in members + [newcomer] for l in m.processed()]
        counts = Counter(v for _, _, v in all_lines)
        assert set(counts) == produced
        dupes = {v for v, n in counts.items() if n > 1}
        # Duplicates only inside the killed member's uncommitted window: values
        # it wrote in its last batch per partition, at most one batch (100).
        victim_values = {v for _, _, v in victim.processed()}
        assert dupes <= victim_values, dupes - victim_values
        assert len(dupes) <= 100, len(dupes)
        print(f"\nREBALANCE loss-of-member={loss_rebalance:.2f}s (session timeout 6s) "
              f"join-of-member={join_rebalance:.2f}s duplicates={len(dupes)}")
    finally:
        for m in members + [locals().get("newcomer")]:
            if m:
                m.stop()


def test_cooperative_sticky(node):
    topic, group = "grp-coop", "grp-coop"
    create(node, topic, 6)
    a = Member(node, group, topic, "cooperative-sticky")
    try:
        wait_for(lambda: a.assigned == frozenset(range(6)), timeout=60)
        b = Member(node, group, topic, "cooperative-sticky")
        wait_for(lambda: balanced([a, b], 6, {3}), timeout=60)
        # Incremental: the first member only ever gave partitions away; it
        # never had its whole assignment revoked.
        revoked = [l for l in a.lines if l.startswith("REVOKED")]
        assert revoked and all(len(l.split(" ", 1)[1].split(",")) <= 3 for l in revoked)
        produce(node, topic, [f"x{i}" for i in range(600)])
        wait_for(lambda: len({v for m in (a, b) for _, _, v in m.processed()}) == 600, timeout=60)
        b.stop()
    finally:
        a.stop()


def test_kafka_python_group(node):
    from kafka import KafkaConsumer
    topic = "grp-kp"
    create(node, topic, 4)
    produce(node, topic, [f"k{i}" for i in range(2000)])
    seen = []
    lock = threading.Lock()

    def run():
        c = KafkaConsumer(topic, bootstrap_servers=node.bootstrap, group_id="grp-kp",
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          consumer_timeout_ms=8000)
        for m in c:
            with lock:
                seen.append(m.value.decode())
            c.commit()
        c.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) == {f"k{i}" for i in range(2000)}
    # Everything was committed: the group's lag is zero.
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "grp-kp"})
    committed = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    ends = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(4)]
    assert [tp.offset for tp in committed] == ends
    c.close()


def test_kcat_balanced_consumer(node):
    topic = "grp-kcat"
    create(node, topic, 3)
    produce(node, topic, [f"v{i}" for i in range(300)])
    cmd = ["kcat", "-b", node.bootstrap, "-G", "grp-kcat", "-X", "auto.offset.reset=earliest",
           "-e", "-f", "%s\n", topic]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split()) == sorted(f"v{i}" for i in range(300))
    produce(node, topic, ["late"])
    # The group resumes from its committed offsets.
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert second.stdout.split() == ["late"], second.stdout


def test_committed_offsets_survive_kill9_and_new_groups_start_at_earliest(fresh_node):
    node = fresh_node
    create(node, "grp-durable", 2)
    produce(node, "grp-durable", [f"d{i}" for i in range(100)])
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "durable",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe(["grp-durable"])
    got = []
    while len(got) < 100:
        got += [m for m in c.consume(100, 1.0) if not m.error()]
    c.commit(asynchronous=False)
    c.close()
    node.restart()
    produce(node, "grp-durable", [f"e{i}" for i in range(10)])
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "durable",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe(["grp-durable"])
    more = []
    deadline = time.monotonic() + 30
    while len(more) < 10 and time.monotonic() < deadline:
        more += [m.value().decode() for m in c.consume(100, 1.0) if not m.error()]
    c.close()
    assert sorted(more) == sorted(f"e{i}" for i in range(10))


def test_static_member_restart_keeps_its_partitions_without_a_rebalance(node):
    topic, group = "grp-static", "grp-static"
    create(node, topic, 4)
    revokes = {"static-a": 0, "static-b": 0}

    def member(instance):
        def on_revoke(consumer, partitions):
            if partitions:
                revokes[instance] += 1
        c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group,
                      "group.instance.id": instance, "session.timeout.ms": 10000,
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic], on_revoke=on_revoke)
        return c

    def assignment(c):
        c.poll(0.1)
        return {tp.partition for tp in c.assignment()}

    def both(a, b):
        # Poll both every time: an eager member only rejoins once the
        # application has served its revocation in poll().
        return assignment(a), assignment(b)

    a, b = member("static-a"), member("static-b")
    wait_for(lambda: [len(x) for x in both(a, b)] == [2, 2], timeout=60)
    before_a, before_b = both(a, b)
    settled = revokes["static-a"]
    # b restarts: a static member's close does not leave the group, and the
    # new process with the same instance id takes its place and partitions.
    b.close()
    b = member("static-b")
    wait_for(lambda: both(a, b) == (before_a, before_b), timeout=30)
    for _ in range(20):
        assert both(a, b) == (before_a, before_b)
    # The other member never saw a rebalance.
    assert revokes["static-a"] == settled
    a.close()
    b.close()
