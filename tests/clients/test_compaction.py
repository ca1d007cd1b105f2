"""Log compaction (cleanup.policy=compact) with real clients: a keyed
changelog compacts to the latest value per key at its original offsets,
tombstones vanish after delete.retention.ms, a reader never sees a key go
backwards while the cleaner runs, a pass cut by kill -9 finishes after the
restart, __consumer_offsets stays small, and compacted topics refuse
records without a key.
"""
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import SluiceNode, wait_for

# The cleaner looks for work every 50 ms instead of every 15 s.
CLEANER = ("--log-cleaner-backoff-ms", "50")


def metrics(node):
    with urllib.request.urlopen(f"http://127.0.0.1:{node.admin_port}/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def log_size(node, topic):
    return metrics(node).get(f'sluice_log_size_bytes{{topic="{topic}"}}', 0.0)


def cleaner(node):
    m = metrics(node)
    return {k: m.get(f"sluice_log_cleaner_{k}", 0.0) for k in (
        "passes_total", "records_read_total", "records_removed_total",
        "busy_seconds_total", "max_dirty_ratio")}


@pytest.fixture
def cnode():
    d = tempfile.mkdtemp(prefix="sluice-compact-")
    n = SluiceNode(d, CLEANER).start()
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)


def create(node, name, configs, partitions=1):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    fut = admin.create_topics([NewTopic(name, partitions, 1, config=configs)])[name]
    fut.result(30)
    return admin


def alter(admin, name, configs):
    """AlterConfigs (replaces the topic's dynamic configs as a whole)."""
    res = ConfigResource("topic", name, set_config=configs)
    admin.alter_configs([res])[res].result(30)


def produce_changelog(node, topic, records, keys, seed=7):
    """Writes `records` keyed records over `keys` keys; the value names the
    record's position (its offset, as one idempotent producer writes one
    partition). Returns the model: key -> latest (offset, value)."""
    rng = random.Random(seed)
    p = Producer({"bootstrap.servers": node.bootstrap, "enable.idempotence": True,
                  "linger.ms": 5, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1000000})
    model = {}
    for i in range(records):
        key = f"key-{rng.randrange(keys):05d}"
        value = f"{key}:{i}"
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        model[key] = (i, value)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return model


