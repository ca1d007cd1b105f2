"""Fixtures that run the real `sluice` binary for client tests.

The binary comes from SLUICE_BIN (set by scripts/test.sh); each test module
gets its own node on free loopback ports and a fresh data directory.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

CRDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crds")


def read_ready(proc, prefix):
    """The `key=value` fields of the line starting with `prefix` a process
    prints once it is ready (`sluice ready ...`, `localkube ready ...`)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"exited with {proc.wait()}")
        if line.startswith(prefix):
            return dict(kv.split("=", 1) for kv in line.split()[2:])


def install_crds(kubeconfig):
    """`kubectl apply -f crds/`: the Topic and ConsumerGroup resources that
    `--metadata kubernetes` keeps topics in."""
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply",
                    "-f", CRDS], check=True, capture_output=True, timeout=60)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SluiceNode:
    def __init__(self, data_dir, extra=()):
        self.data_dir = data_dir
        self.extra = list(extra)
        self.port = None
        self.admin_port = None
        self.proc = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        binary = os.environ.get("SLUICE_BIN", "sluice")
        listen = f"127.0.0.1:{self.port or 0}"
        admin = f"127.0.0.1:{self.admin_port or 0}"
        self.proc = subprocess.Popen(
            [binary, "dev", "--listen", listen, "--admin-listen", admin,
             "--data-dir", self.data_dir, *self.extra],
            stdout=subprocess.PIPE, stderr=None, text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"sluice exited with {self.proc.wait()}")
            if line.startswith("sluice ready "):
                fields = dict(kv.split("=", 1) for kv in line.split()[2:])
                self.port = int(fields["kafka"].rsplit(":", 1)[1])
                self.admin_port = int(fields["admin"].rsplit(":", 1)[1])
                return self
        raise RuntimeError("sluice did not become ready")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self):
        self.kill9()
        return self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


class SluiceCluster:
    """`sluice dev --nodes N`: N nodes in one process, on free loopback
    ports, with its control input (`stop I`, `start I`, `stats`)."""

    def __init__(self, data_dir, nodes=3, extra=()):
        self.data_dir = data_dir
        self.nodes = nodes
        self.extra = list(extra)
        self.proc = None
        self.kafka = []

    @property
    def bootstrap(self):
        return ",".join(self.kafka)

    def start(self):
        binary = os.environ.get("SLUICE_BIN", "sluice")
        self.proc = subprocess.Popen(
            [binary, "dev", "--nodes", str(self.nodes), "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--data-dir", self.data_dir, *self.extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"sluice exited with {self.proc.wait()}")
            if line.startswith("sluice ready "):
                fields = dict(kv.split("=", 1) for kv in line.split()[2:])
                self.kafka = fields["kafka"].split(",")
                self.ready = fields
                return self

    def control(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop_node(self, i):
        answer = self.control(f"stop {i}")
        assert answer.startswith(f"stopped {i}"), answer

    def start_node(self, i):
        answer = self.control(f"start {i}")
        assert answer.startswith(f"started {i}"), answer

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Short leases and replica lag, so failures are noticed within seconds.
FAST_CLUSTER = ("--lease-duration-ms", "2000", "--replica-lag-time-max-ms", "2000")


@pytest.fixture
def cluster():
    d = tempfile.mkdtemp(prefix="sluice-cluster-")
    c = SluiceCluster(d, 3, FAST_CLUSTER).start()
    yield c
    c.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def node():
    d = tempfile.mkdtemp(prefix="sluice-test-")
    n = SluiceNode(d).start()
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fresh_node():
    d = tempfile.mkdtemp(prefix="sluice-test-")
    n = SluiceNode(d).start()
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)


def wait_for(fn, timeout=30.0, interval=0.05):
    """Polls fn until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
