"""kafka-python (its own protocol code and partitioner) against `sluice dev`."""
from collections import defaultdict

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

N = 20_000


def test_round_trip_with_its_own_partitioner(node):
    admin = KafkaAdminClient(bootstrap_servers=node.bootstrap)
    admin.create_topics([NewTopic("kp-topic", 3, 1)])
    producer = KafkaProducer(bootstrap_servers=node.bootstrap, acks="all", linger_ms=5)
    futures = [producer.send("kp-topic", key=f"k{i % 100}".encode(), value=str(i).encode())
               for i in range(N)]
    producer.flush()
    meta = [f.get(timeout=30) for f in futures]
    assert len(meta) == N
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=node.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10_000)
    parts = [TopicPartition("kp-topic", p) for p in range(3)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = defaultdict(list)
    key_part = {}
    count = 0
    for m in consumer:
        assert key_part.setdefault(m.key, m.partition) == m.partition
        seen[m.partition].append((m.offset, int(m.value)))
        count += 1
        if count == N:
            break
    consumer.close()
    assert count == N
    for part, items in seen.items():
        assert [o for o, _ in items] == list(range(len(items)))
        values = [v for _, v in items]
        assert values == sorted(values)
    # The offsets the producer was told match what the consumer read.
    told = {(md.partition, md.offset) for md in meta}
    assert told == {(p, o) for p, items in seen.items() for o, _ in items}


def test_admin_and_metadata(node):
    admin = KafkaAdminClient(bootstrap_servers=node.bootstrap)
    admin.create_topics([NewTopic("kp-admin", 2, 1, topic_configs={"retention.bytes": "1048576"})])
    assert "kp-admin" in admin.list_topics()
    consumer = KafkaConsumer(bootstrap_servers=node.bootstrap)
    assert consumer.partitions_for_topic("kp-admin") == {0, 1}
    end = consumer.end_offsets([TopicPartition("kp-admin", 0)])
    assert end[TopicPartition("kp-admin", 0)] == 0
    consumer.close()
    admin.delete_topics(["kp-admin"])
    assert "kp-admin" not in admin.list_topics()


def test_alter_and_describe_configs(node):
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=node.bootstrap)
    admin.create_topics([NewTopic("kp-cfg", 1, 1)])
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp-cfg",
                                        configs={"retention.bytes": "123456"})])
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp-cfg")])
    text = repr(described)
    assert "retention.bytes" in text and "123456" in text


def test_broker_configs_change_topic_defaults(fresh_node):
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=fresh_node.bootstrap)
    try:
        admin.create_topics([NewTopic("kp-brk", 1, 1)])
        admin.alter_configs([ConfigResource(ConfigResourceType.BROKER, "0",
                                            configs={"log.retention.bytes": "1048576"})])
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp-brk")])
        # kafka-python 2.0 answers with the raw responses, 3.0 with a dict.
        text = repr(described)
        assert "retention.bytes" in text and "1048576" in text
    finally:
        admin.close()
