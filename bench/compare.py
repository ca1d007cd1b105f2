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

    def __init__(self, name, argv, ready=None, port=None, env=None):
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.PIPE, text=True, env=env)
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


def start_sluice(a, nodes, data_dir, extra=()):
    argv = [a.sluice_binary, "dev", "--listen", f"127.0.0.1:{free_port() if nodes == 1 else 0}",
            "--admin-listen", "127.0.0.1:0", "--data-dir", data_dir, *extra]
    if nodes > 1:
        argv[2:2] = ["--nodes", str(nodes)]
    env = {**os.environ, "RUST_LOG": "warn"}
    return Broker(f"sluice ({nodes} node{'s' if nodes > 1 else ''})", argv, ready="sluice ready ", env=env)


def start_tansu(a):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    return Broker("Tansu (memory)", [a.tansu_binary, "broker", "--listener-url", url,
                                     "--advertised-listener-url", url,
                                     "--storage-engine", "memory://tansu/"], port=port)


def g(r, key):
    return r[key] if r else None


def lat(r, q):
    return r["latency_us"][q] / 1000 if r and r.get("latency_us", {}).get("count") else None


def scenarios(a, b, broker, replicated, strict):
    """Every load scenario against one broker. Returns {figure: [values]}.
    A peer's failures become n/a instead of ending the run."""

    def run(*argv):
        return b.run(*argv, check=strict)

    out = {}
    r100 = []
    cpu_per_mb = []
    for _ in range(a.runs):
        before = broker.stat()
        rep = run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                    "--create-partitions", "3", "--records", str(a.records),
                    "--record-size", "100", "--acks", "1")
        after = broker.stat()
        r100.append(rep)
        cpu_per_mb.append((after[1] - before[1]) / max(rep["bytes"] / 1e6, 1e-9) if rep else None)
    out["produce 100 B, acks=1, RF=1"] = [g(r, "records_per_s") for r in r100]
    out["produce 100 B, acks=1, RF=1 (MB/s)"] = [g(r, "mb_per_s") for r in r100]
    out["produce 100 B, acks=1: ack latency p99 (ms)"] = [lat(r, "p99") for r in r100]
    out["CPU seconds per MB produced (broker)"] = cpu_per_mb
    r1k = [run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                 "--create-partitions", "3", "--records", str(max(a.records // 5, 1000)),
                 "--record-size", "1024", "--acks", "1") for _ in range(a.runs)]
    out["produce 1 KiB, acks=1, RF=1"] = [g(r, "records_per_s") for r in r1k]
    out["produce 1 KiB, acks=1, RF=1 (MB/s)"] = [g(r, "mb_per_s") for r in r1k]
    if replicated:
        rall = [run("produce", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                      "--create-partitions", "3", "--replication-factor", "3",
                      "--topic-config", "min.insync.replicas=2", "--records", str(a.records),
                      "--record-size", "100", "--acks", "all") for _ in range(a.runs)]
        out["produce 100 B, acks=all, RF=3, min.insync=2"] = [g(r, "records_per_s") for r in rall]
    # Consume from the start of a big topic (written once, read --runs times).
    big = b.topic()
    run("produce", "--bootstrap", broker.bootstrap, "--topic", big, "--create-partitions", "3",
          "--records", str(a.consume_records), "--record-size", "100", "--acks", "1",
          "--duration-s", "600")
    cons = [run("consume", "--bootstrap", broker.bootstrap, "--topic", big,
                  "--records", str(a.consume_records), "--duration-s", "600")
            for _ in range(a.runs)]
    out[f"consume {a.consume_records:,} x 100 B from the start"] = [g(r, "records_per_s") for r in cons]
    # A consumer group of 3 on 6 partitions.
    six = b.topic()
    n6 = max(a.records, 1000)
    run("produce", "--bootstrap", broker.bootstrap, "--topic", six, "--create-partitions", "6",
          "--records", str(n6), "--record-size", "100", "--acks", "1")
    grp = []
    for i in range(a.runs):
        r = b.run("consume", "--bootstrap", broker.bootstrap, "--topic", six, "--records", str(n6),
                  "--consumers", "3", "--group", f"bench-group-{b.topics}-{i}",
                  "--duration-s", "300", check=False)
        grp.append(r["records_per_s"] if r and r["records"] >= n6 else None)
    out["consumer group of 3 on 6 partitions"] = grp
    # End-to-end latency at half the measured maximum rate.
    rate = max((median(out["produce 100 B, acks=1, RF=1"]) or 200) / 2, 100)
    e2e = [run("e2e", "--bootstrap", broker.bootstrap, "--topic", b.topic(),
                 "--create-partitions", "3", "--rate", f"{rate:.0f}", "--record-size", "100",
                 "--acks", "1", "--linger-ms", "1", "--duration-s", str(a.e2e_seconds))
           for _ in range(a.runs)]
    out["e2e latency p50 (ms) at half max rate"] = [lat(r, "p50") for r in e2e]
    out["e2e latency p99 (ms) at half max rate"] = [lat(r, "p99") for r in e2e]
    out["e2e latency p99.9 (ms) at half max rate"] = [lat(r, "p999") for r in e2e]
    out["e2e latency max (ms) at half max rate"] = [lat(r, "max") for r in e2e]
    out["_e2e_rate"] = [rate]
    return out


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
    ap.add_argument("--e2e-seconds", type=float, default=10)
    ap.add_argument("--ceiling-bytes", type=int, default=1 << 30)
    ap.add_argument("--startup-bytes", type=int, default=10 << 30)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--output", default="docs/benchmarks.md")
    ap.add_argument("--command", default="bash bench/compare.sh")
    a = ap.parse_args()
    b = Bench(a)
    started = datetime.datetime.now(datetime.timezone.utc)

    results = {}
    targets = [("Sluice, 1 node", 1), ("Sluice, 3 nodes", 3)]
    if a.tansu_binary:
        targets.append(("Tansu (memory)", 0))
    batch = 65536
    for name, nodes in targets:
        print(f"== {name}", flush=True)
        d = tempfile.mkdtemp(prefix="sluice-bench-", dir=a.scratch)
        broker = start_tansu(a) if nodes == 0 else start_sluice(a, nodes, d)
        try:
            results[name] = scenarios(a, b, broker, replicated=nodes == 3, strict=nodes > 0)
            if nodes == 1:
                batch = batch_size(broker.admin)
        finally:
            broker.stop()
            shutil.rmtree(d, ignore_errors=True)
    print("== ceilings", flush=True)
    ceil = ceilings(a, b, batch)
    print("== resource use", flush=True)
    rss, held, starts = resources(a, b)

    doc = render(a, results, ceil, batch, rss, held, starts, started)
    write(a.output, doc)
    print(f"wrote {a.output}")


def render(a, results, ceil, batch, rss, held, starts, started):
    names = list(results)
    figures = [k for k in results[names[0]] if not k.startswith("_")]
    for n in names[1:]:
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
             "librdkafka (`sluice-bench`, bundled librdkafka) with `linger.ms=5`, `batch.size=1000000`, "
             "no compression, incompressible values, one producer, topics of 3 partitions.",
             "",
             "### Throughput and latency",
             "",
             "| figure | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for f in figures:
        fmt = "{:,.4f}" if "CPU" in f else "{:,.2f}" if ("ms" in f or "MB/s" in f) else "{:,.0f}"
        lines.append(f"| {f} | " + " | ".join(med(results[n].get(f, []), fmt) for n in names) + " |")
    lines += ["", "### Against the peer and the machine", "",
              "| ratio | value | target |", "| --- | --- | --- |"]
    p100 = median(s1["produce 100 B, acks=1, RF=1"])
    if tansu:
        lines.append(f"| Sluice 1 node / Tansu, produce 100 B acks=1 | "
                     f"{ratio(p100, median(tansu['produce 100 B, acks=1, RF=1']))} | >= 1.5 |")
        lines.append(f"| Sluice 1 node / Tansu, produce 1 KiB acks=1 | "
                     f"{ratio(median(s1['produce 1 KiB, acks=1, RF=1']), median(tansu['produce 1 KiB, acks=1, RF=1']))} | |")
        ck = [k for k in s1 if k.startswith("consume ")][0]
        lines.append(f"| Sluice 1 node / Tansu, consume from the start | "
                     f"{ratio(median(s1[ck]), median(tansu.get(ck, [])))} | |")
    s3 = results.get("Sluice, 3 nodes", {})
    if s3:
        lines.append(f"| Sluice 3 nodes: acks=all RF=3 / acks=1 RF=1 | "
                     f"{ratio(median(s3['produce 100 B, acks=all, RF=3, min.insync=2']), median(s3['produce 100 B, acks=1, RF=1']))} | >= 0.5 |")
    ck = [k for k in s1 if k.startswith("consume ")][0]
    lines.append(f"| Sluice 1 node: consume / produce (100 B) | {ratio(median(s1[ck]), p100)} | >= 2 |")
    lines.append(f"| Sluice 1 node: produce 100 B MB/s / RocksDB put ceiling MB/s | "
                 f"{ratio(median(s1['produce 100 B, acks=1, RF=1 (MB/s)']), rocks_mb)} | >= 0.5 |")
    lines.append(f"| Sluice 1 node: produce 100 B MB/s / disk write ceiling | "
                 f"{ratio(median(s1['produce 100 B, acks=1, RF=1 (MB/s)']), disk_mb)} | |")
    lines.append(f"| Sluice 1 node: e2e p99 at half max rate (ms) | "
                 f"{median(s1['e2e latency p99 (ms) at half max rate']):.2f} at "
                 f"{s1['_e2e_rate'][0]:,.0f} records/s | <= 5 |")
    lines += ["", "### Ceilings (same run)", "",
              "| ceiling | MB/s | records/s of 100 B |", "| --- | --- | --- |",
              f"| RocksDB atomic puts of {batch:,}-byte batches (the node's average batch in this run; "
              f"no compression, no fsync) | {med([r['mb_per_s'] for r in ceil['rocksdb']], '{:,.1f}')} | "
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
              f"CPU per MB produced (node process, user + system): "
              f"{med(s1['CPU seconds per MB produced (broker)'], '{:,.3f}')} s/MB.",
              "", END]
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
