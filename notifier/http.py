"""One POST to a client's endpoint, to the address that was checked (core.client_webhooks.addresses).

urllib3 connects to `Target.address` and says `Target.host` in the Host header and in TLS (SNI and
the certificate's check), so a DNS answer that changed after the check is never used. Redirects are
not followed (a 3xx is a failed attempt, as in Svix); the answer's first bytes are kept for the log.
Connection pools are kept per (scheme, address, port, host) with as many connections as one
endpoint may use at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import urllib3

from core.client_webhooks.addresses import Target

SNIPPET_BYTES = 500
DISCARD_BYTES = 64 * 1024
USER_AGENT = "email-platform-webhooks/1"


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code (None if no answer came), its first bytes, the error."""

    status_code: int | None
    duration_ms: int
    response: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Poster:
    def __init__(self, *, timeout: float, connections_per_host: int):
        self.timeout = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
        self.connections_per_host = connections_per_host
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def _pool(self, target: Target) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.address, target.port, target.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if target.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        target.address,
                        port=target.port,
                        maxsize=self.connections_per_host,
                        timeout=self.timeout,
                        server_hostname=target.host,
                        assert_hostname=target.host,
                        cert_reqs="CERT_REQUIRED",
                    )
                else:
                    pool = urllib3.HTTPConnectionPool(
                        target.address, port=target.port, maxsize=self.connections_per_host, timeout=self.timeout
                    )
                self._pools[key] = pool
            return pool

    def post(self, target: Target, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body` to `target`; never raises for the endpoint's failings (they are the Answer)."""
        started = time.perf_counter()
        headers = {
            **headers,
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        try:
            response = self._pool(target).urlopen(
                "POST",
                target.path,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                snippet = response.read(SNIPPET_BYTES).decode("utf-8", errors="replace")
                # A short answer ends within the next read and its connection is kept; a longer
                # one is cut off with its connection, never read to the end.
                if response.read(DISCARD_BYTES) and response.read(1):
                    response.close()
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Answer(None, _ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
        return Answer(response.status, _ms(started), response=snippet)

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
