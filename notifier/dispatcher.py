"""Deliver due client webhook messages: claim, POST signed, record, schedule the next attempt.

The work is three functions a test calls one by one: `claim` (due messages, FOR UPDATE SKIP
LOCKED, each leased so that a notifier that dies mid-delivery gives it back), `deliver` (resolve
and check the address, sign, POST; never raises) and `record` (the attempt's log row, the
message's next state on the retry schedule, the endpoint's failing streak and, after
CLIENT_WEBHOOKS_DISABLE_AFTER of nothing but failures, its disabling).

`NotifierWorker` is the process around them: a bounded thread pool does the POSTs, at most
`per_endpoint` at a time for one endpoint (a hanging endpoint holds that many threads and no
more; the claim skips an endpoint whose slots are all busy), while the main thread alone talks to
Postgres. It wakes on the projector's NOTIFY, on a finished delivery, or every poll interval
(retries come due with time, not with a NOTIFY).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import time
from collections import Counter as Tally
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
import psycopg2.extensions
import structlog
from prometheus_client import Counter, Gauge, Histogram
from psycopg2.extensions import connection as PgConnection

from core.client_webhooks import sql
from core.client_webhooks.addresses import AddressRefused, resolve_deliverable
from core.client_webhooks.signing import signature_headers
from core.db import connect_postgres, listen_postgres
from core.workers import ReconnectingWorker
from notifier.http import Answer, Poster

log = structlog.get_logger(__name__)

ATTEMPTS = Counter("notifier_attempts_total", "Webhook delivery attempts", ["outcome"])
ATTEMPT_SECONDS = Histogram(
    "notifier_attempt_seconds", "One webhook delivery attempt", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
)
DISABLED = Counter("notifier_endpoints_disabled_total", "Endpoints disabled after failing for the whole window")
IN_FLIGHT = Gauge("notifier_in_flight", "Deliveries under way")
BACKLOG = Gauge("notifier_backlog", "Messages due and not delivered yet")
OLDEST_DUE = Gauge("notifier_oldest_due_seconds", "How long the oldest due message has waited")


@dataclass(frozen=True)
class Policy:
    schedule: tuple[float, ...]  # the waits between attempts; one more attempt than tiers
    disable_after: float
    allow_private: bool
    allow_http: bool
    lease_seconds: float


@dataclass(frozen=True)
class Claimed:
    id: str
    endpoint_id: int
    url: str
    keys: tuple[str, ...]  # the current secret, then the previous one while it overlaps
    body: str
    attempts: int  # before this one


def claim(
    conn: PgConnection, *, limit: int, in_flight: Mapping[int, int], per_endpoint: int, lease: float
) -> list[Claimed]:
    """Claim up to `limit` due messages, at most `per_endpoint` in flight for one endpoint
    (`in_flight` counts those already under way); lease them and commit. Raises on a database error."""
    taken: list[Claimed] = []
    room = {endpoint: per_endpoint - n for endpoint, n in in_flight.items()}
    with conn.cursor() as cursor:
        busy = sorted(endpoint for endpoint, left in room.items() if left <= 0)
        cursor.execute(sql.CLAIM_SQL, {"busy": busy, "limit": limit})
        for message_id, endpoint_id, url, secret, previous, body, attempts in cursor.fetchall():
            left = room.get(endpoint_id, per_endpoint)
            if left <= 0:
                continue  # its row stays due, unlocked at commit
            room[endpoint_id] = left - 1
            keys = tuple(key for key in (secret, previous) if key)
            taken.append(Claimed(message_id, endpoint_id, url, keys, body, attempts))
        if taken:
            cursor.execute(sql.LEASE_SQL, {"lease": lease, "ids": [c.id for c in taken]})
    conn.commit()
    return taken


def deliver(message: Claimed, *, poster: Poster, policy: Policy) -> Answer:
    """Check the endpoint's address anew, sign `message` now and POST it; the outcome, never raises."""
    started = time.perf_counter()
    try:
        target = resolve_deliverable(message.url, allow_http=policy.allow_http, allow_private=policy.allow_private)
    except AddressRefused as exc:
        return Answer(None, int((time.perf_counter() - started) * 1000), error=str(exc)[:500])
    headers = signature_headers(message_id=message.id, body=message.body, keys=message.keys, at=datetime.now(UTC))
    return poster.post(target, message.body.encode(), headers)


