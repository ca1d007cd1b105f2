"""The idempotent producer against connections lost after a produce request
was sent but before its response arrived: retries must not write twice."""
import shutil
import socket
import struct
import tempfile
import threading

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SluiceNode


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


class DroppingProxy:
    """Forwards Kafka connections to a node. Every `every`-th produce response
    is swallowed and the connection cut, `budget` times in all."""

    def __init__(self, every=7, budget=6):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.target = None
        self.every = every
        self.budget = budget
        self.produces = 0
        self.dropped = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            produce_ids = set()
            threading.Thread(target=self._up, args=(client, upstream, produce_ids), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, produce_ids), daemon=True).start()

    def _up(self, client, upstream, produce_ids):
        try:
            while True:
                head = read_exact(client, 4)
                body = read_exact(client, struct.unpack(">i", head)[0])
                api_key, _, correlation = struct.unpack(">hhi", body[:8])
                if api_key == 0:
                    produce_ids.add(correlation)
                upstream.sendall(head + body)
        except (ConnectionError, OSError):
            for s in (client, upstream):
                s.close()

    def _down(self, upstream, client, produce_ids):
        try:
            while True:
                head = read_exact(upstream, 4)
                body = read_exact(upstream, struct.unpack(">i", head)[0])
                correlation = struct.unpack(">i", body[:4])[0]
                if correlation in produce_ids:
                    with self.lock:
                        self.produces += 1
                        drop = self.dropped < self.budget and self.produces % self.every == 0
                        if drop:
                            self.dropped += 1
                    if drop:
                        # The node has written the batch; the client never hears.
                        raise ConnectionError("dropped")
                client.sendall(head + body)
        except (ConnectionError, OSError):
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.listener.close()


def test_retries_after_lost_responses_write_each_record_once():
    proxy = DroppingProxy()
    d = tempfile.mkdtemp(prefix="sluice-test-")
    node = SluiceNode(d, ["--advertised-address", f"127.0.0.1:{proxy.port}"]).start()
    proxy.target = ("127.0.0.1", node.port)
    bootstrap = f"127.0.0.1:{proxy.port}"
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("idem", 3, 1)])["idem"].result(30)
        p = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 200,
            "message.timeout.ms": 60000,
        })
        n = 20_000
        acked = {}
        errors = []

        def on_delivery(err, msg):
            if err:
                errors.append(err)
            else:
                acked[int(msg.value())] = (msg.partition(), msg.offset())

        for i in range(n):
            while True:
                try:
                    p.produce("idem", key=str(i % 97), value=str(i), on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        assert p.flush(60) == 0
        assert not errors, errors[:3]
        assert proxy.dropped > 0, "the proxy never cut a connection"
        assert len(acked) == n

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "idem-check",
                      "enable.auto.commit": False})
        c.assign([TopicPartition("idem", q, -2) for q in range(3)])
        got = []
        while len(got) < n:
            batch = c.consume(5000, 5.0)
            if not batch:
                break
            got += [m for m in batch if not m.error()]
        c.close()
        values = [int(m.value()) for m in got]
        # Exactly once: no duplicates and nothing missing.
        assert len(values) == n and set(values) == set(range(n))
        # In order within each partition, at the offsets the producer was told.
        for q in range(3):
            mine = [(m.offset(), int(m.value())) for m in got if m.partition() == q]
            assert [v for _, v in mine] == sorted(v for _, v in mine)
            assert all(acked[v] == (q, o) for o, v in mine)
        print(f"\nIDEMPOTENCE responses dropped={proxy.dropped} records={n} duplicates=0")
    finally:
        node.stop()
        proxy.close()
        shutil.rmtree(d, ignore_errors=True)
