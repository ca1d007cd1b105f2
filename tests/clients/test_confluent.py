"""librdkafka through confluent-kafka-python against `sluice dev`."""
import time
import warnings
import zlib
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

N = 100_000


def create(node, name, partitions, config=None):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    f = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    f[name].result(30)


def read_all(node, topic, partitions, expected, timeout=120):
    """Reads every partition from the beginning until `expected` messages."""
    c = Consumer({
        "bootstrap.servers": node.bootstrap,
        "group.id": f"reader-{topic}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for m in c.consume(10_000, 1.0):
            if m.error():
                raise KafkaException(m.error())
            out.append(m)
    c.close()
    assert len(out) == expected, f"read {len(out)} of {expected}"
    return out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_keyed_round_trip_acks_all(node, codec):
    topic = f"keyed-{codec}"
    create(node, topic, 3)
    p = Producer({
        "bootstrap.servers": node.bootstrap,
        "acks": "all",
        "compression.codec": codec,
        "linger.ms": 5,
        "queue.buffering.max.messages": 200_000,
    })
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            delivered[int(msg.value())] = (msg.partition(), msg.offset())

    for i in range(N):
        while True:
            try:
                p.produce(topic, key=f"key-{i % 1000}", value=str(i), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors
    assert len(delivered) == N

    msgs = read_all(node, topic, 3, N)
    key_partition = {}
    by_partition = defaultdict(list)
    for m in msgs:
        k = m.key().decode()
        # Each key always lands in the same partition.
        assert key_partition.setdefault(k, m.partition()) == m.partition()
        by_partition[m.partition()].append((m.offset(), int(m.value())))
    for part, items in by_partition.items():
        offsets = [o for o, _ in items]
        assert offsets == list(range(len(items))), "dense, ordered offsets"
        # Per-partition order is produce order.
        values = [v for _, v in items]
        assert values == sorted(values)
        for o, v in items:
            assert delivered[v] == (part, o)
    assert sum(len(v) for v in by_partition.values()) == N


def test_admin_creates_and_deletes_a_topic(node):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic("admin-made", 4, 1, config={"retention.ms": "3600000"})])["admin-made"].result(30)
    md = admin.list_topics(timeout=10)
    assert len(md.topics["admin-made"].partitions) == 4
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("admin-made", 1, 1)])["admin-made"].result(30)
    assert "TOPIC_ALREADY_EXISTS" in str(e.value)
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad-config", 1, 1, config={"retention.ms": "x"})])["bad-config"].result(30)
    assert "INVALID_CONFIG" in str(e.value)
    admin.delete_topics(["admin-made"])["admin-made"].result(30)
    assert "admin-made" not in admin.list_topics(timeout=10).topics


def test_offsets_for_times(node):
    create(node, "times", 1)
    p = Producer({"bootstrap.servers": node.bootstrap})
    base = 1_700_000_000_000
    for i in range(100):
        p.produce("times", value=str(i), timestamp=base + i * 1000)
        if i % 10 == 9:
            p.flush(10)
    p.flush(10)
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "times-reader"})
    got = c.offsets_for_times([TopicPartition("times", 0, base + 42_500)], timeout=10)
    assert got[0].offset == 43
    got = c.offsets_for_times([TopicPartition("times", 0, base + 10_000_000)], timeout=10)
    assert got[0].offset == -1
    lo, hi = c.get_watermark_offsets(TopicPartition("times", 0), timeout=10)
    assert (lo, hi) == (0, 100)
    c.close()


def test_headers_and_timestamps_survive(node):
    create(node, "hdrs", 1)
    p = Producer({"bootstrap.servers": node.bootstrap, "compression.codec": "zstd"})
    p.produce("hdrs", key=b"k", value=b"v", headers=[("a", b"1"), ("b", None)], timestamp=1234567)
    p.flush(10)
    [m] = read_all(node, "hdrs", 1, 1)
    assert m.headers() == [("a", b"1"), ("b", None)]
    assert m.timestamp() == (1, 1234567)


def test_kill9_keeps_every_acknowledged_record(fresh_node):
    create(fresh_node, "durable", 2)
    p = Producer({"bootstrap.servers": fresh_node.bootstrap, "acks": "all", "linger.ms": 2})
    acked = []
    for i in range(20_000):
        p.produce("durable", key=str(i), value=str(i),
                  on_delivery=lambda err, m: err is None and acked.append(int(m.value())))
        p.poll(0)
    p.flush(30)
    assert len(acked) == 20_000
    fresh_node.restart()
    msgs = read_all(fresh_node, "durable", 2, 20_000)
    assert sorted(int(m.value()) for m in msgs) == sorted(acked)


