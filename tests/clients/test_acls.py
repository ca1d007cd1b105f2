"""ACLs with real clients: `sluice dev --authorizer` on a SASL_PLAINTEXT
listener, `User:admin` a super user. ACLs are created, listed and deleted
with kafka-python's admin client (CreateAcls, DescribeAcls, DeleteAcls);
librdkafka clients are refused as Kafka refuses them."""
import os
import shutil
import tempfile
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                         KafkaAdminClient, ResourcePattern, ResourcePatternFilter, ResourceType)

from conftest import SluiceNode, _free_port, wait_for


class AclNode:
    def __init__(self, d):
        self.port = _free_port()
        os.makedirs(d, exist_ok=True)
        users = os.path.join(d, "users.txt")
        with open(users, "w") as f:
            f.write("admin:admin-secret\nalice:alice-secret\nbob:bob-secret\n")
        self.node = SluiceNode(os.path.join(d, "data"), [
            "--listeners", f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "--scram-users-file", users, "--authorizer", "--super-users", "User:admin",
        ])

    def conf(self, user):
        return {"bootstrap.servers": f"127.0.0.1:{self.port}", "security.protocol": "sasl_plaintext",
                "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": user,
                "sasl.password": f"{user}-secret"}

    def admin(self):
        return KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.port}",
                                security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                                sasl_plain_username="admin", sasl_plain_password="admin-secret")


@pytest.fixture(scope="module")
def acl_node():
    d = tempfile.mkdtemp(prefix="sluice-acl-")
    n = AclNode(d)
    n.node.start()
    admin = AdminClient(n.conf("admin"))
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in ("orders", "payments", "logs-app")])
    for f in futures.values():
        f.result(30)
    p = Producer(n.conf("admin"))
    for i in range(10):
        p.produce("orders", f"order-{i}".encode())
    assert p.flush(30) == 0
    yield n
    n.node.stop()
    shutil.rmtree(d, ignore_errors=True)


def acl(principal, op, rtype, name, pattern=ACLResourcePatternType.LITERAL,
        permission=ACLPermissionType.ALLOW):
    return ACL(principal=principal, host="*", operation=op, permission_type=permission,
               resource_pattern=ResourcePattern(rtype, name, pattern))


def create(node, *acls):
    a = node.admin()
    try:
        result = a.create_acls(list(acls))
        assert not result["failed"], result["failed"]
    finally:
        a.close()


def delete(node, *acls):
    a = node.admin()
    try:
        filters = [ACLFilter(principal=x.principal, host=x.host, operation=x.operation,
                             permission_type=x.permission_type,
                             resource_pattern=ResourcePatternFilter(
                                 x.resource_pattern.resource_type,
                                 x.resource_pattern.resource_name,
                                 x.resource_pattern.pattern_type)) for x in acls]
        for _filter, matched, error in a.delete_acls(filters):
            assert error is None or error == KafkaError.NO_ERROR or "NoError" in str(error), error
            assert matched, "the filter matched no ACL"
    finally:
        a.close()


def consume_errors_or_values(conf, topic, group, want, timeout=30):
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    values, errors = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(values) < want and not errors:
        for m in c.consume(100, 0.5):
            (errors.append(m.error()) if m.error() else values.append(m.value()))
    c.close()
    return values, errors


def produce_error(conf, topic):
    errs = []
    p = Producer({**conf, "message.timeout.ms": 5000})
    p.produce(topic, b"x", on_delivery=lambda e, m: errs.append(e))
    p.flush(15)
    return errs[0]


def test_a_reader_reads_one_topic_and_cannot_write_it_or_see_others(acl_node):
    create(acl_node,
           acl("User:alice", ACLOperation.READ, ResourceType.TOPIC, "orders"),
           acl("User:alice", ACLOperation.READ, ResourceType.GROUP, "alice-", ACLResourcePatternType.PREFIXED))
    conf = acl_node.conf("alice")
    values, errors = consume_errors_or_values(conf, "orders", f"alice-{uuid.uuid4()}", 10)
    assert not errors and sorted(values) == sorted(f"order-{i}".encode() for i in range(10))
    err = produce_error(conf, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # Metadata hides what alice may not describe.
    topics = set(Producer(conf).list_topics(timeout=10).topics)
    assert "orders" in topics and "payments" not in topics and "logs-app" not in topics
    _, errors = consume_errors_or_values(conf, "payments", f"alice-{uuid.uuid4()}", 1)
    assert errors and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors


def test_a_group_acl_gates_consumer_groups(acl_node):
    create(acl_node, acl("User:bob", ACLOperation.READ, ResourceType.TOPIC, "orders"))
    conf = acl_node.conf("bob")
    _, errors = consume_errors_or_values(conf, "orders", "bobs-group", 1)
    assert errors and errors[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, errors
    create(acl_node, acl("User:bob", ACLOperation.READ, ResourceType.GROUP, "bobs-group"))
    values, errors = consume_errors_or_values(conf, "orders", "bobs-group", 10)
    assert not errors and len(values) == 10


def test_a_prefixed_acl_covers_every_topic_with_the_prefix(acl_node):
    conf = acl_node.conf("bob")
    err = produce_error(conf, "logs-app")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    create(acl_node, acl("User:bob", ACLOperation.WRITE, ResourceType.TOPIC, "logs-",
                         ACLResourcePatternType.PREFIXED))
    assert produce_error(conf, "logs-app") is None
    assert produce_error(conf, "payments").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_acls_are_listed_and_a_deleted_acl_takes_effect_without_reconnecting(acl_node):
    a = acl_node.admin()
    try:
        listed, error = a.describe_acls(ACLFilter(
            principal="User:alice", host=None, operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        a.close()
    assert {(x.resource_pattern.resource_name, x.operation) for x in listed} == {
        ("orders", ACLOperation.READ), ("alice-", ACLOperation.READ)}
    conf = acl_node.conf("alice")
    c = Consumer({**conf, "group.id": f"alice-{uuid.uuid4()}", "enable.auto.commit": False})
    c.assign([TopicPartition("orders", 0, 0)])
    got = []
    wait_for(lambda: got.extend(m for m in c.consume(100, 0.5) if not m.error()) or len(got) >= 10)
    delete(acl_node, acl("User:alice", ACLOperation.READ, ResourceType.TOPIC, "orders"))
    p = Producer(acl_node.conf("admin"))
    p.produce("orders", b"after the delete")
    assert p.flush(30) == 0
    # The same connection's next fetches are refused.
    errors = []
    wait_for(lambda: errors.extend(m.error() for m in c.consume(100, 0.5) if m.error()) or errors)
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors
    c.close()


def test_without_the_cluster_acl_users_cannot_manage_acls(acl_node):
    a = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{acl_node.port}",
                         security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                         sasl_plain_username="alice", sasl_plain_password="alice-secret")
    try:
        result = a.create_acls([acl("User:alice", ACLOperation.ALL, ResourceType.TOPIC, "*")])
    finally:
        a.close()
    assert result["failed"] and not result["succeeded"], result
