"""Replication figures on one run of `sluice dev --nodes 3` (release build,
default settings: 10 s leases, replica.lag.time.max.ms 30 s), loopback only,
stops by itself. Prints markdown tables:

- metadata (coordination) writes per second in steady state with 10 and with
  1,000 partitions;
- produce throughput, one kcat (librdkafka) producer, 100-byte records:
  acks=all to RF=3 with min.insync.replicas=2, next to acks=1 to RF=1;
- failover time: the leader of an RF=3 partition stopped as a crash would,
  until an acks=all write produced after the stop is acknowledged.

Run with bench/cluster.sh (which builds the binary first).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


class Cluster:
    def __init__(self, binary, data_dir, nodes=3):
        self.proc = subprocess.Popen(
            [binary, "dev", "--nodes", str(nodes), "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--data-dir", data_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit("sluice exited")
            if line.startswith("sluice ready "):
                fields = dict(kv.split("=", 1) for kv in line.split()[2:])
                self.kafka = fields["kafka"].split(",")
                break

    def control(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def writes(self):
        return int(self.control("stats").split("=")[1])

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


def wait_for(fn, timeout=120):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            sys.exit("condition not met")
        time.sleep(0.1)


def settled(admin):
    md = admin.list_topics(timeout=10)
    return all(len(p.isrs) == len(p.replicas) and p.leader >= 0
               for t in md.topics.values() for p in t.partitions.values())


def create(admin, name, partitions, rf, config=None):
    admin.create_topics([NewTopic(name, partitions, rf, config=config or {})])[name].result(60)


def median_row(values):
    return f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=30.0, help="seconds per writes window")
    ap.add_argument("--failovers", type=int, default=2)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-bench-")
    c = Cluster(args.binary, os.path.join(work, "data"))
    bootstrap = ",".join(c.kafka)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        # --- metadata writes -------------------------------------------------
        rates = []
        for name, partitions in (("w10", 10), ("w990", 990)):
            create(admin, name, partitions, 3)
            wait_for(lambda: settled(admin), 300)
            before, t0 = c.writes(), time.monotonic()
            time.sleep(args.window)
            rates.append((c.writes() - before) / (time.monotonic() - t0))
        print("## Metadata writes in steady state (3 nodes)\n")
        print("| topic partitions | writes/s |")
        print("| --- | --- |")
        print(f"| 10 | {rates[0]:.2f} |")
        print(f"| 1,000 | {rates[1]:.2f} |")
        print(f"\n({args.window:.0f} s windows; the 50 partitions of __consumer_offsets "
              "exist in both; every write counted, lease renewals included.)\n")

        # --- throughput -------------------------------------------------------
        create(admin, "rf3", 1, 3, {"min.insync.replicas": "2"})
        create(admin, "rf1", 1, 1)
        wait_for(lambda: settled(admin))
        records = os.path.join(work, "records")
        with open(records, "wb") as f:
            f.write(("x" * 99 + "\n").encode() * args.records)
        results = {"all": [], "one": []}
        for run in range(args.runs):
            for acks, topic in (("all", "rf3"), ("one", "rf1")):
                t = f"{topic}-{run}"
                create(admin, t, 1, 3 if topic == "rf3" else 1,
                       {"min.insync.replicas": "2"} if topic == "rf3" else None)
                wait_for(lambda: settled(admin))
                start = time.monotonic()
                subprocess.run(
                    ["kcat", "-b", bootstrap, "-P", "-t", t, "-p", "0",
                     "-X", f"acks={'all' if acks == 'all' else '1'}", "-X", "linger.ms=5",
                     "-X", "batch.num.messages=10000", "-X", "queue.buffering.max.messages=1000000",
                     "-l", records], check=True)
                results[acks].append(args.records / (time.monotonic() - start))
        print("## Produce throughput, 100-byte records, one kcat producer\n")
        print("| setting | records/s, median of %d | MB/s |" % args.runs)
        print("| --- | --- | --- |")
        for label, key in (("acks=all, RF=3, min.insync.replicas=2", "all"),
                           ("acks=1, RF=1", "one")):
            v = results[key]
            print(f"| {label} | {median_row(v)} | {statistics.median(v) * 100 / 1e6:.1f} |")
        ratio = statistics.median(results["all"]) / statistics.median(results["one"])
        print(f"\nacks=all RF=3 / acks=1 RF=1 = {ratio:.2f}\n")

        # --- failover ---------------------------------------------------------
        times = []
        for n in range(args.failovers):
            leader = admin.list_topics(topic="rf3", timeout=10).topics["rf3"].partitions[0].leader
            assert c.control(f"stop {leader}").startswith("stopped")
            stopped = time.monotonic()
            p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                          "enable.idempotence": True, "message.timeout.ms": 120000})
            p.produce("rf3", value=b"probe", partition=0)
            assert p.flush(120) == 0
            times.append(time.monotonic() - stopped)
            assert c.control(f"start {leader}").startswith("started")
            wait_for(lambda: settled(admin))
        print("## Failover (10 s leases)\n")
        print("| run | leader lost -> acks=all write acknowledged |")
        print("| --- | --- |")
        for i, t in enumerate(times):
            print(f"| {i + 1} | {t:.2f} s |")
    finally:
        c.close()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