def test_alter_and_describe_topic_configs(node):
    from confluent_kafka.admin import ConfigResource
    create(node, "cfg-topic", 1)
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    res = ConfigResource("topic", "cfg-topic", set_config={"retention.ms": "3600000"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        admin.alter_configs([res])[res].result(30)
    described = admin.describe_configs([ConfigResource("topic", "cfg-topic")])
    configs = list(described.values())[0].result(30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == 1  # DYNAMIC_TOPIC_CONFIG
    assert configs["max.message.bytes"].source == 5  # DEFAULT_CONFIG
    bad = ConfigResource("topic", "cfg-topic", set_config={"retention.ms": "soon"})
    with pytest.raises(KafkaException) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            admin.alter_configs([bad])[bad].result(30)
    assert "INVALID_CONFIG" in str(e.value)
    configs = list(admin.describe_configs([ConfigResource("topic", "cfg-topic")]).values())[0].result(30)
    assert configs["retention.ms"].value == "3600000"


def test_incremental_alter_configs(node):
    from confluent_kafka import admin as kadmin
    if not hasattr(kadmin, "ConfigEntry") or not hasattr(AdminClient, "incremental_alter_configs"):
        pytest.skip("this confluent-kafka predates incremental_alter_configs (added in 2.2)")
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
    create(node, "incr-topic", 1)
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    res = ConfigResource("topic", "incr-topic", incremental_configs=[
        ConfigEntry("retention.bytes", "65536", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET),
    ])
    admin.incremental_alter_configs([res])[res].result(30)
    res = ConfigResource("topic", "incr-topic", incremental_configs=[
        ConfigEntry("retention.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    admin.incremental_alter_configs([res])[res].result(30)
    configs = list(admin.describe_configs([ConfigResource("topic", "incr-topic")]).values())[0].result(30)
    assert configs["retention.bytes"].value == "-1"
    assert configs["message.timestamp.type"].value == "LogAppendTime"


def test_broker_configs_change_topic_defaults(fresh_node):
    """AlterConfigs on a broker resource: dynamic broker configs become the
    defaults of every topic without its own, at once; static ones refuse."""
    from confluent_kafka.admin import ConfigResource
    create(fresh_node, "brk-default", 1)
    admin = AdminClient({"bootstrap.servers": fresh_node.bootstrap})

    def alter(res):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return admin.alter_configs([res])[res].result(30)

    alter(ConfigResource("broker", "0", set_config={
        "log.retention.ms": "120000", "log.cleanup.policy": "compact"}))
    topic = list(admin.describe_configs([ConfigResource("topic", "brk-default")]).values())[0].result(30)
    assert topic["retention.ms"].value == "120000"
    assert topic["retention.ms"].source == 2  # DYNAMIC_BROKER_CONFIG
    assert topic["cleanup.policy"].value == "compact"
    broker = list(admin.describe_configs([ConfigResource("broker", "0")]).values())[0].result(30)
    assert broker["log.retention.ms"].value == "120000"
    assert not broker["log.retention.ms"].is_read_only
    assert broker["broker.id"].is_read_only
    with pytest.raises(KafkaException) as e:
        alter(ConfigResource("broker", "0", set_config={"num.partitions": "3"}))
    assert "INVALID_CONFIG" in str(e.value)
    topic = list(admin.describe_configs([ConfigResource("topic", "brk-default")]).values())[0].result(30)
    assert topic["retention.ms"].value == "120000", "a refused request changes nothing"


def test_describe_topics_and_cluster_with_authorized_operations(node):
    """librdkafka's DescribeTopics (DescribeTopicPartitions where the broker
    offers it) and DescribeCluster: topic ids, partitions, and every
    operation authorized, as Kafka answers without an authorizer."""
    if not hasattr(AdminClient, "describe_topics"):
        pytest.skip("this confluent-kafka predates describe_topics (added in 2.3)")
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation
    create(node, "described", 3)
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    fut = admin.describe_topics(TopicCollection(["described"]),
                                request_timeout=30, include_authorized_operations=True)
    d = fut["described"].result(30)
    assert d.name == "described"
    assert str(d.topic_id) not in ("", "AAAAAAAAAAAAAAAAAAAAAA")
    assert [p.id for p in d.partitions] == [0, 1, 2]
    assert all(p.leader.id == 0 and [r.id for r in p.isr] == [0] for p in d.partitions)
    assert AclOperation.READ in d.authorized_operations
    assert AclOperation.ALTER_CONFIGS in d.authorized_operations
    with pytest.raises(KafkaException) as e:
        admin.describe_topics(TopicCollection(["no-such-topic"]))["no-such-topic"].result(30)
    assert "UNKNOWN_TOPIC" in str(e.value)
    c = admin.describe_cluster(include_authorized_operations=True).result(30)
    assert [n.id for n in c.nodes] == [0]
    assert AclOperation.IDEMPOTENT_WRITE in c.authorized_operations
