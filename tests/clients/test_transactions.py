"""Transactions with librdkafka's transactional producer (python3-confluent-kafka):
commit and abort, read_committed and read_uncommitted consumers, zombie
fencing, timeouts, offsets committed in transactions, and bad input.
"""
import shutil
import tempfile
import uuid

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer, TopicPartition,
                             libversion)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SluiceNode, wait_for

# A short abort check, so a silent producer's transaction is aborted soon
# after its timeout.
TXN_FLAGS = ("--transaction-abort-check-interval-ms", "200")


@pytest.fixture(scope="module")
def txn_node():
    d = tempfile.mkdtemp(prefix="sluice-txn-")
    n = SluiceNode(d, TXN_FLAGS).start()
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)


def create(bootstrap, name, partitions=3):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        f.result(30)


def producer(bootstrap, txn_id, **extra):
    conf = {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_all(bootstrap, topic, isolation, expect_at_least=0, idle_polls=10):
    """Every record of `topic` from the beginning, as (partition, value)."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    c.subscribe([topic])
    out, idle = [], 0
    try:
        while idle < idle_polls or len(out) < expect_at_least:
            m = c.poll(0.5)
            if m is None:
                idle += 1
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(m.error())
            idle = 0
            out.append((m.partition(), m.value().decode()))
    finally:
        c.close()
    return out


def test_commit_and_abort_interleaved_on_three_partitions(txn_node):
    b = txn_node.bootstrap
    create(b, "interleaved")
    p = producer(b, "interleaver")
    committed = []
    for t in range(6):
        p.begin_transaction()
        values = [f"t{t}-r{i}" for i in range(9)]
        for i, v in enumerate(values):
            p.produce("interleaved", v.encode(), partition=i % 3)
        # Delivered before the transaction ends, so aborted records reach
        # the log too (librdkafka drops unsent ones on abort).
        assert p.flush(30) == 0
        if t % 2 == 0:
            p.commit_transaction(30)
            committed += [(i % 3, v) for i, v in enumerate(values)]
        else:
            p.abort_transaction(30)
    # read_committed: exactly the committed records, in order per partition.
    got = read_all(b, "interleaved", "read_committed", expect_at_least=len(committed))
    for part in range(3):
        assert [v for q, v in got if q == part] == [v for q, v in committed if q == part]
    # read_uncommitted: both.
    everything = read_all(b, "interleaved", "read_uncommitted", expect_at_least=54)
    assert len(everything) == 54


def test_a_second_producer_fences_the_first_and_aborts_its_transaction(txn_node):
    b = txn_node.bootstrap
    create(b, "fenced", 1)
    old = producer(b, "zombie")
    old.begin_transaction()
    for i in range(5):
        old.produce("fenced", f"zombie-{i}".encode())
    assert old.flush(30) == 0  # in the log, its transaction open
    new = producer(b, "zombie")  # bumps the epoch, aborts the open transaction
    new.begin_transaction()
    new.produce("fenced", b"fresh")
    new.commit_transaction(30)
    # The old instance learns it was fenced: a fatal error.
    with pytest.raises(KafkaException) as e:
        old.produce("fenced", b"late")
        old.commit_transaction(30)
    err = e.value.args[0]
    assert err.fatal(), err
    # librdkafka names the broker's INVALID_PRODUCER_EPOCH / PRODUCER_FENCED
    # answer _FENCED.
    assert err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                          KafkaError.INVALID_PRODUCER_EPOCH), err
    assert read_all(b, "fenced", "read_committed", expect_at_least=1) == [(0, "fresh")]
    everything = [v for _, v in read_all(b, "fenced", "read_uncommitted", expect_at_least=6)]
    assert everything == [f"zombie-{i}" for i in range(5)] + ["fresh"]


def test_a_silent_transaction_is_aborted_after_its_timeout(txn_node):
    b = txn_node.bootstrap
    create(b, "silent", 1)
    quiet = producer(b, "quiet", **{"transaction.timeout.ms": 2000})
    quiet.begin_transaction()
    quiet.produce("silent", b"never-committed")
    assert quiet.flush(30) == 0
    # A plain record after the open transaction: read_committed consumers
    # see it only once the transaction is decided (the LSO moves past it).
    plain = Producer({"bootstrap.servers": b})
    plain.produce("silent", b"after")
    assert plain.flush(30) == 0
    got = read_all(b, "silent", "read_committed", expect_at_least=1, idle_polls=2)
    assert got == [(0, "after")]
    # The coordinator aborted and fenced it: committing now fails.
    with pytest.raises(KafkaException):
        quiet.commit_transaction(10)


def test_offsets_committed_in_a_transaction_apply_only_when_it_commits(txn_node):
    b = txn_node.bootstrap
    create(b, "src", 1)
    plain = Producer({"bootstrap.servers": b})
    for i in range(10):
        plain.produce("src", f"r{i}".encode())
    assert plain.flush(30) == 0
    group = "txn-offsets"
    c = Consumer({"bootstrap.servers": b, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe(["src"])
    wait_for(lambda: c.poll(0.2) is not None and c.assignment())
    p = producer(b, "offsets-writer")

    def committed():
        return c.committed([TopicPartition("src", 0)], 10)[0].offset

    p.begin_transaction()
    p.send_offsets_to_transaction([TopicPartition("src", 0, 4)], c.consumer_group_metadata(), 30)
    p.abort_transaction(30)
    assert committed() < 0  # nothing committed
    p.begin_transaction()
    p.send_offsets_to_transaction([TopicPartition("src", 0, 7)], c.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    wait_for(lambda: committed() == 7)
    c.close()


# --- consume-transform-produce, exactly once, across failures ---------------

PIPELINE_RECORDS = 100_000

# librdkafka 2.10+ re-bootstraps when every broker is unreachable (a single
# node's restart) and then may keep a decommissioned broker as the group
# coordinator, so send_offsets_to_transaction() hangs past its timeout
# (confluentinc/librdkafka#5511, open). Applications of a one-broker
# cluster turn re-bootstrapping off; so does this test.
NO_REBOOTSTRAP = ({"metadata.recovery.strategy": "none"}
                  if libversion()[1] >= 0x020A0000 else {})


def fill(bootstrap, topic, n):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i in range(n):
        p.produce(topic, f"{i}".encode(), key=f"{i}".encode())
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


class Hung(Exception):
    """A client call still blocked well past its own timeout."""


def bounded(call, timeout):
    """Runs `call` and returns its result, raising `Hung` if it has not
    returned after `timeout` seconds (the call is left behind).

    librdkafka sends TxnOffsetCommit through its coordinator-request state
    machine, which, when its cached group coordinator is down, waits for
    the next broker state change to look the coordinator up again and has
    no timer of its own (rd_kafka_coord_req_fsm in rdkafka_coord.c). If
    the group coordinator's node stops before the call and every other
    connection is already settled, no state change comes and
    send_offsets_to_transaction() blocks past its timeout for good.
    Applications guard it with a watchdog and replace the producer."""
    import threading
    box = {}

    def run():
        try:
            box["ok"] = call()
        except BaseException as e:  # handed to the caller
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise Hung()
    if "err" in box:
        raise box["err"]
    return box.get("ok")


class Pipeline:
    """Reads `in`, writes each value doubled to `out`, and commits the
    input offsets in the same transaction: Kafka's exactly-once loop. On
    any error it aborts, or starts over from the committed offsets with a
    new producer (which fences the old one), as applications do."""

    def __init__(self, bootstrap, total):
        self.bootstrap = bootstrap
        self.total = total
        self.done = 0  # input records whose transaction committed
        self.restarts = 0
        self.hung = 0  # producers abandoned in a call past its timeout
        self.abandoned = []  # kept referenced: destroying one would block
        self.committed_at = []  # monotonic time of each commit

    def _clients(self):
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "eos-pipeline",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest",
                      "isolation.level": "read_committed", "session.timeout.ms": 6000,
                      **NO_REBOOTSTRAP})
        c.subscribe(["in"])
        p = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": "eos-pipeline",
                      "linger.ms": 5, "transaction.timeout.ms": 10000, **NO_REBOOTSTRAP})
        p.init_transactions(60)
        return c, p

    def run(self, deadline):
        import time
        c, p = self._clients()
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.5)
            msgs = [m for m in msgs if not m.error()]
            if not msgs:
                if self._position(c) >= self.total:
                    break
                continue
            try:
                p.begin_transaction()
                for m in msgs:
                    p.produce("out", str(int(m.value()) * 2).encode(), key=m.key())
                offsets, meta = c.position(c.assignment()), c.consumer_group_metadata()
                bounded(lambda: p.send_offsets_to_transaction(offsets, meta, 30), 45)
                p.commit_transaction(30)
                self.done = self._position(c)
                self.committed_at.append(time.monotonic())
            except Hung:
                # The next producer's init_transactions() fences this one
                # and aborts its open transaction.
                self.hung += 1
                self.restarts += 1
                self.abandoned.append(p)
                c.close()
                c, p = self._clients()
            except KafkaException:
                self.restarts += 1
                try:
                    p.abort_transaction(10)
                except KafkaException:
                    pass
                c.close()
                c, p = self._clients()
        c.close()

    @staticmethod
    def _position(c):
        return sum(max(tp.offset, 0) for tp in c.position(c.assignment()))


def check_exactly_once(bootstrap, total):
    got = read_all(bootstrap, "out", "read_committed", expect_at_least=total, idle_polls=4)
    values = sorted(int(v) for _, v in got)
    assert len(values) == total, f"{len(values)} records in out, expected {total}"
    assert values == [2 * i for i in range(total)]


def run_pipeline_with(bootstrap, fault, when=0.3):
    """Runs the pipeline in a thread and calls `fault` once it has done
    `when` of the input."""
    import threading
    import time
    pipe = Pipeline(bootstrap, PIPELINE_RECORDS)
    t = threading.Thread(target=pipe.run, args=(time.monotonic() + 240,), daemon=True)
    t.start()
    wait_for(lambda: pipe.done >= PIPELINE_RECORDS * when, timeout=120)
    fault_at = time.monotonic()
    fault()
    t.join(240)
    assert not t.is_alive(), f"pipeline stuck at {pipe.done}"
    assert pipe.done == PIPELINE_RECORDS
    resumed = next((x for x in pipe.committed_at if x > fault_at), None)
    return pipe, resumed - fault_at if resumed else None


def test_exactly_once_pipeline_across_kill_9():
    d = tempfile.mkdtemp(prefix="sluice-eos-")
    n = SluiceNode(d, TXN_FLAGS).start()
    try:
        create(n.bootstrap, "in", 3)
        create(n.bootstrap, "out", 3)
        fill(n.bootstrap, "in", PIPELINE_RECORDS)
        pipe, resumed = run_pipeline_with(n.bootstrap, n.restart)
        print(f"kill -9: pipeline restarted {pipe.restarts} time(s); first commit {resumed:.2f} s after the kill")
        check_exactly_once(n.bootstrap, PIPELINE_RECORDS)
    finally:
        n.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_exactly_once_pipeline_across_a_coordinator_failover(cluster):
    from test_failover import partition_info
    b = cluster.bootstrap
    admin = AdminClient({"bootstrap.servers": b})
    for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=3,
                                           config={"min.insync.replicas": "2"})
                                  for t in ("in", "out")]).values():
        f.result(30)
    fill(b, "in", PIPELINE_RECORDS)
    state = {}

    def stop_coordinator():
        # The transactional id's __transaction_state leader (same rule as groups).
        wait_for(lambda: partition_info(admin, "__transaction_state") is not None)
        state["node"] = txn_coordinator(admin, "eos-pipeline")
        cluster.stop_node(state["node"])

    pipe, resumed = run_pipeline_with(b, stop_coordinator)
    print(f"coordinator node {state['node']} stopped: pipeline restarted {pipe.restarts} time(s) "
          f"({pipe.hung} for a call blocked past its timeout); "
          f"first commit {resumed:.2f} s after the stop")
    check_exactly_once(b, PIPELINE_RECORDS)


def txn_coordinator(admin, txn_id, partitions=50):
    from test_failover import java_hash, partition_info
    h = java_hash(txn_id)
    p = 0 if h == -(1 << 31) else abs(h) % partitions
    return partition_info(admin, "__transaction_state", p).leader


def test_group_lag_counts_to_the_last_stable_offset(txn_node):
    """`sluice group describe` measures a group's lag to the last stable
    offset, where a read_committed consumer can get to."""
    import json
    import os
    import subprocess
    b = txn_node.bootstrap
    create(b, "lagging", 1)
    plain = Producer({"bootstrap.servers": b})
    for i in range(3):
        plain.produce("lagging", f"c{i}".encode())
    assert plain.flush(30) == 0
    c = Consumer({"bootstrap.servers": b, "group.id": "lag-lso", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.assign([TopicPartition("lagging", 0, 1)])
    c.commit(offsets=[TopicPartition("lagging", 0, 1)], asynchronous=False)
    c.close()
    p = producer(b, "lag-writer")
    p.begin_transaction()
    for i in range(5):
        p.produce("lagging", f"open{i}".encode())
    assert p.flush(30) == 0

    def describe():
        out = subprocess.run([os.environ.get("SLUICE_BIN", "sluice"), "group", "describe",
                              "lag-lso", "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SLUICE_BROKERS": b})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    d = describe()
    assert d["total_lag"] == 2, d  # to offset 3, not past the open transaction
    p.commit_transaction(30)
    assert describe()["total_lag"] == 8  # 5 records and the marker
