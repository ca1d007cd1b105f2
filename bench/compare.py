"""The benchmark comparison: Sluice (`sluice dev`, one node, and a 3-node
`sluice dev --nodes 3`) next to Tansu under the same librdkafka load
(`sluice-bench`), read against the machine's ceilings measured in the same
run (RocksDB puts, disk writes, loopback TCP), plus resource use. Each
figure is the median of --runs runs, with min and max. Loopback only; every
process it starts, it stops.

Writes the tables between the compare markers of docs/benchmarks.md (or
--output). Run it with bench/compare.sh, which builds and installs first.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BEGIN = "<!-- compare:begin (written by bench/compare.sh) -->"
END = "<!-- compare:end -->"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def proc_stat(pid):
    """(rss bytes, cpu seconds) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


class Broker:
    """One broker under test: a process, its bootstrap, its pid."""

    def __init__(self, name, argv, ready=None, port=None, env=None, cwd=None):
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.started = time.monotonic()
        if ready:
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    sys.exit(f"{name} exited with {self.proc.wait()}")
                if line.startswith(ready):
                    fields = dict(kv.split("=", 1) for kv in line.split()[2:])
                    self.bootstrap = fields["kafka"]
                    self.admin = fields.get("admin", "").split(",")[0]
                    break
        else:
            wait_port(port, self.proc)
            self.bootstrap = f"127.0.0.1:{port}"
            self.admin = ""
        self.ready_s = time.monotonic() - self.started

    def stat(self):
        return proc_stat(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Bench:
    def __init__(self, args):
        self.a = args
        self.tool = args.bench_binary
        self.topics = 0

    def run(self, *argv, check=True):
        out = subprocess.run([self.tool, *argv], capture_output=True, text=True,
                             timeout=self.a.timeout)
        if out.returncode != 0:
            if check:
                sys.exit(f"sluice-bench {' '.join(argv)} failed:\n{out.stderr}")
            return None
        print("   ", out.stderr.strip().splitlines()[-1], flush=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def topic(self):
        self.topics += 1
        return f"bench-{self.topics}"


def med(values, fmt="{:,.0f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"


def start_sluice(a, nodes, data_dir, extra=(), prefix=()):
    argv = [*prefix, a.sluice_binary, "dev", "--listen", f"127.0.0.1:{free_port() if nodes == 1 else 0}",
            "--admin-listen", "127.0.0.1:0", "--data-dir", data_dir, *extra]
    if nodes > 1:
        at = len(prefix) + 2
        argv[at:at] = ["--nodes", str(nodes)]
    env = {**os.environ, "RUST_LOG": "warn"}
    return Broker(f"sluice ({nodes} node{'s' if nodes > 1 else ''})", argv, ready="sluice ready ", env=env)


def start_tansu(a, data_dir=None, prefix=()):
    """Tansu with its in-memory engine, or with its durable SQLite one in
    `data_dir` (Tansu opens `sqlite://<path>` relative to its working
    directory)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    engine = "sqlite://tansu.db" if data_dir else "memory://tansu/"
    name = "Tansu (sqlite)" if data_dir else "Tansu (memory)"
    return Broker(name, [*prefix, a.tansu_binary, "broker", "--listener-url", url,
                         "--advertised-listener-url", url, "--storage-engine", engine],
                  port=port, cwd=data_dir)


def start_broker(a, nodes, d):
    """Sluice with `nodes` nodes; 0: Tansu in memory; -1: Tansu on SQLite."""
    if nodes == 0:
        return start_tansu(a)
    if nodes < 0:
        return start_tansu(a, d)
    return start_sluice(a, nodes, d)


def io_written(pid):
    """Bytes a process has caused to be written to storage (its page-cache
    writes included, as /proc/<pid>/io accounts them)."""
    with open(f"/proc/{pid}/io") as f:
        d = dict(line.split(": ") for line in f.read().splitlines())
    return int(d["write_bytes"]) - int(d["cancelled_write_bytes"])


STORE_BYTES = [("WAL", "sluice_store_wal_written_bytes_total"),
               ("flush (blob files included)", "sluice_store_flush_written_bytes_total"),
               ("compaction", "sluice_store_compaction_written_bytes_total"),
               ("blob files", "sluice_store_blob_written_bytes_total")]


def g(r, key):
    return r[key] if r else None


def lat(r, q):
    return r["latency_us"][q] / 1000 if r and r.get("latency_us", {}).get("count") else None


def scenarios(a, b, broker, replicated, strict):
    """Every load scenario against one broker, once per client profile
    (librdkafka defaults first). Returns {figure: [values]}. A peer's
    failures become n/a instead of ending the run."""
    out = {}
    for prof in a.profiles:
        out.update(profile_scenarios(a, b, broker, replicated, strict, prof))
    return out


def profile_scenarios(a, b, broker, replicated, strict, prof):
    tag = f" [{prof}]"
    parts = str(a.partitions)

    def run(*argv):
        return b.run(*argv, "--client-profile", prof, check=strict)

    out = {}
    r100 = []
    cpu_per_mb = []
    for _ in range(a.runs):
        before = broker.stat()
        rep = run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                  "--create-partitions", parts, "--records", str(a.records),
                  "--record-size", "100", "--acks", "1")
        after = broker.stat()
        r100.append(rep)
        cpu_per_mb.append((after[1] - before[1]) / max(rep["bytes"] / 1e6, 1e-9) if rep else None)
    out["produce 100 B, acks=1, RF=1" + tag] = [g(r, "records_per_s") for r in r100]
    out["produce 100 B, acks=1, RF=1 (MB/s)" + tag] = [g(r, "mb_per_s") for r in r100]
    out["produce 100 B, acks=1: ack latency p99 (ms)" + tag] = [lat(r, "p99") for r in r100]
    out["CPU seconds per MB produced (broker)" + tag] = cpu_per_mb
    r1k = [run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
               "--create-partitions", parts, "--records", str(max(a.records // 5, 1000)),
               "--record-size", "1024", "--acks", "1") for _ in range(a.runs)]
    out["produce 1 KiB, acks=1, RF=1" + tag] = [g(r, "records_per_s") for r in r1k]
    out["produce 1 KiB, acks=1, RF=1 (MB/s)" + tag] = [g(r, "mb_per_s") for r in r1k]
    if replicated:
        rall = [run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                    "--create-partitions", parts, "--replication-factor", "3",
                    "--topic-config", "min.insync.replicas=2", "--records", str(a.records),
                    "--record-size", "100", "--acks", "all") for _ in range(a.runs)]
        out["produce 100 B, acks=all, RF=3, min.insync=2" + tag] = [
            g(r, "records_per_s") for r in rall]
    # Consume from the start of a big topic (written once, read --runs times).
    big = b.topic()
    run("produce", "--bootstrap", broker.bootstrap, "--topic", big, "--create-partitions", parts,
        "--records", str(a.consume_records), "--record-size", "100", "--acks", "1",
        "--duration-s", "600")
    cons = [run("consume", "--bootstrap", broker.bootstrap, "--topic", big,
                "--records", str(a.consume_records), "--duration-s", "600")
            for _ in range(a.runs)]
    out[f"consume {a.consume_records:,} x 100 B from the start" + tag] = [
        g(r, "records_per_s") for r in cons]
    # A consumer group of 3 on 6 partitions.
    six = b.topic()
    n6 = max(a.records, 1000)
    run("produce", "--bootstrap", broker.bootstrap, "--topic", six, "--create-partitions", "6",
        "--records", str(n6), "--record-size", "100", "--acks", "1")
    grp = []
    for i in range(a.runs):
        r = b.run("consume", "--bootstrap", broker.bootstrap, "--topic", six, "--records", str(n6),
                  "--consumers", "3", "--group", f"bench-group-{b.topics}-{i}",
                  "--duration-s", "300", "--client-profile", prof, check=False)
        grp.append(r["records_per_s"] if r and r["records"] >= n6 else None)
    out["consumer group of 3 on 6 partitions" + tag] = grp
    # End-to-end latency at fixed rates and at half the measured maximum.
    half = max((median(out["produce 100 B, acks=1, RF=1" + tag]) or 200) / 2, 100)
    for label, rate in (("10k records/s", 10_000), ("100k records/s", 100_000),
                        ("half max rate", half)):
        e2e = [run("e2e", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                   "--create-partitions", parts, "--rate", f"{rate:.0f}", "--record-size", "100",
                   "--acks", "1", "--linger-ms", "1", "--duration-s", str(a.e2e_seconds))
               for _ in range(a.runs)]
        for q, name in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
            out[f"e2e latency {name} (ms) at {label}" + tag] = [lat(r, q) for r in e2e]
        if label == "half max rate":
            out["_e2e_rate" + tag] = [rate]
            out["_e2e_series" + tag] = [r.get("series") if r else None for r in e2e]
    return out


def write_amplification(a, b, broker, strict, split):
    """Bytes written to storage per byte produced: --wa-records records of
    1 KiB into a fresh broker, then --wa-settle-s seconds for flushes and
    compactions to follow, from the broker's /proc/<pid>/io (and, for
    Sluice, RocksDB's own split)."""
    before, m0 = io_written(broker.proc.pid), metrics(broker.admin)
    rep = b.run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                "--create-partitions", str(a.partitions), "--records", str(a.wa_records),
                "--record-size", "1024", "--acks", "1", "--duration-s", "600", check=strict)
    time.sleep(a.wa_settle_s)  # a fixed window after the load, by definition
    after, m1 = io_written(broker.proc.pid), metrics(broker.admin)
    produced = rep["bytes"] if rep else 0
    out = {"disk bytes written per byte produced (1 KiB records, then the settle window)":
           [(after - before) / produced if produced else None]}
    for name, key in STORE_BYTES:
        if split and key in m1:
            out[f"  of which RocksDB {name} per byte produced"] = [
                (m1[key] - m0.get(key, 0)) / produced if produced else None]
    return out


def instructions(a, b, kind):
    """Instructions the broker executes per MB produced (100 B records):
    the broker runs under callgrind (this machine's VM exposes no hardware
    counters to `perf stat`), counting only while a fixed load runs."""
    d = tempfile.mkdtemp(prefix="sluice-instr-", dir=a.scratch)
    out_file = os.path.join(d, "callgrind.out")
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
              f"--callgrind-out-file={out_file}"]
    if kind == "sluice":
        broker = start_sluice(a, 1, d, prefix=prefix)
    else:
        broker = start_tansu(a, prefix=prefix)
    try:
        topic = b.topic()
        b.run("produce", "--bootstrap", broker.bootstrap, "--topic", topic,
              "--create-partitions", str(a.partitions), "--records", "100",
              "--record-size", "100", "--duration-s", "600")
        pid = str(broker.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        rep = b.run("produce", "--bootstrap", broker.bootstrap, "--topic", topic,
                    "--records", str(a.instructions_records), "--record-size", "100",
                    "--duration-s", "3600")
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        broker.stop()
    total = 0
    for name in os.listdir(d):
        if name.startswith("callgrind.out"):
            # `totals:` closes each dump (its `summary:` reads 0 when the
            # dump is taken with instrumentation off).
            with open(os.path.join(d, name)) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("totals:"))
    shutil.rmtree(d, ignore_errors=True)
    return total / (rep["bytes"] / 1e6) if rep and rep["bytes"] else None


def plot(path, series, rate):
    """The latency-over-time of the half-rate runs as a PNG: p99 and max per
    window, one panel per broker, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), sharex=True,
                             squeeze=False)
    for ax, (name, points) in zip(axes[:, 0], series.items()):
        t = [p["t"] for p in points]
        ax.plot(t, [p["max"] / 1000 for p in points], lw=0.8, color="#d62728", label="max")
        ax.plot(t, [p["p99"] / 1000 for p in points], lw=1.2, color="#1f77b4", label="p99")
        ax.plot(t, [p["p50"] / 1000 for p in points], lw=1.0, color="#2ca02c", label="p50")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{name}: end-to-end latency per window at {rate[name]:,.0f} records/s",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds into the run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ceilings(a, b, batch_bytes):
    d = a.scratch
    out = {}
    rocks = [b.run("rocksdb", "--dir", d, "--batch-bytes", str(batch_bytes), "--record-size", "100",
                   "--total-bytes", str(a.ceiling_bytes)) for _ in range(a.runs)]
    out["rocksdb"] = rocks
    out["disk"] = [b.run("disk", "--dir", d, "--total-bytes", str(a.ceiling_bytes)) for _ in range(a.runs)]
    out["loopback"] = [b.run("loopback", "--total-bytes", str(a.ceiling_bytes * 2)) for _ in range(a.runs)]
    return out


def metrics(admin):
    if not admin:
        return {}
    with urllib.request.urlopen(f"http://{admin}/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def batch_size(admin):
    """Average stored batch of the node's produce so far (bytes per batch)."""
    m = metrics(admin)
    b = sum(v for k, v in m.items() if k.startswith("sluice_produced_bytes_total"))
    n = sum(v for k, v in m.items() if k.startswith("sluice_produced_batches_total"))
    return int(b / n) if n else 65536


def resources(a, b):
    """RSS of one node with 1, 100, 1,000 partitions, idle and under load;
    startup time of a node holding --startup-bytes of log."""
    rows = []
    for parts in (1, 100, 1000):
        d = tempfile.mkdtemp(prefix="sluice-rss-", dir=a.scratch)
        node = start_sluice(a, 1, d)
        try:
            topic = f"rss-{parts}"
            b.run("produce", "--bootstrap", node.bootstrap, "--topic", topic,
                  "--create-partitions", str(parts), "--records", "1000", "--record-size", "100")
            time.sleep(2)  # let the node settle before an idle sample
            idle = node.stat()[0]
            peak = idle
            p = subprocess.Popen([b.tool, "produce", "--bootstrap", node.bootstrap, "--topic", topic,
                                  "--records", str(a.records), "--record-size", "100"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while p.poll() is None:
                peak = max(peak, node.stat()[0])
                time.sleep(0.05)
            rows.append((parts, idle, peak))
        finally:
            node.stop()
            shutil.rmtree(d, ignore_errors=True)
    # Startup with a big log: write it, stop, time the restart to ready.
    d = tempfile.mkdtemp(prefix="sluice-startup-", dir=a.scratch)
    try:
        node = start_sluice(a, 1, d)
        n = max(a.startup_bytes // 1024, 1)
        b.run("produce", "--bootstrap", node.bootstrap, "--topic", "startup",
              "--create-partitions", "3", "--records", str(n), "--record-size", "1024",
              "--duration-s", "3600")
        held = metrics(node.admin).get('sluice_log_size_bytes{topic="startup"}', 0)
        node.stop()
        starts = []
        for _ in range(a.runs):
            node = start_sluice(a, 1, d)
            starts.append(node.ready_s)
            node.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows, held, starts


def versions(a):
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return "n/a"
    return {
        "sluice": out([a.sluice_binary, "--version"]),
        "sluice-bench": out([a.bench_binary, "--version"]),
        "tansu": out([a.tansu_binary, "--version"]) if a.tansu_binary else "not run",
        "rustc": out(["rustc", "--version"]),
    }


def machine():
    cores = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} vCPUs ({model}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice-binary", required=True)
    ap.add_argument("--bench-binary", required=True)
    ap.add_argument("--tansu-binary", default="")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--consume-records", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--profiles", default="defaults,tuned",
                    help="librdkafka settings to run every scenario with, in order")
    ap.add_argument("--e2e-seconds", type=float, default=10)
    ap.add_argument("--wa-records", type=int, default=300_000)
    ap.add_argument("--wa-settle-s", type=float, default=20)
    ap.add_argument("--instructions-records", type=int, default=200_000,
                    help="records of the callgrind run (0: skip instructions per MB)")
    ap.add_argument("--ceiling-bytes", type=int, default=1 << 30)
    ap.add_argument("--startup-bytes", type=int, default=10 << 30)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--output", default="docs/benchmarks.md")
    ap.add_argument("--plot", default="docs/e2e-latency-half-rate.png")
    ap.add_argument("--command", default="bash bench/compare.sh")
    ap.add_argument("--only-instructions", action="store_true",
                    help="measure instructions per MB produced alone (callgrind), "
                         "print them and write nothing")
    a = ap.parse_args()
    a.profiles = [p for p in a.profiles.split(",") if p]
    b = Bench(a)
    started = datetime.datetime.now(datetime.timezone.utc)

    if a.only_instructions:
        kinds = [("Sluice, 1 node", "sluice")] + ([("Tansu (memory)", "tansu")] if a.tansu_binary else [])
        for name, kind in kinds:
            v = instructions(a, b, kind)
            print(f"{name}: {v / 1e6:.2f} M instructions per MB produced" if v else f"{name}: n/a")
        return

    results = {}
    targets = [("Sluice, 1 node", 1), ("Sluice, 3 nodes", 3)]
    if a.tansu_binary:
        targets += [("Tansu (memory)", 0), ("Tansu (sqlite)", -1)]
    batch = 65536
    for name, nodes in targets:
        print(f"== {name}", flush=True)
        d = tempfile.mkdtemp(prefix="sluice-bench-", dir=a.scratch)
        try:
            broker = start_broker(a, nodes, d)
        except SystemExit as e:  # a peer that does not start is n/a
            print(f"   {name} did not start: {e}", flush=True)
            results[name] = {}
            continue
        try:
            results[name] = scenarios(a, b, broker, replicated=nodes == 3, strict=nodes > 0)
            if nodes == 1:
                batch = batch_size(broker.admin)
        finally:
            broker.stop()
            shutil.rmtree(d, ignore_errors=True)
    for name, nodes in targets:
        if nodes == 3:
            continue
        print(f"== {name}: bytes written per byte produced", flush=True)
        d = tempfile.mkdtemp(prefix="sluice-wa-", dir=a.scratch)
        try:
            broker = start_broker(a, nodes, d)
        except SystemExit as e:
            print(f"   {name} did not start: {e}", flush=True)
            continue
        try:
            results[name].update(write_amplification(a, b, broker, nodes > 0, split=nodes == 1))
        finally:
            broker.stop()
            shutil.rmtree(d, ignore_errors=True)
    instr = {}
    if a.instructions_records:
        print("== instructions per MB (callgrind)", flush=True)
        instr["Sluice, 1 node"] = instructions(a, b, "sluice")
        if a.tansu_binary:
            instr["Tansu (memory)"] = instructions(a, b, "tansu")
    print("== ceilings", flush=True)
    ceil = ceilings(a, b, batch)
    print("== resource use", flush=True)
    rss, held, starts = resources(a, b)

    first = a.profiles[0]
    series = {n: r[f"_e2e_series [{first}]"][0] for n, r in results.items()
              if r.get(f"_e2e_series [{first}]") and r[f"_e2e_series [{first}]"][0]}
    if series and a.plot:
        plot(a.plot, series, {n: results[n][f"_e2e_rate [{first}]"][0] for n in series})
        print(f"wrote {a.plot}")
    doc = render(a, results, instr, ceil, batch, rss, held, starts, started)
    write(a.output, doc)
    print(f"wrote {a.output}")


def render(a, results, instr, ceil, batch, rss, held, starts, started):
    names = list(results)
    figures = []
    for n in names:
        figures += [k for k in results[n] if not k.startswith("_") and k not in figures]
    s1 = results["Sluice, 1 node"]
    tansu = results.get("Tansu (memory)")
    rocks_mb = median([r["mb_per_s"] for r in ceil["rocksdb"]])
    disk_mb = median([r["mb_per_s"] for r in ceil["disk"]])
    lines = [BEGIN, "",
             f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine()}.",
             f"Command: `{a.command}` ({a.runs} run(s) of every figure; each cell is the median with min "
             "and max). Versions: " + ", ".join(f"{k} `{v}`" for k, v in versions(a).items()) + ".",
             "The brokers, the load generator and the ceilings share the same cores; the load is "
             "librdkafka (`sluice-bench`, bundled librdkafka), one producer, no compression, "
             f"incompressible values, topics of {a.partitions} partitions. Every scenario runs with "
             "each client profile: `[defaults]` is librdkafka as users run it; `[tuned]` adds "
             "`queue.buffering.max.messages=1000000` to the producer and "
             "`queued.min.messages=1000000`, `fetch.queue.backoff.ms=1` to consumers.",
             "",
             "### Throughput and latency",
             "",
             "| figure | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for f in figures:
        fmt = ("{:,.4f}" if "CPU" in f else "{:,.2f}" if ("ms" in f or "MB/s" in f or "per byte" in f)
               else "{:,.0f}")
        lines.append(f"| {f} | " + " | ".join(med(results[n].get(f, []), fmt) for n in names) + " |")
    if instr:
        lines.append("| broker instructions per MB produced (100 B records, callgrind) | " +
                     " | ".join(f"{instr[n]:,.0f}" if instr.get(n) else "n/a" for n in names) + " |")
    lines += ["", "### Against the targets, the peer and the machine", "",
              "| ratio | value | target |", "| --- | --- | --- |"]

    def m(res, key):
        return median(res.get(key, [])) if res else None

    def num(v, fmt="{:.2f}"):
        return fmt.format(v) if v is not None else "n/a"

    s3 = results.get("Sluice, 3 nodes", {})
    for prof in a.profiles:
        t = f" [{prof}]"
        p100 = m(s1, "produce 100 B, acks=1, RF=1" + t)
        for rate, target in (("100k records/s", "<= 5"), ("half max rate", "<= 20")):
            p99 = m(s1, f"e2e latency p99 (ms) at {rate}" + t)
            p999 = m(s1, f"e2e latency p99.9 (ms) at {rate}" + t)
            lines.append(f"| Sluice 1 node{t}: e2e p99 at {rate} (ms) | {num(p99)} | {target} |")
            lines.append(f"| Sluice 1 node{t}: e2e p99.9 / p99 at {rate} | "
                         f"{ratio(p999, p99)} | <= 3 |")
        if tansu:
            for what, key in (("produce 100 B acks=1", "produce 100 B, acks=1, RF=1"),
                              ("produce 1 KiB acks=1", "produce 1 KiB, acks=1, RF=1")):
                lines.append(f"| Sluice 1 node / Tansu (memory){t}, {what} | "
                             f"{ratio(m(s1, key + t), m(tansu, key + t))} | "
                             f"{'>= 1' if '1 KiB' in what else ''} |")
            ck = f"consume {a.consume_records:,} x 100 B from the start" + t
            lines.append(f"| Sluice 1 node / Tansu (memory){t}, consume from the start | "
                         f"{ratio(m(s1, ck), m(tansu, ck))} | |")
        if s3:
            lines.append(f"| Sluice 3 nodes{t}: acks=all RF=3 / acks=1 RF=1 | "
                         f"{ratio(m(s3, 'produce 100 B, acks=all, RF=3, min.insync=2' + t), m(s3, 'produce 100 B, acks=1, RF=1' + t))}"
                         " | >= 0.5 |")
        lines.append(f"| Sluice 1 node{t}: produce 100 B MB/s / RocksDB put ceiling MB/s | "
                     f"{ratio(m(s1, 'produce 100 B, acks=1, RF=1 (MB/s)' + t), rocks_mb)} | |")
        lines.append(f"| Sluice 1 node{t}: produce 100 B MB/s / disk write ceiling | "
                     f"{ratio(m(s1, 'produce 100 B, acks=1, RF=1 (MB/s)' + t), disk_mb)} | |")
    wa = m(s1, "disk bytes written per byte produced (1 KiB records, then the settle window)")
    lines.append(f"| Sluice 1 node: disk bytes written per byte produced ({a.wa_records:,} x 1 KiB, "
                 f"then {a.wa_settle_s:g} s) | {num(wa)} | <= 2.5 |")
    if instr.get("Sluice, 1 node") and instr.get("Tansu (memory)"):
        lines.append(f"| Sluice 1 node / Tansu (memory): instructions per MB produced | "
                     f"{ratio(instr['Sluice, 1 node'], instr['Tansu (memory)'])} | <= 0.67 |")
    lines += ["", "### Ceilings (same run)", "",
              "| ceiling | MB/s | records/s of 100 B |", "| --- | --- | --- |",
              f"| RocksDB atomic puts of {batch:,}-byte batches (the node's average batch in this run; "
              f"the node's RocksDB options, no fsync) | {med([r['mb_per_s'] for r in ceil['rocksdb']], '{:,.1f}')} | "
              f"{med([r['records_per_s'] for r in ceil['rocksdb']])} |",
              f"| disk: sequential 1 MiB writes, then fdatasync | {med([r['mb_per_s'] for r in ceil['disk']], '{:,.1f}')} | |",
              f"| loopback TCP, one stream | {med([r['mb_per_s'] for r in ceil['loopback']], '{:,.1f}')} | |",
              "", "### Resource use (Sluice, 1 node)", "",
              "| partitions | RSS idle (MiB) | RSS peak under load (MiB) |", "| --- | --- | --- |"]
    for parts, idle, peak in rss:
        lines.append(f"| {parts:,} | {idle / 2**20:,.0f} | {peak / 2**20:,.0f} |")
    lines += ["",
              f"Startup of a node holding {held / 1e9:,.3f} GB of log (process start to \"ready\"): "
              f"{med(starts, '{:,.2f}')} s.",
              ""]
    if a.plot:
        shown = os.path.relpath(a.plot, os.path.dirname(os.path.abspath(a.output)))
        lines += [f"End-to-end latency over time in the half-rate runs (`{a.profiles[0]}` profile; "
                  "p50, p99 and max per 100 ms window, log scale):", "",
                  f"![end-to-end latency over time]({shown})", ""]
    lines.append(END)
    return "\n".join(lines)


def write(path, block):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Comparison\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