def record(conn: PgConnection, results: list[tuple[Claimed, Answer, datetime]], *, policy: Policy) -> list[int]:
    """Record a batch of attempts and their consequences in one transaction (a few statements,
    whatever the batch's size): the log, each message's next state on the retry schedule, each
    endpoint's failing streak (the last outcome of the batch for it decides) and the endpoints
    whose streak has lasted the whole window, disabled. Returns those. Raises on a database error
    (rolled back: the leases bring the messages back)."""
    attempts, outcomes = [], []
    last_error: dict[int, str | None] = {}  # endpoint -> its last outcome's error (None: it answered)
    for message, answer, attempted_at in results:
        error = (answer.error or ("" if answer.ok else f"HTTP {answer.status_code}"))[:500]
        attempts.append(
            {
                "id": message.id,
                "attempted_at": attempted_at.isoformat(),
                "status_code": answer.status_code,
                "duration_ms": answer.duration_ms,
                "response": answer.response[:500],
                "error": error,
            }
        )
        done = message.attempts + 1
        if answer.ok:
            outcome, wait = "delivered", 0.0
        elif done <= len(policy.schedule):
            outcome, wait = "retry", policy.schedule[done - 1]
        else:
            outcome, wait = "failed", 0.0
        outcomes.append({"id": message.id, "outcome": outcome, "error": error, "wait": wait})
        last_error[message.endpoint_id] = None if answer.ok else error
    answered = sorted(e for e, error in last_error.items() if error is None)
    failed = {e: error for e, error in last_error.items() if error is not None}
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql.ATTEMPTS_SQL, [json.dumps(attempts)])
            cursor.execute(sql.OUTCOMES_SQL, [json.dumps(outcomes)])
            disabled: list[int] = []
            if answered:
                cursor.execute(sql.ENDPOINTS_ANSWERED_SQL, [answered])
            if failed:
                cursor.execute(sql.ENDPOINTS_FAILED_SQL, [sorted(failed)])
                cursor.execute(
                    sql.DISABLE_SQL,
                    {
                        "failed": json.dumps([{"id": e, "error": error[:300]} for e, error in failed.items()]),
                        "seconds": policy.disable_after,
                        "window": _duration(policy.disable_after),
                    },
                )
                disabled = [row[0] for row in cursor.fetchall()]
                if disabled:
                    cursor.execute(sql.PARK_SQL, [disabled])
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    for _message, answer, _ in results:
        ATTEMPTS.labels(outcome="delivered" if answer.ok else "failed").inc()
        ATTEMPT_SECONDS.observe(answer.duration_ms / 1000)
    for endpoint_id in disabled:
        DISABLED.inc()
        log.warning("client_webhook_endpoint_disabled", endpoint_id=endpoint_id)
    return disabled


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class NotifierWorker(ReconnectingWorker):
    name = "notifier"
    uses_broker = False

    def __init__(
        self,
        *,
        database: dict,
        health,
        policy: Policy,
        poster: Poster,
        concurrency: int = 32,
        per_endpoint: int = 4,
        poll_interval: float = 1.0,
        notify_channel: str | None = None,
        stats_interval: float = 5.0,
        gather: float = 0.005,
    ):
        super().__init__(health)
        self.database, self.policy, self.poster = database, policy, poster
        self.concurrency, self.per_endpoint = concurrency, per_endpoint
        self.poll_interval, self.notify_channel, self.stats_interval = poll_interval, notify_channel, stats_interval
        self._conn: PgConnection | None = None
        self._listen: PgConnection | None = None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="notifier")
        self._results: queue.Queue[tuple[Claimed, Answer, datetime]] = queue.Queue()
        self._unrecorded: list[tuple[Claimed, Answer, datetime]] = []
        self._in_flight: Tally[int] = Tally()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._next_stats = 0.0
        # After a delivery finishes, wait this long for others before recording and claiming: under
        # load one round of statements then serves many deliveries instead of one.
        self.gather = gather

    def started_fields(self) -> dict:
        return {"concurrency": self.concurrency, "per_endpoint": self.per_endpoint, "notify": bool(self.notify_channel)}

    def open_postgres(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect_postgres(self.database, application_name="notifier", idle_in_transaction_ms=60_000)
            if self.notify_channel:
                self._listen = listen_postgres(
                    self.database, application_name="notifier-listen", channel=self.notify_channel
                )

    def disconnect(self, lost: str | None) -> None:
        if lost == "postgres":
            self._close_postgres()

    def close(self) -> None:
        # Deliveries under way end within their timeout; their results are recorded if Postgres
        # is there, else their leases bring them back.
        self._pool.shutdown(wait=True)
        with contextlib.suppress(psycopg2.Error, AssertionError):
            self._record_finished()
        self._close_postgres()
        self.poster.close()

    def _close_postgres(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn = self._listen = None

    @property
    def _db(self) -> PgConnection:
        assert self._conn is not None, "the loop opens Postgres first"
        return self._conn

    def work(self) -> None:
        while not self._stopping:
            self.health.tick()
            self._record_finished()
            self._refresh_stats()
            free_total = self.concurrency - sum(self._in_flight.values())
            trimmed = False
            if free_total > 0:
                taken = claim(
                    self._db,
                    limit=free_total,
                    in_flight=self._in_flight,
                    per_endpoint=self.per_endpoint,
                    lease=self.policy.lease_seconds,
                )
                for message in taken:
                    self._in_flight[message.endpoint_id] += 1
                    self._pool.submit(self._deliver, message)
                IN_FLIGHT.set(sum(self._in_flight.values()))
                # A claim cut short by per-endpoint limits may have left other endpoints' messages.
                trimmed = 0 < len(taken) < free_total and any(
                    self._in_flight[m.endpoint_id] >= self.per_endpoint for m in taken
                )
            if not trimmed:
                self._wait()

    def _deliver(self, message: Claimed) -> None:
        attempted_at = datetime.now(UTC)
        try:
            answer = deliver(message, poster=self.poster, policy=self.policy)
        except Exception as exc:  # a bug must not lose the slot: it is recorded as a failed attempt
            log.exception("client_webhook_delivery_crashed", message_id=message.id)
            answer = Answer(None, 0, error=f"internal error: {type(exc).__name__}")
        self._results.put((message, answer, attempted_at))
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    def _record_finished(self) -> None:
        while True:
            try:
                self._unrecorded.append(self._results.get_nowait())
            except queue.Empty:
                break
        if not self._unrecorded:
            return
        results, self._unrecorded = self._unrecorded, []
        for message, _, _ in results:
            self._in_flight[message.endpoint_id] -= 1
            if self._in_flight[message.endpoint_id] <= 0:
                del self._in_flight[message.endpoint_id]
        try:
            try:
                record(self._db, results, policy=self.policy)
            except psycopg2.IntegrityError:
                # An endpoint deleted in the instant between the check and the insert: record the
                # batch one by one and drop what no longer has a message to belong to.
                for result in results:
                    with contextlib.suppress(psycopg2.IntegrityError):
                        record(self._db, [result], policy=self.policy)
        except psycopg2.Error:
            self._unrecorded = results  # recorded once Postgres is back (their slots are free already)
            raise
        IN_FLIGHT.set(sum(self._in_flight.values()))

    def _wait(self) -> None:
        fds = [self._stop.fd, self._wake_read] + ([self._listen.fileno()] if self._listen is not None else [])
        ready, _, _ = select.select(fds, [], [], self.poll_interval)
        if self._wake_read in ready and self.gather > 0 and sum(self._in_flight.values()) > 1:
            self._stop.sleep(self.gather)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        if self._listen is not None:
            self._listen.poll()  # raises OperationalError when Postgres went away
            self._listen.notifies.clear()

    def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.stats_interval
        with self._db.cursor() as cursor:
            cursor.execute(sql.BACKLOG_SQL)
            row = cursor.fetchone()
            assert row is not None
        self._db.rollback()
        BACKLOG.set(row[0])
        OLDEST_DUE.set(float(row[1]))
