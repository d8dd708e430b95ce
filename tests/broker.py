"""Helpers for tests against the real RabbitMQ: a topology of its own per test, collecting what
arrives on a queue, and the relay as a real OS process."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
from django.conf import settings
from django.db import connection

from core.broker import EVENTS_BATCH, Topology, connection_parameters, declare_topology

ROOT = Path(__file__).resolve().parent.parent


def blocking_connection(url: str | None = None) -> pika.BlockingConnection:
    """To RABBITMQ_URL (or `url`): the first of its nodes that answers."""
    return pika.BlockingConnection(connection_parameters(url or settings.RABBITMQ_URL, heartbeat=30))


def new_topology(**kwargs) -> Topology:
    return Topology(prefix=f"test-{uuid.uuid4().hex[:10]}", **kwargs)


def declare(topology: Topology, url: str | None = None) -> None:
    conn = blocking_connection(url)
    try:
        declare_topology(conn.channel(), topology)
    finally:
        conn.close()


def delete(topology: Topology, url: str | None = None) -> None:
    conn = blocking_connection(url)
    try:
        channel = conn.channel()
        for queue in topology.all_queues():
            channel.queue_delete(queue)
        channel.exchange_delete(topology.exchange)
        channel.exchange_delete(topology.dead_letter_exchange)
    finally:
        conn.close()


def purge(topology: Topology) -> None:
    """Empty every queue of the topology (benchmarks start from nothing)."""
    conn = blocking_connection()
    try:
        channel = conn.channel()
        for queue in topology.all_queues():
            channel.queue_purge(queue)
    finally:
        conn.close()


@dataclass
class Received:
    messages: list = field(default_factory=list)  # (properties, body)

    @property
    def ids(self) -> list[str]:
        return [properties.message_id for properties, _ in self.messages]

    @property
    def duplicates(self) -> int:
        return len(self.ids) - len(set(self.ids))

    def by_id(self) -> dict:
        return {properties.message_id: (properties, body) for properties, body in self.messages}


def unpacked(properties, body: bytes) -> list[tuple]:
    """A delivered message as (properties, body) pairs, one per event: a packed message
    (EVENTS_BATCH) is its events, each with its event id as message id and its type."""
    if properties.type != EVENTS_BATCH:
        return [(properties, body)]
    return [
        (
            pika.BasicProperties(
                message_id=event["event_id"], type=event["type"], headers={"packed_in": properties.message_id}
            ),
            json.dumps(event).encode(),
        )
        for event in json.loads(body)
    ]


def collect(queue: str, *, expect_ids: set[str] | int, timeout: float = 30.0, settle: float = 0.5) -> Received:
    """Consume `queue` until every expected id (or that many distinct ids) arrived and nothing
    more came for `settle` seconds, or until `timeout`. Acks everything. A packed message counts
    as its events (`unpacked`)."""
    received = Received()
    seen: set[str] = set()
    want = expect_ids if isinstance(expect_ids, int) else len(expect_ids)
    conn = blocking_connection()
    deadline = time.monotonic() + timeout
    try:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1000)
        for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=settle):
            if method is not None:
                for one in unpacked(properties, body):
                    received.messages.append(one)
                    seen.add(one[0].message_id)
            elif len(seen) >= want:
                break
            if time.monotonic() > deadline:
                break
        channel.cancel()
    finally:
        conn.close()
    return received


def _declared(queue: str, url: str | None):
    conn = blocking_connection(url)
    try:
        return conn.channel().queue_declare(queue, passive=True).method
    finally:
        conn.close()


def queue_depth(queue: str, url: str | None = None) -> int:
    return _declared(queue, url).message_count


def consumer_count(queue: str, url: str | None = None) -> int:
    return _declared(queue, url).consumer_count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """`python -m <module> run` (the relay, the sender) as a real process against the test
    database and this test's topology, with probes on a free port."""

    VERBS = {"query_api": "project"}

    def __init__(self, module: str, topology: Topology, **env):
        self.module = module
        self.verb = self.VERBS.get(module, "run")
        self.port = free_port()
        self.env = (
            os.environ
            | {
                "DJANGO_SETTINGS_MODULE": f"{module}.settings",  # the process's own, as deployed
                "POSTGRES_DB": connection.settings_dict["NAME"],
                "BROKER_PREFIX": topology.prefix,
                "LOG_JSON": "true",
                "PYTHONUNBUFFERED": "1",
            }
            | {key: str(value) for key, value in env.items()}
        )
        self.process: subprocess.Popen | None = None
        self.log_path = ROOT / "var" / "test-logs" / f"{module}-{topology.prefix}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, self.verb, "--http-host", "127.0.0.1", "--http-port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.module} exited with {self.process.returncode}: {self.logs()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.module} not ready in {timeout}s: {self.logs()[-2000:]}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self) -> list[str]:
        """The `event` of every JSON log line, in order."""
        return [json.loads(line).get("event") for line in self.logs().splitlines() if line.startswith("{")]

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def counter(ids) -> collections.Counter:
    return collections.Counter(ids)


def fill_outbox(
    count: int, *, event_type: str = "email.requested", payload_bytes: int = 1000, not_before_sql: str = "now()"
) -> list[str]:
    """Insert `count` due outbox rows with ~`payload_bytes` payloads; returns their ids in order.
    Uses Django's connection: commit it (transaction=True tests) for other processes to see."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers,
                                created_at, not_before, attempts, last_error)
            SELECT gen_random_uuid(), 'sent_email', g::text, %s,
                   jsonb_build_object('type', %s::text, 'n', g, 'pad', repeat('x', %s)),
                   jsonb_build_object('schema_version', 1, 'correlation_id', 'c-' || g, 'aggregateid', g::text),
                   clock_timestamp(), {not_before_sql}, 0, ''
              FROM generate_series(1, %s) AS g
            RETURNING id
            """,
            [event_type, event_type, payload_bytes, count],
        )
        return [str(row[0]) for row in cursor.fetchall()]


def published_count(ids=None) -> int:
    with connection.cursor() as cursor:
        if ids is None:
            cursor.execute("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        else:
            cursor.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND id = ANY(%s::uuid[])", [list(ids)]
            )
        return cursor.fetchone()[0]


def RelayProcess(topology: Topology, **env) -> WorkerProcess:
    return WorkerProcess("outbox_relay", topology, **env)


def publish(
    topology: Topology,
    body: dict,
    *,
    message_id: str,
    routing_key: str = "email.requested",
    raw: bytes | None = None,
    headers: dict | None = None,
    url: str | None = None,
    queue: str | None = None,
) -> None:
    """Publish one event (or raw bytes) to the topology's exchange, confirmed; with `queue`,
    straight to that queue (through the default exchange), whatever its bindings."""
    conn = blocking_connection(url)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "" if queue else topology.exchange,
            queue or routing_key,
            raw if raw is not None else json.dumps(body).encode(),
            pika.BasicProperties(
                message_id=message_id, type=routing_key, delivery_mode=2, correlation_id="test", headers=headers
            ),
            mandatory=True,
        )
    finally:
        conn.close()
