"""A local HTTP receiver for client webhooks (tests and bench/client_webhooks.py): each path
behaves as its name says. /fast/… answers 204 at once, /fail/… answers 500, /hang/… holds the
request until `release` is set (or `hang_seconds` pass, or the client gives up) then answers 200. Every request is kept
with its headers, body and arrival time; `most_at_once[path prefix]` is the peak of requests
under way together."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    at: float  # time.time()


class Receiver:
    def __init__(self, *, hang_seconds: float = 30.0):
        self.hang_seconds = hang_seconds
        self.release = threading.Event()
        self.received: list[Received] = []
        self.under_way: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                kind = self.path.strip("/").split("/")[0]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                    receiver.under_way[kind] += 1
                    receiver.most_at_once[kind] = max(receiver.most_at_once[kind], receiver.under_way[kind])
                try:
                    if kind == "hang":
                        self._hang()
                    status = {"fail": 500, "hang": 200}.get(kind, 204)
                    self.send_response(status)
                    self.send_header("Content-Length", "2" if status != 204 else "0")
                    self.end_headers()
                    if status != 204:
                        self.wfile.write(b"ok" if status == 200 else b"no")
                except OSError:
                    pass  # the notifier gave up on it (its timeout)
                finally:
                    with receiver._lock:
                        receiver.under_way[kind] -= 1

            def _hang(self):
                """Hold the request until released, the time is up, or the client gave up (its
                timeout): `under_way` then counts only requests a client still waits on."""
                deadline = time.monotonic() + receiver.hang_seconds
                while not receiver.release.wait(0.1) and time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):
                        raise ConnectionAbortedError("the client gave up")

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.strip('/')}/"

    def at(self, kind: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.strip("/").split("/")[0] == kind]

    def by_path(self) -> dict[str, list[Received]]:
        grouped = defaultdict(list)
        with self._lock:
            for r in self.received:
                grouped[r.path].append(r)
        return grouped

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
