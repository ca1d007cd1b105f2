"""Produce throughput over SASL_SSL with SCRAM-SHA-512 next to PLAINTEXT,
on one node serving both listeners, the runs alternating so both see the
same machine (docs/benchmarks.md, "TLS and SCRAM").

    python3 bench/security.py --sluice-binary .../release/sluice \
        --bench-binary .../release/sluice-bench [--records N] [--runs N]

Loopback only; a CA and the node's certificate are made with `openssl`
in a scratch directory. Prints a Markdown table."""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402


def openssl(*argv, cwd):
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True, timeout=60)


def pki(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=bench CA", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext", cwd=d)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sluice-binary", required=True)
    p.add_argument("--bench-binary", required=True)
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--record-size", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=int, default=600)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-sec-") as d:
        pki(d)
        with open(os.path.join(d, "users"), "w") as f:
            f.write("bench:bench-secret\n")
        plain, secure = c.free_port(), c.free_port()
        broker = c.Broker("sluice", [
            a.sluice_binary, "dev", "--admin-listen", "127.0.0.1:0",
            "--data-dir", os.path.join(d, "data"),
            "--listeners", f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}",
            "--ssl-cert", os.path.join(d, "node.pem"), "--ssl-key", os.path.join(d, "node.key"),
            "--scram-users-file", os.path.join(d, "users"),
        ], ready="sluice ready ", env={**os.environ, "RUST_LOG": "warn"})
        b = c.Bench(a)
        sasl_ssl = ["-X", "security.protocol=sasl_ssl",
                    "-X", f"ssl.ca.location={os.path.join(d, 'ca.pem')}",
                    "-X", "sasl.mechanisms=SCRAM-SHA-512",
                    "-X", "sasl.username=bench", "-X", "sasl.password=bench-secret"]
        results = {"PLAINTEXT": [], "SASL_SSL + SCRAM-SHA-512": []}
        try:
            for _ in range(a.runs):
                for name, port, extra in [("PLAINTEXT", plain, []),
                                          ("SASL_SSL + SCRAM-SHA-512", secure, sasl_ssl)]:
                    r = b.run("produce", "--bootstrap", f"127.0.0.1:{port}", "--topic", b.topic(),
                              "--create-partitions", "1", "--records", str(a.records),
                              "--record-size", str(a.record_size), "--acks", "1", *extra)
                    results[name].append(r)
        finally:
            broker.stop()
    plain_rate = c.median([r["records_per_s"] for r in results["PLAINTEXT"]])
    print(f"| listener ({a.records:,} x {a.record_size} B, acks=1, 1 partition, "
          f"librdkafka defaults, {a.runs} runs alternating) | records/s | MB/s | "
          f"ack p99 (ms) | vs PLAINTEXT |")
    print("| --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        rate = c.median([r["records_per_s"] for r in rs])
        print(f"| {name} | {c.med([r['records_per_s'] for r in rs])} | "
              f"{c.med([r['mb_per_s'] for r in rs], '{:.1f}')} | "
              f"{c.med([c.lat(r, 'p99') for r in rs], '{:.1f}')} | {c.ratio(rate, plain_rate)} |")


if __name__ == "__main__":
    main()
