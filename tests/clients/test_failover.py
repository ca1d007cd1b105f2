"""Leader failover under load with librdkafka, checked against a history.

Idempotent producers with acks=all write to a replicated topic (RF=3,
min.insync.replicas=2) on `sluice dev --nodes 3` while the partition's leader
is stopped (as a crash would) twice and brought back. Afterwards every
acknowledged record must be read back exactly once, in the order its producer
wrote it, at the offset it was acknowledged with."""
import threading
import time

import pytest

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import wait_for

RECORDS = 200_000
PRODUCERS = 2
TOPIC = "history"


def partition_info(admin, topic, partition=0):
    md = admin.list_topics(topic=topic, timeout=10)
    p = md.topics[topic].partitions.get(partition)
    return p


def java_hash(s):
    h = 0
    for ch in s:  # ASCII group ids: one UTF-16 unit per character
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def coordinator_of(admin, group, partitions=50):
    """The node leading the group's __consumer_offsets partition (Kafka's rule)."""
    h = java_hash(group)
    p = 0 if h == -(1 << 31) else abs(h) % partitions
    return partition_info(admin, "__consumer_offsets", p).leader


class History:
    """What each producer was told about each record."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # value -> offset
        self.failed = {}  # value -> error

    def callback(self, err, msg):
        value = msg.value().decode()
        with self.lock:
            if err is None:
                self.acked[value] = msg.offset()
            else:
                self.failed[value] = err

    def count(self):
        with self.lock:
            return len(self.acked) + len(self.failed)


def failover_time(bootstrap, history, stopped_at, n):
    """From the leader's loss to the acknowledgement of a record produced
    after it: only the new leader can have written that record."""
    probe = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "acks": "all", "message.timeout.ms": 120000})
    probe.produce(TOPIC, value=f"probe:{n}".encode(), partition=0, on_delivery=history.callback)
    assert probe.flush(120) == 0
    return time.monotonic() - stopped_at


def produce_all(bootstrap, history, index, count):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    for seq in range(count):
        value = f"{index}:{seq}".encode()
        while True:
            try:
                p.produce(TOPIC, value=value, partition=0, on_delivery=history.callback)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(180) == 0


def test_acknowledged_records_survive_two_leader_failovers(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    futures = admin.create_topics([NewTopic(
        TOPIC, num_partitions=1, replication_factor=3,
        config={"min.insync.replicas": "2"})])
    futures[TOPIC].result(30)
    wait_for(lambda: len(partition_info(admin, TOPIC).isrs) == 3)

    history = History()
    per_producer = RECORDS // PRODUCERS
    producers = [threading.Thread(target=produce_all,
                                  args=(cluster.bootstrap, history, i, per_producer))
                 for i in range(PRODUCERS)]
    for t in producers:
        t.start()

    failovers = []
    for n, threshold in enumerate((RECORDS // 4, RECORDS // 2)):
        wait_for(lambda: history.count() >= threshold, timeout=300, interval=0.01)
        leader = partition_info(admin, TOPIC).leader
        cluster.stop_node(leader)
        stopped_at = time.monotonic()
        failovers.append(failover_time(cluster.bootstrap, history, stopped_at, n))
        new_leader = partition_info(admin, TOPIC).leader
        assert new_leader not in (leader, -1)
        cluster.start_node(leader)
        # The old leader catches up from the new one and rejoins the ISR.
        wait_for(lambda: len(partition_info(admin, TOPIC).isrs) == 3, timeout=120)

    for t in producers:
        t.join(300)
    print(f"\nfailover times (leader lost -> first acks=all write acknowledged): "
          f"{', '.join(f'{f:.2f} s' for f in failovers)}")

    assert not history.failed, f"{len(history.failed)} records failed: {list(history.failed.items())[:3]}"
    assert len(history.acked) == RECORDS + len(failovers)

    # Read everything back from the current leader.
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "history-check",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    _, high = c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
    c.assign([TopicPartition(TOPIC, 0, 0)])
    seen = []
    while len(seen) < high:
        for m in c.consume(10000, timeout=5):
            assert m.error() is None, m.error()
            seen.append((m.offset(), m.value().decode()))
    c.close()

    values = [v for _, v in seen]
    assert len(values) == len(set(values)), "a record appears twice"
    assert set(values) == set(history.acked), "acknowledged records are missing"
    for offset, value in seen:
        assert history.acked[value] == offset, f"{value} read at {offset}, acked at {history.acked[value]}"
    # Each producer's records in the order it sent them.
    last = {}
    for _, value in seen:
        if value.startswith("probe:"):
            continue
        producer, seq = map(int, value.split(":"))
        assert seq == last.get(producer, -1) + 1, f"producer {producer}: {seq} after {last.get(producer)}"
        last[producer] = seq


def test_group_keeps_working_across_a_coordinator_failover(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic("orders", num_partitions=6, replication_factor=3,
                                  config={"min.insync.replicas": "2"})])["orders"].result(30)
    wait_for(lambda: all(len(p.isrs) == 3 for p in
                         admin.list_topics(topic="orders", timeout=10).topics["orders"].partitions.values()))
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(1000):
        p.produce("orders", key=str(i).encode(), value=str(i).encode())
    assert p.flush(60) == 0

    group = "billing"
    wait_for(lambda: coordinator_of(admin, group) >= 0)
    coordinator = coordinator_of(admin, group)
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe(["orders"])
    seen = set()

    def consume_until(n):
        deadline = time.monotonic() + 120
        while len(seen) < n and time.monotonic() < deadline:
            batch = consumer.consume(50, timeout=1)
            if not batch:
                continue
            for m in batch:
                assert m.error() is None, m.error()
                seen.add(m.value().decode())
            consumer.commit(asynchronous=False)

    consume_until(500)
    assert len(seen) >= 500
    cluster.stop_node(coordinator)
    wait_for(lambda: coordinator_of(admin, group) not in (coordinator, -1), timeout=60)
    consume_until(1000)
    assert seen == {str(i) for i in range(1000)}
    # The commits made through the new coordinator are there for the group.
    committed = consumer.committed([TopicPartition("orders", i) for i in range(6)], timeout=30)
    consumer.close()
    # Watermarks from a client that never knew the stopped node: librdkafka
    # 2.0's watermark query can wait forever on a broker that went away.
    probe = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "probe"})
    total = 0
    for tp in committed:
        _, high = probe.get_watermark_offsets(tp, timeout=10)
        assert tp.offset == high, f"partition {tp.partition}: committed {tp.offset}, end {high}"
        total += high
    probe.close()
    assert total == 1000


def test_admin_clients_elect_the_preferred_leader_back(cluster):
    """ElectLeaders from librdkafka's admin client (confluent-kafka >= 2.4)
    and kafka-python's (>= 3.0): leadership returns to the preferred replica
    after a failover moved it away."""
    from confluent_kafka import TopicPartition as TP
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    if not hasattr(admin, "elect_leaders"):
        pytest.skip("this confluent-kafka predates elect_leaders (added in 2.4)")
    from confluent_kafka import ElectionType
    admin.create_topics([NewTopic("prefer", 2, 3)])["prefer"].result(30)

    def parts():
        return admin.list_topics(topic="prefer", timeout=10).topics["prefer"].partitions

    wait_for(lambda: all(len(p.isrs) == 3 for p in parts().values()))
    preferred = {i: p.replicas[0] for i, p in parts().items()}
    victim = preferred[0]
    cluster.stop_node(victim)
    wait_for(lambda: parts()[0].leader not in (victim, -1))
    cluster.start_node(victim)
    wait_for(lambda: all(len(p.isrs) == 3 for p in parts().values()), timeout=60)
    assert parts()[0].leader != victim
    results = admin.elect_leaders(ElectionType.PREFERRED, [TP("prefer", 0)]).result(30)
    assert results[TP("prefer", 0)] is None
    wait_for(lambda: parts()[0].leader == victim)
    # kafka-python's admin client, where it has ElectLeaders (3.0): the
    # other partition's preferred replica leads already, nothing to elect.
    from kafka.admin import KafkaAdminClient
    if hasattr(KafkaAdminClient, "elect_leaders"):
        from kafka.errors import ElectionNotNeededError
        ka = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        try:
            r = ka.elect_leaders(0, {"prefer": [1]}, raise_errors=False)
            codes = [p.error_code for t in r.replica_election_results for p in t.partition_result]
            assert codes == [ElectionNotNeededError.errno]
        finally:
            ka.close()


def test_kafka_python_reassigns_partitions(cluster):
    """AlterPartitionReassignments and ListPartitionReassignments from
    kafka-python's admin client (>= 3.0); librdkafka's admin API has none."""
    from kafka.admin import KafkaAdminClient
    if not hasattr(KafkaAdminClient, "alter_partition_reassignments"):
        pytest.skip("this kafka-python predates partition reassignment (added in 3.0)")
    from kafka import TopicPartition as KTP
    from kafka.errors import InvalidReplicationAssignmentError
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic("moving", 1, 1)])["moving"].result(30)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(100):
        p.produce("moving", value=str(i).encode(), partition=0)
    assert p.flush(30) == 0

    def part():
        return admin.list_topics(topic="moving", timeout=10).topics["moving"].partitions[0]

    wait_for(lambda: part().leader >= 0)
    before = part().replicas
    target = [n for n in range(3) if n not in before]
    ka = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        assert ka.alter_partition_reassignments({KTP("moving", 0): [9]}) == {
            KTP("moving", 0): InvalidReplicationAssignmentError}
        assert ka.alter_partition_reassignments({KTP("moving", 0): target}) == {KTP("moving", 0): None}
        wait_for(lambda: part().replicas == target and len(part().isrs) == 2, timeout=60)
        assert ka.list_partition_reassignments() == {}
    finally:
        ka.close()
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "moved",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("moving", 0, 0)])
    seen = []
    while len(seen) < 100:
        seen += [m.value().decode() for m in c.consume(100, timeout=5) if m.error() is None]
    c.close()
    assert seen == [str(i) for i in range(100)]


def test_unclean_leader_election_enable_brings_an_offline_partition_back(cluster):
    """With only out-of-sync replicas alive, a partition stays offline
    (no data loss) until unclean.leader.election.enable is set on the topic;
    then the controller elects the live replica at once."""
    from confluent_kafka.admin import ConfigResource
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic("unclean", 1, replica_assignment=[[0, 1]])])["unclean"].result(30)
    wait_for(lambda: len(partition_info(admin, "unclean").isrs) == 2)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": 1})
    # Node 1 stops and falls out of the ISR; node 0 takes more records.
    cluster.stop_node(1)
    wait_for(lambda: partition_info(admin, "unclean").isrs == [0], timeout=60)
    for i in range(10):
        p.produce("unclean", value=f"only-on-0-{i}")
    assert p.flush(30) == 0
    cluster.stop_node(0)
    cluster.start_node(1)
    # Node 1 is alive but not in sync: no clean election is possible.
    wait_for(lambda: 1 in admin.list_topics(timeout=10).brokers
             and partition_info(admin, "unclean").leader == -1, timeout=60)
    deadline = time.monotonic() + 3  # over a lease period (FAST_CLUSTER: 2 s)
    while time.monotonic() < deadline:
        assert partition_info(admin, "unclean").leader == -1
        time.sleep(0.1)
    res = ConfigResource("topic", "unclean",
                         set_config={"unclean.leader.election.enable": "true"})
    admin.alter_configs([res])[res].result(30)
    wait_for(lambda: partition_info(admin, "unclean").leader == 1, timeout=60)
    for i in range(3):
        p.produce("unclean", value=f"after-{i}")
    assert p.flush(30) == 0
