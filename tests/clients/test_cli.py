"""The `sluice` command line against real brokers: the quickstart
walkthrough on `sluice dev`, keys landing where Kafka's partitioner puts
them, group lag and offset resets, `cluster health` on a stopped node,
configs, bad input (one-line errors, non-zero exits), the terminal as a
person sees it (tmux), and a second Kafka-compatible broker (Tansu) to show
the commands depend on the protocol only."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from kafka.partitioner.default import murmur2

from conftest import SluiceNode, wait_for

BIN = os.environ.get("SLUICE_BIN", "sluice")


def sluice(bootstrap, *args, input=None, check=True, env=None):
    """Runs `sluice ARGS` with SLUICE_BROKERS set; returns the process."""
    out = subprocess.run([BIN, *args], input=input, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SLUICE_BROKERS": bootstrap, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"sluice {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out


def sluice_json(bootstrap, *args):
    return json.loads(sluice(bootstrap, *args, "--json").stdout)


def one_line_error(out, *needles):
    """A failure reported as one `error:` line naming what went wrong."""
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "panicked" not in out.stderr and "backtrace" not in out.stderr.lower()
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def kafka_partition(key, partitions):
    """Where Kafka's Java client puts a key: murmur2, positive, modulo."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_walkthrough_topics_keys_groups_and_resets(fresh_node):
    b = fresh_node.bootstrap
    assert sluice(b, "topic", "create", "golang-test", "-p", "3").stdout.strip() == \
        "created topic golang-test"
    sluice(b, "produce", "golang-test", input="one\ntwo\nthree\n")
    out = sluice(b, "consume", "golang-test", "-e", "-f", "%p %o %v\\n").stdout
    rows = [line.split(" ", 2) for line in out.splitlines()]
    assert sorted(r[2] for r in rows) == ["one", "three", "two"]
    for p in {r[0] for r in rows}:
        offsets = [int(r[1]) for r in rows if r[0] == p]
        assert offsets == list(range(len(offsets))), out

    # From a time: everything since the epoch, nothing from the future.
    assert sorted(sluice(b, "consume", "golang-test", "-e", "-o", "@0").stdout.split()) == \
        ["one", "three", "two"]
    assert sluice(b, "consume", "golang-test", "-e", "-o", "@2100-01-01").stdout == ""

    listed = sluice_json(b, "topic", "list")
    assert {"name": "golang-test", "partitions": 3, "replicas": 1} in listed
    described = sluice_json(b, "topic", "describe", "golang-test")[0]
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert all(p["leader"] == 0 and p["isr"] == [0] for p in described["partitions"])
    assert sum(p["high_watermark"] for p in described["partitions"]) == 3

    # Keys land by Kafka's partitioner, in order per key; headers travel.
    sluice(b, "produce", "golang-test", "-K", ":", "-H", "source=readme",
           input="user1:hello\nuser2:world\nuser1:again\n")
    records = [json.loads(line) for line in
               sluice(b, "consume", "golang-test", "-e", "--json").stdout.splitlines()]
    keyed = [r for r in records if r["key"]]
    assert len(keyed) == 3
    for r in keyed:
        assert r["partition"] == kafka_partition(r["key"], 3), r
        assert r["headers"] == [{"key": "source", "value": "readme"}]
    assert [r["value"] for r in keyed if r["key"] == "user1"] == ["hello", "again"]

    # A group reads everything and commits: lag falls to zero.
    sluice(b, "consume", "golang-test", "-g", "readers", "-e")
    group = sluice_json(b, "group", "describe", "readers")
    assert group["state"] == "Empty" and group["total_lag"] == 0
    assert sum(o["committed"] or 0 for o in group["offsets"]) == 6
    sluice(b, "produce", "golang-test", input="four\nfive\n")
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == 2
    out = sluice(b, "consume", "golang-test", "-g", "readers", "-e").stdout
    assert sorted(out.split()) == ["five", "four"]
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == 0

    # reset-offsets prints a plan by default and applies it with --execute.
    plan = sluice_json(b, "group", "reset-offsets", "readers", "--to-earliest")
    assert plan["executed"] is False and all(p["new"] == 0 for p in plan["partitions"])
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == 0
    sluice(b, "group", "reset-offsets", "readers", "--to-earliest", "--execute")
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == 8
    replay = sluice(b, "consume", "golang-test", "-g", "readers", "-e").stdout.split()
    assert sorted(replay) == sorted(["one", "two", "three", "hello", "world", "again",
                                     "four", "five"])
    sluice(b, "group", "reset-offsets", "readers", "--to-datetime", "2100-01-01T00:00:00Z",
           "--execute")
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == 0
    with_data = sum(1 for o in sluice_json(b, "group", "describe", "readers")["offsets"]
                    if (o["committed"] or 0) > 0)
    sluice(b, "group", "reset-offsets", "readers", "--shift-by", "-1", "--execute")
    assert sluice_json(b, "group", "describe", "readers")["total_lag"] == with_data

    # -n, -o -N and a partition.
    assert len(sluice(b, "consume", "golang-test", "-n", "2").stdout.split()) == 2
    last = sluice(b, "consume", "golang-test", "-p", "0", "-o", "-1", "-e", "-f", "%o\\n").stdout
    end = next(p["high_watermark"] for p in
               sluice_json(b, "topic", "describe", "golang-test")[0]["partitions"]
               if p["partition"] == 0)
    assert last.split() == [str(end - 1)]

    # Alter, add partitions, delete.
    sluice(b, "topic", "alter", "golang-test", "-c", "retention.ms=3600000")
    got = sluice_json(b, "config", "get", "topic", "golang-test", "retention.ms")
    assert got == [{"name": "retention.ms", "value": "3600000", "source": "DynamicTopic",
                    "default": False}]
    assert sluice_json(b, "topic", "describe", "golang-test")[0]["configs"] == \
        {"retention.ms": "3600000"}
    sluice(b, "topic", "add-partitions", "golang-test", "-n", "1")
    assert len(sluice_json(b, "topic", "describe", "golang-test")[0]["partitions"]) == 4
    sluice(b, "group", "delete", "readers")
    assert all(g["group"] != "readers" for g in sluice_json(b, "group", "list"))
    sluice(b, "topic", "delete", "golang-test")
    assert all(t["name"] != "golang-test" for t in sluice_json(b, "topic", "list"))


