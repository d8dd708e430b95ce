"""The small HTTP server every worker runs for Kubernetes probes and Prometheus.

/healthz  200 while the worker's loop keeps turning (liveness)
/readyz   200 while it is connected to what it needs (readiness), 503 otherwise
/metrics  Prometheus text format
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Health:
    """Thread-safe enough: the worker writes plain attributes, the server thread reads them."""

    def __init__(self, *, stall_seconds: float = 60.0):
        self.stall_seconds = stall_seconds
        self.last_tick = time.monotonic()
        self.dependencies: dict[str, bool] = {}

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def set(self, dependency: str, ok: bool) -> None:
        self.dependencies[dependency] = ok

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_seconds

    def ready(self) -> bool:
        return bool(self.dependencies) and all(self.dependencies.values())


def serve(health: Health, *, host: str, port: int) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; returns it (call shutdown() to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/healthz":
                self._json(200 if health.alive() else 503, {"alive": health.alive()})
            elif self.path == "/readyz":
                self._json(200 if health.ready() else 503, {"ready": health.ready(), **health.dependencies})
            elif self.path == "/metrics":
                body = generate_latest(REGISTRY)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._json(404, {"message": "not found"})

        def _json(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # probes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server
