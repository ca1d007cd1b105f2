"""TLS, SASL and mutual TLS with real clients (kcat, librdkafka through
confluent-kafka, kafka-python) against `sluice dev` with four listeners:
SSL, SASL_SSL, SASL_PLAINTEXT and PLAINTEXT. Certificates come from the
`openssl` command; users from `--scram-users-file`."""
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import FAST_CLUSTER, SluiceCluster, SluiceNode, _free_port, wait_for

N = 2_000


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A CA, the node's certificate (localhost, 127.0.0.1) and client
    certificates: alice's (signed by the CA), one signed by another CA and
    an expired one."""

    def __init__(self, d):
        self.d = d
        with open(os.path.join(d, "server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        with open(os.path.join(d, "client.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        with open(os.path.join(d, "peer.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        self.ca("ca")
        self.ca("other-ca")
        self.cert("node", "/CN=localhost", "ca", "server.ext")
        self.cert("alice", "/O=Sluice/OU=Test/CN=alice", "ca", "client.ext")
        self.cert("mallory", "/CN=mallory", "other-ca", "client.ext")
        self.cert("expired", "/CN=expired", "ca", "client.ext", days=-1)
        self.cert("peer", "/CN=localhost", "ca", "peer.ext")

    def path(self, name):
        return os.path.join(self.d, name)

    def ca(self, name):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.pem", "-days", "3", "-subj", f"/CN=Sluice test {name}", cwd=self.d)

    def cert(self, name, subject, ca, ext, days=3, out=None):
        out = out or name
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{out}.key", "-out",
                f"{out}.csr", "-subj", subject, cwd=self.d)
        openssl("x509", "-req", "-in", f"{out}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{out}.pem", "-days", str(days), "-extfile", ext,
                cwd=self.d)


class SecureNode:
    def __init__(self, pki, data_dir, extra=(), client_auth="requested"):
        self.pki = pki
        self.ports = {name: _free_port() for name in ("PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT")}
        users = os.path.join(data_dir, "users.txt")
        os.makedirs(data_dir, exist_ok=True)
        with open(users, "w") as f:
            f.write("# the first users\nadmin:admin-secret\nalice:alice-secret\n")
        listeners = ",".join(f"{n}://127.0.0.1:{p}" for n, p in self.ports.items())
        self.node = SluiceNode(os.path.join(data_dir, "data"), [
            "--listeners", listeners,
            "--ssl-cert", pki.path("node.pem"), "--ssl-key", pki.path("node.key"),
            "--ssl-ca", pki.path("ca.pem"), "--ssl-client-auth", client_auth,
            "--scram-users-file", users, *extra,
        ])

    def addr(self, listener):
        return f"127.0.0.1:{self.ports[listener]}"

    def conf(self, listener, user=None, password=None, mechanism="SCRAM-SHA-512", cert=None):
        """librdkafka settings for one listener."""
        c = {"bootstrap.servers": self.addr(listener), "security.protocol": listener.lower()}
        if "SSL" in listener:
            c["ssl.ca.location"] = self.pki.path("ca.pem")
        if "SASL" in listener:
            c.update({"sasl.mechanisms": mechanism, "sasl.username": user or "alice",
                      "sasl.password": password or "alice-secret"})
        if cert:
            c["ssl.certificate.location"] = self.pki.path(f"{cert}.pem")
            c["ssl.key.location"] = self.pki.path(f"{cert}.key")
        return c


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="sluice-pki-")
    yield Pki(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def secure(pki):
    d = tempfile.mkdtemp(prefix="sluice-secure-")
    s = SecureNode(pki, d)
    s.node.start()
    yield s
    s.node.stop()
    shutil.rmtree(d, ignore_errors=True)


def produce(conf, topic, values):
    errors = []
    p = Producer({**conf, "enable.idempotence": True,
                  "error_cb": lambda e: errors.append(e)})
    delivered = []
    for v in values:
        p.produce(topic, v, on_delivery=lambda e, m: delivered.append(e is None))
    left = p.flush(30)
    assert left == 0 and all(delivered) and len(delivered) == len(values), errors
    return delivered


def consume(conf, topic, expected, timeout=60):
    c = Consumer({**conf, "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            assert not m.error(), m.error()
            out.append(m.value())
    c.close()
    return out


@pytest.mark.parametrize("listener,mechanism,cert", [
    ("SSL", None, None),
    ("SASL_SSL", "SCRAM-SHA-512", None),
    ("SASL_SSL", "SCRAM-SHA-256", None),
    ("SASL_PLAINTEXT", "PLAIN", None),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512", None),
])
def test_confluent_kafka_produces_and_consumes_on_every_secured_listener(secure, listener, mechanism, cert):
    conf = secure.conf(listener, mechanism=mechanism, cert=cert)
    topic = f"sec-{listener.lower()}-{(mechanism or cert or 'tls').lower()}"
    values = [f"{listener}-{i}".encode() for i in range(N)]
    produce(conf, topic, values)
    assert sorted(consume(conf, topic, N)) == sorted(values)
    # Metadata sends clients back to the listener they came in on.
    meta = Producer(conf).list_topics(timeout=10)
    assert {(b.host, b.port) for b in meta.brokers.values()} == {("127.0.0.1", secure.ports[listener])}


def test_mutual_tls_clients_connect_with_their_certificate(certs_required):
    conf = certs_required.conf("SSL", cert="alice")
    values = [f"mtls-{i}".encode() for i in range(N)]
    produce(conf, "mtls", values)
    assert sorted(consume(conf, "mtls", N)) == sorted(values)


def kcat(*args, input=None, timeout=30):
    return subprocess.run(["kcat", *args], input=input, capture_output=True, text=True,
                          timeout=timeout)


def test_kcat_over_ssl_and_sasl_ssl_with_scram(secure, pki):
    ssl_args = ["-X", "security.protocol=ssl", "-X", f"ssl.ca.location={pki.path('ca.pem')}"]
    r = kcat("-P", "-b", secure.addr("SSL"), *ssl_args, "-t", "kcat-sec", input="one\ntwo\n")
    assert r.returncode == 0, r.stderr
    scram = ["-X", "security.protocol=sasl_ssl", "-X", f"ssl.ca.location={pki.path('ca.pem')}",
             "-X", "sasl.mechanisms=SCRAM-SHA-512", "-X", "sasl.username=admin",
             "-X", "sasl.password=admin-secret"]
    r = kcat("-P", "-b", secure.addr("SASL_SSL"), *scram, "-t", "kcat-sec", input="three\n")
    assert r.returncode == 0, r.stderr
    r = kcat("-C", "-b", secure.addr("SASL_SSL"), *scram, "-t", "kcat-sec", "-o", "beginning",
             "-e", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["one", "two", "three"]


def test_kafka_python_with_scram_over_sasl_ssl(secure, pki):
    from kafka import KafkaConsumer, KafkaProducer
    common = dict(bootstrap_servers=secure.addr("SASL_SSL"), security_protocol="SASL_SSL",
                  ssl_cafile=pki.path("ca.pem"), sasl_mechanism="SCRAM-SHA-512",
                  sasl_plain_username="alice", sasl_plain_password="alice-secret")
    p = KafkaProducer(**common)
    for i in range(100):
        p.send("kafka-python-sec", f"kp-{i}".encode())
    p.flush(30)
    p.close()
    c = KafkaConsumer("kafka-python-sec", group_id="kp-sec", auto_offset_reset="earliest",
                      consumer_timeout_ms=20_000, **common)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == 100:
            break
    c.close()
    assert sorted(got) == sorted(f"kp-{i}".encode() for i in range(100))


def high_watermark(conf, topic):
    c = Consumer({**conf, "group.id": "hw"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


@pytest.mark.parametrize("what,conf", [
    ("wrong password", dict(listener="SASL_SSL", user="alice", password="not-it")),
    ("unknown user", dict(listener="SASL_SSL", user="nobody", password="alice-secret")),
    ("wrong PLAIN password", dict(listener="SASL_PLAINTEXT", mechanism="PLAIN", password="x")),
])
def test_bad_credentials_write_nothing(secure, what, conf):
    refused_writes_nothing(secure, what, conf)


@pytest.fixture(scope="module")
def certs_required(pki):
    d = tempfile.mkdtemp(prefix="sluice-mtls-")
    s = SecureNode(pki, d, client_auth="required")
    s.node.start()
    yield s
    s.node.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("what,conf", [
    ("no certificate", dict(listener="SSL")),
    ("certificate of another CA", dict(listener="SSL", cert="mallory")),
    ("expired certificate", dict(listener="SSL", cert="expired")),
])
def test_mutual_tls_refuses_missing_untrusted_and_expired_certificates(certs_required, what, conf):
    refused_writes_nothing(certs_required, what, conf, good=dict(listener="SSL", cert="alice"))


def refused_writes_nothing(secure, what, conf, good=None):
    good = secure.conf(**(good or dict(listener="SSL")))
    topic = "refused"
    produce(good, topic, [b"before"])
    before = high_watermark(good, topic)
    errors = []
    p = Producer({**secure.conf(**conf), "error_cb": lambda e: errors.append(e),
                  "message.timeout.ms": 3000})
    p.produce(topic, b"must not land")
    assert p.flush(10) == 0  # the message timed out: it was never written
    codes = {e.code() for e in errors}
    assert codes & {KafkaError._AUTHENTICATION, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                    KafkaError._SSL}, (what, errors)
    assert high_watermark(good, topic) == before, what


def test_tls_garbage_and_plaintext_on_the_tls_port_close_only_that_connection(secure):
    for payload in [b"\x16\x03\x01\x00\x05garbage-that-is-not-tls", b"\x00\x00\x00\x10" + b"\x00" * 16]:
        with socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=10) as s:
            s.sendall(payload)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            # A TLS alert at most, never a Kafka answer; then closed.
            assert not data or data[0] == 0x15, data
    produce(secure.conf("SSL"), "after-garbage", [b"still served"])


def test_a_rotated_certificate_is_served_without_a_restart_and_loses_nothing(secure, pki):
    """The node's certificate and key are replaced (written aside, then
    renamed over) while a producer writes; new connections get the new
    certificate, the producer loses nothing."""
    conf = secure.conf("SSL")

    def served_serial():
        ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
        with socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return s.getpeercert()["serialNumber"]

    def file_serial(path):
        out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().split("=", 1)[1].upper()

    before = served_serial()
    assert before == file_serial(pki.path("node.pem"))
    p = Producer({**conf, "enable.idempotence": True})
    delivered = []
    total = 0
    for i in range(500):
        p.produce("rotation", f"r-{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
        total += 1
    pki.cert("node", "/CN=localhost", "ca", "server.ext", out="node-next")
    for ext in ("key", "pem"):
        os.replace(pki.path(f"node-next.{ext}"), pki.path(f"node.{ext}"))
    after = wait_for(lambda: (s := served_serial()) != before and s)
    assert after == file_serial(pki.path("node.pem"))
    for i in range(500, 1000):
        p.produce("rotation", f"r-{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
        total += 1
    assert p.flush(30) == 0
    assert len(delivered) == total and all(e is None for e in delivered)
    # A new client trusts the new certificate through the same CA.
    assert len(consume(conf, "rotation", total)) == total


@pytest.fixture(scope="module")
def short_sessions(pki):
    d = tempfile.mkdtemp(prefix="sluice-reauth-")
    s = SecureNode(pki, d, ["--connections-max-reauth-ms", "1500"])
    s.node.start()
    yield s
    s.node.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_sessions_expire_and_clients_keep_working(short_sessions):
    """connections.max.reauth.ms: librdkafka 2.2+ authenticates again within
    the session (KIP-368); an older client's connection is closed at its
    first request after the session ended and it reconnects. Either way
    every record arrives."""
    s = short_sessions
    conf = s.conf("SASL_PLAINTEXT", mechanism="SCRAM-SHA-256")
    p = Producer({**conf, "enable.idempotence": True})
    delivered = []
    deadline = time.monotonic() + 5
    sent = 0
    while time.monotonic() < deadline:
        p.produce("reauth", f"m-{sent}".encode(), on_delivery=lambda e, m: delivered.append(e))
        sent += 1
        p.poll(0.05)
    assert p.flush(30) == 0
    assert len(delivered) == sent and all(e is None for e in delivered)
    assert sorted(consume(conf, "reauth", sent)) == sorted(f"m-{i}".encode() for i in range(sent))


def test_nodes_replicate_over_mutual_tls_and_refuse_peers_without_a_certificate(pki):
    """--replication-tls: three nodes replicate acks=all writes to each
    other over mutual TLS; a connection to a replication port without a
    certificate the CA signed is refused, and with
    --replication-server-name (what the operator sets) so is a client
    certificate of the same CA that does not carry the nodes' name."""
    d = tempfile.mkdtemp(prefix="sluice-repl-tls-")
    c = SluiceCluster(d, 3, [*FAST_CLUSTER, "--ssl-cert", pki.path("peer.pem"),
                             "--ssl-key", pki.path("peer.key"), "--ssl-ca", pki.path("ca.pem"),
                             "--replication-tls", "--replication-server-name", "localhost"])
    try:
        c.start()
        replication = c.ready["replication"].split(",")
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        admin.create_topics([NewTopic("replicated", 3, 3, config={"min.insync.replicas": "3"})])[
            "replicated"].result(30)
        conf = {"bootstrap.servers": c.bootstrap}
        values = [f"r-{i}".encode() for i in range(N)]
        produce({**conf, "acks": "all"}, "replicated", values)
        assert sorted(consume(conf, "replicated", N)) == sorted(values)
        for who in (None, "mallory", "alice"):
            ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
            if who:
                ctx.load_cert_chain(pki.path(f"{who}.pem"), pki.path(f"{who}.key"))
            host, port = replication[0].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                        if not s.recv(1):
                            raise ConnectionResetError("closed")
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_the_sluice_command_line_works_over_sasl_ssl(secure, pki):
    """The CLI's librdkafka speaks TLS and SCRAM: librdkafka properties
    with -X, as in a profile."""
    binary = os.environ.get("SLUICE_BIN", "sluice")
    props = ["-b", secure.addr("SASL_SSL"), "-X", "security.protocol=sasl_ssl",
             "-X", f"ssl.ca.location={pki.path('ca.pem')}", "-X", "sasl.mechanisms=SCRAM-SHA-512",
             "-X", "sasl.username=alice", "-X", "sasl.password=alice-secret"]

    def cli(*args, input=None):
        r = subprocess.run([binary, *args, *props], input=input, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    cli("topic", "create", "cli-sec", "-p", "2")
    assert "cli-sec" in cli("topic", "list")
    cli("produce", "cli-sec", input="one\ntwo\nthree\n")
    assert sorted(cli("consume", "cli-sec", "-e").split()) == ["one", "three", "two"]
    r = subprocess.run([binary, "topic", "list", *props[:-2], "-X", "sasl.password=wrong"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error:" in r.stderr, r
    # The single kafka-protocol requests (cluster info, config set) log in
    # the same way: TLS and SCRAM here, PLAIN on the SASL_PLAINTEXT port.
    info = json.loads(cli("cluster", "info", "--json"))
    assert info["nodes"], info
    cli("config", "set", "topic", "cli-sec", "retention.ms=3600000")
    assert "3600000" in cli("config", "get", "topic", "cli-sec", "retention.ms")
    plain = ["-b", secure.addr("SASL_PLAINTEXT"), "-X", "security.protocol=sasl_plaintext",
             "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=alice"]
    r = subprocess.run([binary, "cluster", "info", *plain, "-X", "sasl.password=alice-secret"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # librdkafka's ways of relaxing the checks work here too: host names
    # unchecked (any case), or no verification at all (no CA given).
    login = ["-X", "sasl.mechanisms=SCRAM-SHA-512", "-X", "sasl.username=alice",
             "-X", "sasl.password=alice-secret", "-b", secure.addr("SASL_SSL"),
             "-X", "security.protocol=SASL_SSL"]
    for relaxed in (["-X", f"ssl.ca.location={pki.path('ca.pem')}",
                     "-X", "ssl.endpoint.identification.algorithm=NONE"],
                    ["-X", "enable.ssl.certificate.verification=false"]):
        r = subprocess.run([binary, "cluster", "info", *login, *relaxed],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    for bad in (["cluster", "info", *plain, "-X", "sasl.password=wrong"],
                ["config", "set", "topic", "cli-sec", "retention.ms=1", *props[:-2],
                 "-X", "sasl.password=wrong"]):
        r = subprocess.run([binary, *bad], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "authentication failed" in r.stderr.lower(), r
