#!/usr/bin/env python3
"""A tiny HTTP server that localkube's workload tests run as pods.

It counts its starts in `<data dir>/starts`, so a test can tell whether a
volume survived, and answers `GET /` with its pod name, pod IP and start
count; `GET /healthz` is its probe. Listens on $POD_IP:$PORT (8080)."""
import http.server
import json
import os
import signal
import sys

data = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else "."
os.makedirs(data, exist_ok=True)
path = os.path.join(data, "starts")
starts = int(open(path).read()) + 1 if os.path.exists(path) else 1
with open(path, "w") as f:
    f.write(str(starts))

pod = os.environ.get("POD_NAME", "?")
ip = os.environ.get("POD_IP", "127.0.0.1")
port = int(os.environ.get("PORT", "8080"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            if os.path.exists(os.path.join(data, "unhealthy")):
                self.send_response(500)
                self.end_headers()
                return
            body = b"ok"
        else:
            body = json.dumps({"pod": pod, "ip": ip, "starts": starts,
                               "greeting": os.environ.get("GREETING", ""),
                               "namespace": os.environ.get("POD_NAMESPACE", ""),
                               "token": os.environ.get("TOKEN", ""),
                               "mode": os.environ.get("MODE", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = http.server.HTTPServer((ip, port), Handler)
print(f"serving {pod} on {ip}:{port}, start {starts}", flush=True)
server.serve_forever()
