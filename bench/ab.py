"""Produce throughput of two Sluice binaries, A and B, side by side: the
same `sluice-bench produce` load against a fresh `sluice dev` of each, runs
alternating (A, B, A, B, ...) so drift on the machine hits both alike.
Prints each run and the medians as JSON lines. Loopback only.

    /usr/bin/python3 bench/ab.py --a OLD/sluice --b NEW/sluice \
        --bench target/release/sluice-bench [--runs 5] [--records 2000000]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(binary, data_dir):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "dev", "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
         "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{binary} exited with {proc.wait()}")
        if line.startswith("sluice ready "):
            return proc, f"127.0.0.1:{port}"
    raise SystemExit(f"{binary} did not start in 60 s")


def one_run(binary, bench, a, n):
    d = tempfile.mkdtemp(prefix="sluice-ab-")
    proc, bootstrap = serve(binary, d)
    try:
        out = subprocess.run(
            [bench, "produce", "--bootstrap", bootstrap, "--topic", f"ab-{n}",
             "--create-partitions", "3", "--records", str(a.records),
             "--record-size", str(a.record_size), "--acks", a.acks],
            capture_output=True, text=True, timeout=a.timeout, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the baseline sluice binary")
    ap.add_argument("--b", required=True, help="the sluice binary compared with it")
    ap.add_argument("--bench", required=True, help="the sluice-bench binary")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--record-size", type=int, default=100)
    ap.add_argument("--acks", default="1")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()
    rates = {"a": [], "b": []}
    for n in range(a.runs):
        for side in ("a", "b"):
            rep = one_run(getattr(a, side), a.bench, a, n)
            rates[side].append(rep["records_per_s"])
            print(json.dumps({"run": n, "side": side, "records_per_s": rep["records_per_s"],
                              "mb_per_s": rep.get("mb_per_s")}), flush=True)
    ma, mb = statistics.median(rates["a"]), statistics.median(rates["b"])
    print(json.dumps({"median_a": ma, "median_b": mb, "b_over_a": round(mb / ma, 3)}))


if __name__ == "__main__":
    main()