def test_config_set_and_get_for_brokers_and_topics(fresh_node):
    b = fresh_node.bootstrap
    sluice(b, "topic", "create", "configured", "-c", "cleanup.policy=compact")
    sluice(b, "config", "set", "topic", "configured", "max.message.bytes=2048")
    got = {c["name"]: c for c in sluice_json(b, "config", "get", "topic", "configured")}
    assert got["max.message.bytes"]["value"] == "2048"
    assert got["cleanup.policy"]["value"] == "compact"
    sluice(b, "config", "set", "topic", "configured", "-d", "max.message.bytes")
    got = {c["name"]: c for c in sluice_json(b, "config", "get", "topic", "configured")}
    assert got["max.message.bytes"]["default"] is True
    # Cluster-wide broker default, seen by the broker and by a new topic.
    sluice(b, "config", "set", "broker", "log.retention.ms=7200000")
    broker = sluice_json(b, "config", "get", "broker", "log.retention.ms")
    assert broker[0]["value"] == "7200000"
    sluice(b, "topic", "create", "inherits")
    got = sluice_json(b, "config", "get", "topic", "inherits", "retention.ms")
    assert got[0]["value"] == "7200000"


def test_bad_input_is_one_line_and_a_non_zero_exit(fresh_node):
    b = fresh_node.bootstrap
    one_line_error(sluice("127.0.0.1:1", "topic", "list", check=False),
                   "127.0.0.1:1", "-b/--brokers")
    one_line_error(sluice(b, "consume", "no-such-topic", "-e", check=False),
                   "unknown topic", "no-such-topic")
    one_line_error(sluice(b, "topic", "describe", "no-such-topic", check=False), "unknown topic")
    sluice(b, "topic", "create", "bad-input")
    one_line_error(sluice(b, "topic", "alter", "bad-input", "-c", "retention.msx=5", check=False),
                   "retention.msx", "did you mean retention.ms")
    one_line_error(sluice(b, "topic", "create", "other", "-c", "cleanup.polcy=compact",
                          check=False), "cleanup.polcy", "did you mean cleanup.policy")
    one_line_error(sluice(b, "consume", "bad-input", "-e", "-f", "%k %x", check=False),
                   "malformed format template", "unknown %x")
    one_line_error(sluice(b, "topic", "create", "bad-input", check=False), "already exists")
    one_line_error(sluice(b, "produce", "bad-input", "-p", "7", input="x\n", check=False),
                   "-p 7")
    # Too large for the topic: the producer names the record that failed.
    sluice(b, "config", "set", "topic", "bad-input", "max.message.bytes=100")
    out = sluice(b, "produce", "bad-input", "--acks", "1", "--delivery-timeout", "5",
                 input="small\n" + "x" * 500 + "\n", check=False)
    one_line_error(out, "1 of 2 records", "line 2")

    # reset-offsets is refused while the group has a member.
    sluice(b, "produce", "bad-input", input="a\nb\n")
    member = subprocess.Popen([BIN, "consume", "bad-input", "-g", "busy", "-b", b],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def stable():
            out = sluice(b, "group", "describe", "busy", "--json", check=False)
            return out.returncode == 0 and json.loads(out.stdout)["state"] == "Stable"
        wait_for(stable)
        one_line_error(sluice(b, "group", "reset-offsets", "busy", "--to-earliest", "--execute",
                              check=False), "active member", "stop its consumers")
    finally:
        member.send_signal(signal.SIGINT)
        assert member.wait(30) == 0, member.stderr.read()


def test_cluster_health_reports_a_stopped_node(cluster):
    b = cluster.bootstrap
    info = sluice_json(b, "cluster", "info")
    assert [n["node"] for n in info["nodes"]] == [0, 1, 2]
    assert info["controller"] in (0, 1, 2)
    sluice(b, "topic", "create", "replicated", "-p", "3", "-r", "3")
    wait_for(lambda: sluice(b, "cluster", "health", check=False).returncode == 0)
    assert sluice(b, "cluster", "health").stdout.startswith("healthy")
    cluster.stop_node(1)
    others = ",".join(cluster.kafka[i] for i in (0, 2))
    out = wait_for(lambda: (lambda o: o if o.returncode == 1 else None)(
        sluice(others, "cluster", "health", check=False)))
    assert out.stdout.startswith("unhealthy"), out.stdout
    assert "node 1" in out.stdout or "under-replicated" in out.stdout, out.stdout
    cluster.start_node(1)
    wait_for(lambda: sluice(b, "cluster", "health", check=False).returncode == 0, timeout=60)


def test_terminal_shows_tables_and_a_progress_bar_and_pipes_get_plain_text(fresh_node, tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/test.sh installs it)")
    b = fresh_node.bootstrap
    sluice(b, "topic", "create", "screen", "-p", "2")
    data = tmp_path / "lines.txt"
    data.write_text("".join(f"record-{i:08d}-{'x' * 90}\n" for i in range(400_000)))
    session = f"sluice-cli-{os.getpid()}"
    env = f"SLUICE_BROKERS={b}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40"], check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        def type_line(line):
            subprocess.run(["tmux", "send-keys", "-t", session, line, "Enter"], check=True)

        type_line(f"clear; {env} {BIN} topic list")
        table = wait_for(lambda: (lambda s: s if "screen" in s and "│" in s else None)(screen()))
        assert "Name" in table and "Partitions" in table
        type_line(f"clear; {env} {BIN} produce screen -f {data}")
        bar = wait_for(lambda: (lambda s: s if "MiB" in s and "records" in s else None)(screen()),
                       timeout=120, interval=0.02)
        assert "/s" in bar, bar
        done = wait_for(lambda: (lambda s: s if "produced 400000 records" in s else None)(screen()),
                        timeout=300)
        assert "records/s" in done
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])

    piped = sluice(b, "topic", "list")
    assert "\x1b" not in piped.stdout and "│" not in piped.stdout
    assert piped.stdout.splitlines()[0].split() == ["NAME", "PARTITIONS", "REPLICAS"]
    small = tmp_path / "small.txt"
    small.write_text("a\nb\nc\n")
    produced = sluice(b, "produce", "screen", "-f", str(small))
    assert produced.stderr == "" and produced.stdout == ""
    health = sluice(b, "cluster", "health")
    assert "\x1b" not in health.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tansu():
    binary = os.environ.get("TANSU_BIN", os.path.expanduser("~/.cache/sluice/tansu/bin/tansu"))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no Tansu broker at {binary}: scripts/ensure-tansu.sh installs it")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url",
                             url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepting():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return proc.poll() is not None and pytest.fail("tansu exited")
    wait_for(accepting)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_the_commands_speak_only_kafka_another_broker_works(tansu):
    b = tansu
    sluice(b, "topic", "create", "elsewhere", "-p", "2", "-r", "1")
    assert "elsewhere" in [t["name"] for t in sluice_json(b, "topic", "list")]
    sluice(b, "produce", "elsewhere", "-K", ":", input="a:1\nb:2\na:3\n")
    records = [json.loads(line) for line in
               sluice(b, "consume", "elsewhere", "-e", "--json").stdout.splitlines()]
    assert sorted(r["value"] for r in records) == ["1", "2", "3"]
    for r in records:
        assert r["partition"] == kafka_partition(r["key"], 2), r
    info = sluice_json(b, "cluster", "info")
    assert len(info["nodes"]) == 1 and info["nodes"][0]["reachable"] is True
    one_line_error(sluice(b, "consume", "missing-here", "-e", check=False), "unknown topic")


