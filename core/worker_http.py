"""The small HTTP server every worker runs for Kubernetes probes and Prometheus.

/healthz  200 while the worker's loop keeps turning (liveness)
/readyz   200 while it is connected to what it needs (readiness), 503 otherwise
/metrics  Prometheus text format
"""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Health:
    """Thread-safe enough: the worker writes plain attributes, the server thread reads them.

    `checks` are asked on each readiness probe, by the server's thread (e.g. core.schema's
    migrations_applied: a worker is not ready while its tables are not all there)."""

    def __init__(self, *, stall_seconds: float = 60.0, checks: dict[str, Callable[[], bool]] | None = None):
        self.stall_seconds = stall_seconds
        self.last_tick = time.monotonic()
        self.dependencies: dict[str, bool] = {}
        self.checks = checks or {}

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def set(self, dependency: str, ok: bool) -> None:
        self.dependencies[dependency] = ok

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_seconds

    def ready(self) -> bool:
        return self.readiness()[0]

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether the worker is ready, and each dependency's and check's state."""
        states = {**self.dependencies, **{name: check() for name, check in self.checks.items()}}
        return bool(self.dependencies) and all(states.values()), states


def serve(health: Health, *, host: str, port: int) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; returns it (call shutdown() to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/healthz":
                self._json(200 if health.alive() else 503, {"alive": health.alive()})
            elif self.path == "/readyz":
                ready, states = health.readiness()
                self._json(200 if ready else 503, {"ready": ready, **states})
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