def read_all(node, topic, partition=0):
    """Every record of a partition from its start to its high watermark, as
    (offset, key, value)."""
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "reader",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    _, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    out = []
    if high > 0:
        c.assign([TopicPartition(topic, partition, 0)])
        done = False
        while not done:
            for m in c.consume(10000, timeout=5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF and m.offset() >= high:
                        done = True
                        continue
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(m.error())
                v = m.value()
                out.append((m.offset(), m.key().decode(), v.decode() if v is not None else None))
                if m.offset() >= high - 1:
                    done = True
    c.close()
    return out


def assert_matches_model(records, model):
    latest = {}
    for offset, key, value in records:
        latest[key] = (offset, value)
    assert latest == model
    # Compacted completely: one record per key, at the offset it was written.
    assert len(records) == len(model)
    offsets = [o for o, _, _ in records]
    assert offsets == sorted(offsets)


def test_changelog_compacts_to_the_latest_value_per_key(cnode):
    topic = "changelog"
    # Nothing is old enough to clean while the log is written.
    admin = create(cnode, topic, {"cleanup.policy": "compact",
                                   "min.compaction.lag.ms": "3600000"})
    model = produce_changelog(cnode, topic, 1_000_000, 10_000)
    before = wait_for(lambda: log_size(cnode, topic))
    c0 = cleaner(cnode)
    start = time.monotonic()
    alter(admin, topic, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"})
    wait_for(lambda: log_size(cnode, topic) < before / 10, timeout=120)
    wait_for(lambda: cleaner(cnode)["max_dirty_ratio"] == 0.0, timeout=60)
    took = time.monotonic() - start
    c1 = cleaner(cnode)
    after = log_size(cnode, topic)
    records = read_all(cnode, topic)
    assert_matches_model(records, model)
    read = c1["records_read_total"] - c0["records_read_total"]
    busy = c1["busy_seconds_total"] - c0["busy_seconds_total"]
    assert c1["records_removed_total"] - c0["records_removed_total"] >= 990_000
    print(f"\ncompaction: 1,000,000 records over 10,000 keys; {before:.0f} -> {after:.0f} bytes; "
          f"{read:.0f} records read in {busy:.2f} s of passes ({read / busy:.0f} records/s), "
          f"{took:.2f} s from the config change to a clean log")


def test_tombstones_vanish_after_delete_retention(cnode):
    topic = "tombstones"
    create(cnode, topic, {"cleanup.policy": "compact", "delete.retention.ms": "5000"})
    p = Producer({"bootstrap.servers": cnode.bootstrap})
    for i in range(100):
        p.produce(topic, key=f"k{i}", value=f"v{i}")
    p.flush(30)
    passes = cleaner(cnode)["passes_total"]
    for i in range(50):
        p.produce(topic, key=f"k{i}", value=None)
    assert p.flush(30) == 0
    # The first pass drops the values the tombstones replaced; the
    # tombstones themselves stay for delete.retention.ms.
    wait_for(lambda: cleaner(cnode)["passes_total"] > passes
             and cleaner(cnode)["max_dirty_ratio"] == 0.0)
    seen = read_all(cnode, topic)
    tombstones = [k for _, k, v in seen if v is None]
    assert sorted(tombstones) == sorted(f"k{i}" for i in range(50))
    assert len(seen) == 100
    # Then they go, and with them every trace of those keys.
    wait_for(lambda: len(read_all(cnode, topic)) == 50, timeout=60, interval=0.5)
    assert sorted(k for _, k, _ in read_all(cnode, topic)) == sorted(f"k{i}" for i in range(50, 100))


def test_a_reader_never_sees_a_key_go_backwards_during_compaction(cnode):
    topic = "moving"
    create(cnode, topic, {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"})
    stop = threading.Event()

    def write():
        p = Producer({"bootstrap.servers": cnode.bootstrap, "linger.ms": 2})
        seq = 0
        while not stop.is_set() and seq < 2_000_000:
            for _ in range(1000):
                p.produce(topic, key=f"k{seq % 200}", value=str(seq))
                seq += 1
            p.poll(0)
            p.flush(10)

    writer = threading.Thread(target=write)
    writer.start()
    passes0 = cleaner(cnode)["passes_total"]
    scans = 0
    try:
        while scans < 5 or cleaner(cnode)["passes_total"] < passes0 + 5:
            last = {}
            for _, key, value in read_all(cnode, topic):
                v = int(value)
                assert v > last.get(key, -1), f"{key} went from {last[key]} back to {v}"
                last[key] = v
            scans += 1
            assert scans < 200, "the cleaner did not run while reading"
    finally:
        stop.set()
        writer.join()


def test_compaction_survives_kill_9_mid_pass():
    d = tempfile.mkdtemp(prefix="sluice-compact-kill-")
    # A slow cleaner (2 MB/s), so the pass is still running when killed.
    n = SluiceNode(d, CLEANER + ("--log-cleaner-io-max-bytes-per-second", "2000000")).start()
    try:
        topic = "killed"
        admin = create(n, topic, {"cleanup.policy": "compact",
                                  "min.compaction.lag.ms": "3600000"})
        model = produce_changelog(n, topic, 300_000, 1_000, seed=11)
        before = wait_for(lambda: log_size(n, topic))
        alter(admin, topic, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"})
        # Killed once the first chunks of the pass are written.
        wait_for(lambda: log_size(n, topic) < before, timeout=120)
        assert cleaner(n)["passes_total"] == 0
        n.kill9()
        n.extra = list(CLEANER)
        n.start()
        wait_for(lambda: cleaner(n)["passes_total"] >= 1
                 and cleaner(n)["max_dirty_ratio"] == 0.0, timeout=120)
        assert_matches_model(read_all(n, topic), model)
    finally:
        n.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_consumer_offsets_is_compacted(cnode):
    topic = "committed"
    create(cnode, topic, {})
    p = Producer({"bootstrap.servers": cnode.bootstrap})
    for i in range(10):
        p.produce(topic, value=str(i))
    p.flush(30)
    c = Consumer({"bootstrap.servers": cnode.bootstrap, "group.id": "many-commits",
                  "enable.auto.commit": False})
    tp = TopicPartition(topic, 0)
    for i in range(2000):
        c.commit(offsets=[TopicPartition(topic, 0, i % 10 + 1)], asynchronous=False)
    c.close()
    # 2,000 commit records of one key shrink to about one.
    wait_for(lambda: 0 < log_size(cnode, "__consumer_offsets") < 2_000, timeout=60)
    cnode.restart()
    c = Consumer({"bootstrap.servers": cnode.bootstrap, "group.id": "many-commits"})
    [got] = c.committed([tp], timeout=30)
    assert got.offset == 10
    c.close()


def test_compacted_topics_refuse_records_without_a_key(cnode):
    topic = "keys-only"
    create(cnode, topic, {"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": cnode.bootstrap, "retries": 0})
    errors = []
    p.produce(topic, value="no key", on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    c = Consumer({"bootstrap.servers": cnode.bootstrap, "group.id": "x"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 0)
    c.close()
    # With a key, the same topic takes it.
    errors.clear()
    p.produce(topic, key="k", value="v", on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert errors == [None]


def test_only_the_keyless_records_of_a_batch_fail_kip_467(cnode):
    """librdkafka's own test 0011 (test_message_single_partition_record_fail):
    100 records in one batch on a compacted topic, every tenth without a
    key. Kafka names the bad records; a client fails those with
    INVALID_RECORD and, where it knows KIP-467, the others of the batch
    with _INVALID_DIFFERENT_RECORD instead of blaming them all."""
    topic = "kip-467"
    create(cnode, topic, {"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": cnode.bootstrap, "retries": 0,
                  "linger.ms": 1000, "batch.num.messages": 1000})
    # The topic's leader known first: records produced while it is not yet
    # known wait in librdkafka's unassigned queue and may leave it (flush
    # sends at once) in more than one batch.
    assert p.list_topics(topic, timeout=10).topics[topic].error is None
    outcome = []
    for i in range(100):
        key = None if i % 10 == 0 else f"k{i}"
        p.produce(topic, key=key, value=f"v{i}", partition=0,
                  on_delivery=lambda err, msg, i=i: outcome.append((i, err)))
    p.flush(30)
    assert len(outcome) == 100
    failed = sorted(i for i, err in outcome if err is not None and err.code() == KafkaError.INVALID_RECORD)
    different = getattr(KafkaError, "_INVALID_DIFFERENT_RECORD", None)
    if different is not None:
        # A client that reads record_errors blames exactly the keyless ones.
        assert failed == list(range(0, 100, 10)), sorted({str(err) for _, err in outcome})
        others = [err.code() for i, err in outcome if i % 10 != 0]
        assert all(code == different for code in others), set(others)
    else:
        # An older client fails the whole batch with the code alone.
        assert all(err is not None for _, err in outcome)
    # Nothing of the batch was stored.
    c = Consumer({"bootstrap.servers": cnode.bootstrap, "group.id": "x"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 0)
    c.close()