def start_dev(data_dir, *args, env=None):
    """`sluice dev ARGS` on free ports; returns (process, ready fields, stderr
    file) once ready, or (process, None, stderr) when it exited instead."""
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([BIN, "dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                             "--data-dir", data_dir, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    if not line.startswith("sluice ready "):
        proc.wait(30)
        err.seek(0)
        return proc, None, err.read()
    return proc, dict(kv.split("=", 1) for kv in line.split()[2:]), err


def stop_dev(proc):
    proc.terminate()
    proc.wait(30)


def test_the_newcomers_path(tmp_path):
    data = str(tmp_path / "sluice-data")
    # The banner says where to connect, where the data is and how to stop.
    proc, ready, err = start_dev(data)
    try:
        b = ready["kafka"]
        wait_for(lambda: (err.seek(0), "Ctrl-C to stop" in err.read())[1])
        err.seek(0)
        banner = err.read()
        assert f"Kafka bootstrap  {b}" in banner and os.path.realpath(data) in banner
        assert "sluice topic create" in banner
        # The README's quickstart, literally, with `sluice` on PATH and the
        # test node as the default broker.
        readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
        quickstart = readme.split("## Quickstart", 1)[1]
        blocks = [blk.split("```", 1)[0] for blk in quickstart.split("```sh\n")[1:3]]
        bin_dir = os.path.dirname(os.path.abspath(BIN)) if os.sep in BIN else None
        env = {**os.environ, "SLUICE_BROKERS": b}
        if bin_dir:
            env["PATH"] = f"{bin_dir}:{env['PATH']}"
        for block in blocks:
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True,
                                 text=True, env=env, timeout=120)
            assert out.returncode == 0, f"{block}\n{out.stderr}"
        # Its last steps: group "readers" read everything, then was reset.
        described = sluice_json(b, "topic", "describe", "golang-test")[0]
        assert sluice_json(b, "group", "describe", "readers")["total_lag"] == \
            sum(p["high_watermark"] for p in described["partitions"]) > 0
    finally:
        stop_dev(proc)

    # The single node's directory is refused by a cluster, and the other way.
    proc, ready, message = start_dev(data, "--nodes", "3")
    assert ready is None and proc.returncode != 0
    assert "single-node" in message and "--data-dir" in message, message
    cluster_dir = str(tmp_path / "sluice-cluster")
    proc, ready, err = start_dev(cluster_dir, "--nodes", "3")
    try:
        wait_for(lambda: (err.seek(0), "stop N" in err.read())[1])
        err.seek(0)
        nodes_table = err.read()
        for k in ready["kafka"].split(","):
            assert k in nodes_table
        # Internal topics take the cluster's replication factor.
        b = ready["kafka"]
        offsets = wait_for(lambda: next((t for t in sluice_json(b, "topic", "list", "--internal")
                                         if t["name"] == "__consumer_offsets"), None))
        assert offsets["replicas"] == 3
    finally:
        stop_dev(proc)
    proc, ready, message = start_dev(cluster_dir)
    assert ready is None and "--nodes 3" in message, message


def test_server_flags_have_environment_variables_and_booleans_agree(tmp_path):
    proc, ready, _ = start_dev(str(tmp_path / "a"), env={"SLUICE_NUM_PARTITIONS": "4",
                                                         "SLUICE_AUTO_CREATE_TOPICS": "true"})
    try:
        sluice(ready["kafka"], "produce", "made-on-first-use", input="x\n")
        assert sluice_json(ready["kafka"], "topic", "list")[0]["partitions"] == 4
    finally:
        stop_dev(proc)
    for flag in (["--auto-create-topics=false"], ["--auto-create-topics", "false"]):
        proc, ready, _ = start_dev(str(tmp_path / "b"), *flag)
        try:
            one_line_error(sluice(ready["kafka"], "produce", "absent", input="x\n", check=False),
                           "unknown topic", "does not create topics on first use")
        finally:
            stop_dev(proc)
    proc, ready, _ = start_dev(str(tmp_path / "c"), env={"SLUICE_AUTO_CREATE_TOPICS": "false"})
    try:
        one_line_error(sluice(ready["kafka"], "produce", "absent", input="x\n", check=False),
                       "unknown topic")
    finally:
        stop_dev(proc)


def test_shell_completions_load():
    for shell in ("bash", "zsh", "fish"):
        script = subprocess.run([BIN, "completion", shell], capture_output=True, text=True,
                                check=True).stdout
        assert "consume" in script and "reset-offsets" in script, shell
    out = subprocess.run(["bash", "-c", f"source <({BIN} completion bash) && complete -p sluice"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "sluice" in out.stdout, out.stderr


def test_brokers_come_from_flag_then_environment_then_profile(fresh_node, tmp_path):
    profile = tmp_path / "config.toml"
    profile.write_text(f'profile = "here"\n[profiles.here]\nbrokers = "{fresh_node.bootstrap}"\n'
                       '[profiles.nowhere]\nbrokers = "127.0.0.1:1"\n')
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_BROKERS"}
    env["SLUICE_CONFIG"] = str(profile)

    def run(*args, extra=None):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60,
                              env={**env, **(extra or {})})
    assert run("cluster", "info", "--json").returncode == 0
    one_line_error(run("cluster", "info", "--profile", "nowhere"), "127.0.0.1:1")
    one_line_error(run("cluster", "info", "--profile", "elsewhere"),
                   'no profile "elsewhere"', "here, nowhere")
    # The environment beats the profile, the flag beats both.
    one_line_error(run("cluster", "info", extra={"SLUICE_BROKERS": "127.0.0.1:1"}), "127.0.0.1:1")
    assert run("cluster", "info", "-b", fresh_node.bootstrap,
               extra={"SLUICE_BROKERS": "127.0.0.1:1"}).returncode == 0


def test_every_compression_codec_round_trips(fresh_node):
    b = fresh_node.bootstrap
    sluice(b, "topic", "create", "squeezed")
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    for codec in codecs:
        sluice(b, "produce", "squeezed", "-z", codec, input=f"{codec}-1\n{codec}-2\n")
    got = sluice(b, "consume", "squeezed", "-e").stdout.split()
    assert got == [f"{c}-{i}" for c in codecs for i in (1, 2)]
