"""The outbox relay: publish outbox rows to RabbitMQ, never losing one.

`relay_batch` is the whole job for one batch, in one short transaction: claim due, unpublished
rows (FOR UPDATE SKIP LOCKED, oldest due first), publish them all, wait once for their confirms,
mark exactly the confirmed rows published and the returned (unroutable) ones dead, commit. What
was not confirmed (a nack, a timeout, a lost connection) stays unpublished with the attempt and
the error recorded, and is claimed again; consumers dedupe on the event id. A relay killed at any
point loses nothing: its transaction rolls back and the rows are claimed again. Killed after the
broker confirmed and before the commit, its rows are published a second time (same event ids).

Several relays may run at once (rolling deploys, 2 replicas): SKIP LOCKED gives each its own
rows, and a row another relay has just published no longer matches the claim once re-checked, so
no row is published twice in normal operation. Order holds within one relay's batch; across
relays, events of different batches may interleave.

`RelayWorker` is the process around it: LISTEN/NOTIFY wake-ups with a polling fallback (and,
under load, polling alone: see `_listen_while_quiet`), capped reconnect backoff, a pause while the
broker blocks the connection, SIGTERM handling, metrics.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge, Histogram
from psycopg2.extensions import connection as PgConnection

from core.contracts import ContractError, EmailRequested
from core.db import connect_postgres, listen_postgres
from core.deliveries.store import fail_request
from core.outbox.deadletters import PARKED, PARKED_SQL
from core.outbox.sql import (
    CLAIM_SQL,
    MARK_DEAD_SQL,
    MARK_PUBLISHED_SQL,
    MARK_RETRY_SQL,
    NEXT_DUE_SQL,
    outbox_backlog,
)
from core.workers import ReconnectingWorker
from outbox_relay.publisher import BatchResult, ConfirmingPublisher, Planned, PublisherUnavailable, plan_messages

log = structlog.get_logger(__name__)

PUBLISHED = Counter("outbox_relay_published_total", "Outbox rows published and confirmed")
DEAD = Counter("outbox_relay_dead_total", "Outbox rows the broker returned as unroutable")
FAILURES = Counter("outbox_relay_failures_total", "Batches or connections that failed", ["reason"])
BATCH_SIZE = Histogram(
    "outbox_relay_batch_size", "Rows claimed per batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000)
)
BATCH_SECONDS = Histogram(
    "outbox_relay_batch_duration_seconds",
    "Claim, publish, confirm and commit of one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_STATEMENTS = Counter("outbox_relay_db_statements_total", "Statements sent to Postgres by batches")
BACKLOG = Gauge("outbox_backlog", "Unpublished rows that are due")
OLDEST_AGE = Gauge("outbox_oldest_unpublished_age_seconds", "How long the oldest due row has waited")
DEAD_ROWS = Gauge("outbox_dead_rows", "Rows the broker refused, waiting for ops to replay them")
STATS_UPDATED = Gauge(
    "outbox_stats_updated_timestamp_seconds",
    "When the outbox gauges were last read from Postgres: "
    "they are stale when this is old (the relay cannot reach Postgres)",
)


@dataclass(frozen=True)
class BatchOutcome:
    claimed: int
    published: int = 0
    dead: int = 0
    unconfirmed: int = 0
    error: str | None = None
    refused: str | None = None  # the broker closed the channel over a message of the batch
    suspects: tuple[str, ...] = ()  # ... which was one of these: try them one at a time
    ids: tuple[str, ...] = ()  # the rows claimed


def relay_batch(
    conn,
    publisher: ConfirmingPublisher,
    *,
    limit: int,
    confirm_timeout: float,
    crash_after_confirm: bool = False,
    notify_channel: str | None = None,
) -> BatchOutcome:
    """Relay at most `limit` due rows in one transaction of `conn` (psycopg2, not autocommit).

    A row the broker refuses (returned as unroutable; or, alone in its batch, the message the
    broker closed the channel over, e.g. one over its size limit) is marked dead with the reason,
    and when it is an email's request its recipients fail with that reason, in the same
    transaction: the rows behind it keep flowing. When the broker closes the channel over a batch
    of several, they are retried and reported as `suspects`, for the caller to try one at a time.

    Returns what happened; raises PublisherUnavailable (nothing was published, the claim is
    rolled back) and psycopg2 errors (the transaction is lost; the rows are claimed again).
    """
    statements = 2  # BEGIN and the claim
    try:
        with conn.cursor() as cursor:
            cursor.execute(CLAIM_SQL, [limit])
            rows = cursor.fetchall()
            if not rows:
                conn.rollback()
                statements += 1
                return BatchOutcome(claimed=0)
            plan = plan_messages(rows, publisher.topology)
            result: BatchResult = publisher.publish_batch(plan.messages, timeout=confirm_timeout)
            if crash_after_confirm:
                os._exit(70)  # test hook: the broker has confirmed, the commit never happens
            published, dead, retry, packed_returned = _outcomes(plan, result)
            if result.refused and len(rows) == 1 and retry:
                dead[retry.pop()] = f"refused by the broker: {result.refused}"
            if published:
                cursor.execute(MARK_PUBLISHED_SQL, [published])
                statements += 1
            if dead:
                cursor.execute(MARK_DEAD_SQL, [list(dead), list(dead.values())])
                statements += 1 + _fail_requests(cursor, rows, dead, notify_channel)
            error = result.error
            if packed_returned:
                # No queue takes the packed messages (a binding removed by hand?): the rows wait
                # for the reconnect, which declares the topology again.
                error = f"the packed events were returned: {packed_returned}"
                log.error("outbox_packed_events_returned", reason=packed_returned, rows=len(retry))
                publisher.close()
            if retry:
                reason = "nacked by the broker" if result.nacked else error
                cursor.execute(MARK_RETRY_SQL, [reason or "unconfirmed", retry])
                statements += 1
        conn.commit()
        statements += 1
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        DB_STATEMENTS.inc(statements)
    PUBLISHED.inc(len(published))
    DEAD.inc(len(dead))
    for event_id, reason in dead.items():
        log.error("outbox_event_refused", event_id=event_id, reason=reason)
    return BatchOutcome(
        claimed=len(rows),
        published=len(published),
        dead=len(dead),
        unconfirmed=len(retry),
        error=error,
        refused=result.refused,
        suspects=tuple(retry) if result.refused and len(rows) > 1 else (),
        ids=tuple(str(row[0]) for row in rows),
    )


def _outcomes(plan: Planned, result: BatchResult) -> tuple[list[str], dict[str, str], list[str], str]:
    """Each row's fate from its messages': published when all of them were confirmed; dead when
    the broker returned the one that carried it alone (no queue binds its type); else retried.
    Also the reason a packed message came back unroutable, if one did ('' when none)."""
    confirmed = set(result.confirmed)
    published, dead, retry = [], {}, []
    for row_id, carriers in plan.carriers.items():
        returned = [result.returned[m] for m in carriers if m in result.returned and m not in plan.packed]
        if returned:
            dead[row_id] = f"returned: {returned[0]}"
        elif all(m in confirmed for m in carriers):
            published.append(row_id)
        else:
            retry.append(row_id)
    packed_returned = next((reason for m, reason in result.returned.items() if m in plan.packed), "")
    return published, dead, retry, packed_returned


def next_due_in(conn) -> float | None:
    """Seconds until the next row that is not due yet becomes due (None: there is none), by the
    database's clock, in a transaction of its own on `conn`."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(NEXT_DUE_SQL)
            row = cursor.fetchone()
    finally:
        if not conn.closed:
            conn.rollback()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def _fail_requests(cursor, rows, dead: dict[str, str], notify_channel: str | None) -> int:
    """The recipients of every email whose request the broker refused fail with the reason.
    Returns the statements run."""
    statements = 0
    for event_id, event_type, payload, _ in rows:
        if str(event_id) in dead and event_type == EmailRequested.TYPE:
            try:
                request = EmailRequested.from_dict(json.loads(payload))
            except (ValueError, ContractError):
                continue  # not ours to read: dead, for ops
            fail_request(
                cursor,
                request,
                reason=dead[str(event_id)],
                provider="broker",
                notify_channel=notify_channel,
                permanent=True,
            )
            statements += 1
    return statements


@dataclass(frozen=True)
class RelayConfig:
    database: dict
    broker_url: str
    notify_channel: str | None  # None: poll only
    batch_size: int
    poll_interval: float
    confirm_timeout: float
    gather: float = 0.0  # after a NOTIFY, wait this long for more commits before claiming
    # Under load, while the last batch moved (published, or marked dead) more than one row, the
    # relay does not listen and claims this often (never more often than `gather`; None: `gather`):
    # commits arrive faster than one by one, and a longer wait makes fewer, larger batches (fewer
    # claims and confirm waits per row), each row waiting that much longer. The relay is busy until
    # a batch moves one row or none (`RelayWorker._listen_while_quiet`).
    gather_busy: float | None = None
    stats_interval: float = 5.0
    crash_after_confirm: bool = False


class RelayWorker(ReconnectingWorker):
    name = "relay"
    broker_outage = (PublisherUnavailable, *ReconnectingWorker.broker_outage)

    def __init__(self, config: RelayConfig, publisher: ConfirmingPublisher, health):
        super().__init__(health, FAILURES)
        self.config = config
        self.publisher = publisher
        self._conn: PgConnection | None = None
        self._listen: PgConnection | None = None
        self._suspects: set[str] = set()
        self._next_stats = 0.0
        # When the earliest row not due yet is due (time.monotonic()), if known: the wait for work
        # ends then, not on the next poll, so a scheduled send leaves on time.
        self._next_due: float | None = None
        self._woke_for_due = False
        self._woke_by_notify = False
        self._last_moved = 0  # rows the last batch published or marked dead
        # Whether the listen session is LISTENing: not while busy (_listen_while_quiet).
        self._listening = False

    # Lifecycle (the hooks of core.workers.ReconnectingWorker) ----------------------------------

    def started_fields(self) -> dict:
        return {"batch_size": self.config.batch_size, "notify": bool(self.config.notify_channel)}

    def open_postgres(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect_postgres(
                self.config.database,
                application_name="outbox-relay",
                idle_in_transaction_ms=int(max(60.0, 3 * self.config.confirm_timeout) * 1000),
            )
            if self.config.notify_channel:
                self._listen = listen_postgres(
                    self.config.database, application_name="outbox-relay-listen", channel=self.config.notify_channel
                )
                self._listening = True
                # A scheduled send's NOTIFY sent while the relay was away reached nobody: the first
                # claim reads the next due time from the table.
                self._woke_for_due = True

    def open_broker(self) -> None:
        if not self.publisher.is_open:
            self.publisher.connect()

    def disconnect(self, lost: str | None) -> None:
        if lost == "postgres":
            self._close_postgres()
        elif lost == "rabbitmq":
            self.publisher.close()

    def close(self) -> None:
        self._close_postgres()
        self.publisher.close()

    def _close_postgres(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn = self._listen = None

    @property
    def _db(self) -> PgConnection:
        assert self._conn is not None, "the loop opens Postgres first"
        return self._conn

    # The loop --------------------------------------------------------------------------------

    def work(self) -> None:
        while not self._stopping:
            self.health.tick()
            self._refresh_stats()
            if self.publisher.blocked:  # the broker is short of memory or disk: do not claim
                self.publisher.wait([self._stop.fd], self.config.poll_interval)
                continue
            started = time.perf_counter()
            outcome = relay_batch(
                self._db,
                self.publisher,
                # After the broker refused a message of a batch, one row at a time until the
                # suspects are through: the one it refuses again is marked dead on its own.
                limit=1 if self._suspects else self.config.batch_size,
                confirm_timeout=self.config.confirm_timeout,
                crash_after_confirm=self.config.crash_after_confirm,
                notify_channel=self.config.notify_channel,
            )
            self._last_moved = outcome.published + outcome.dead
            if outcome.suspects:
                self._suspects = set(outcome.suspects)
                log.warning("relay_batch_refused_isolating", suspects=len(self._suspects), reason=outcome.refused)
            elif self._suspects and outcome.claimed:
                self._suspects = self._suspects - set(outcome.ids) if set(outcome.ids) & self._suspects else set()
            if outcome.claimed:
                BATCH_SIZE.observe(outcome.claimed)
                BATCH_SECONDS.observe(time.perf_counter() - started)
                log.debug("relay_batch_published", claimed=outcome.claimed, published=outcome.published)
            if outcome.unconfirmed:
                FAILURES.labels(reason="unconfirmed").inc()
                log.warning("relay_batch_unconfirmed", unconfirmed=outcome.unconfirmed, error=outcome.error)
                if not self.publisher.is_open:
                    raise PublisherUnavailable(outcome.error or "connection lost")
            if outcome.claimed == self.config.batch_size and not outcome.unconfirmed:
                continue  # a full batch: there is probably more, go on at once
            # Busy is judged on the rows that left the backlog: a batch the broker did not confirm
            # is not load, and is tried again at the quiet pace, not at once nor at the busy one.
            if self._listen_while_quiet(self._last_moved):
                continue  # listening again: first claim what committed while nobody listened
            if (outcome.claimed == 0 and not self._woke_by_notify) or self._woke_for_due:
                # Idle (a poll found nothing), woken for a due row, or just (re)connected or
                # listening again: learn when the next row not due yet is due. One indexed read,
                # not on the busy path, where the relay claims every busy gather anyway.
                self._woke_for_due = False
                due_in = next_due_in(self._db)
                self._next_due = None if due_in is None else time.monotonic() + due_in
            self._wait_for_work()

    def _busy_gather(self) -> float:
        """The wait before the next claim while busy (the last batch moved more than one row)."""
        if self.config.gather_busy is None:
            return self.config.gather
        return max(self.config.gather, self.config.gather_busy)

    def _listen_while_quiet(self, moved: int) -> bool:
        """LISTEN only while quiet. Under load every committing transaction notifies, and each
        NOTIFY wakes the listen session's backend, which sends it on, and this process, which
        reads it, while a claim every `_busy_gather()` takes the rows as well. So a batch that
        moved more than one row ends the listening (UNLISTEN), and the relay then claims every
        `_busy_gather()` on its own; a batch of one row or none starts it again (LISTEN).
        Returns True when it just did: what committed since the last claim notified nobody, so
        the caller claims once more before it waits for a NOTIFY, and reads the next due time
        from the table (a scheduled send's NOTIFY carried it to nobody)."""
        if self._listen is None:
            return False
        if self._listening:
            if moved > 1 and self._busy_gather() > 0:  # a busy gather of 0 would claim in a loop
                self._set_listening(False)
            return False
        if moved > 1:
            return False
        self._set_listening(True)
        self._woke_for_due = True  # the claim after the LISTEN learns the next due time
        return True

    def _set_listening(self, listening: bool) -> None:
        assert self._listen is not None and self.config.notify_channel
        with self._listen.cursor() as cursor:  # raises OperationalError when Postgres went away
            cursor.execute(f'{"LISTEN" if listening else "UNLISTEN"} "{self.config.notify_channel}"')
        # What arrived before wakes nobody: the claim after the LISTEN takes what committed, and
        # learns the next due time from the table.
        self._listen.poll()
        self._listen.notifies.clear()
        self._listening = listening
        self._woke_by_notify = False
        log.debug("relay_listening" if listening else "relay_polling_while_busy")

    def _wait_for_work(self) -> None:
        if self._listen is not None and not self._listening:
            # Busy: no NOTIFY comes; the next claim is due after the busy gather.
            self.publisher.wait([self._stop.fd], self._busy_gather())
            if not self.publisher.is_open:
                raise PublisherUnavailable("connection lost while idle")
            return
        fds = [self._stop.fd] + ([self._listen.fileno()] if self._listen is not None else [])
        timeout = self.config.poll_interval
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, self._next_due - time.monotonic()))
            if timeout < self.config.poll_interval:
                # This wait ends at it; the claim after it learns the next one.
                self._next_due, self._woke_for_due = None, True
        self.publisher.wait(fds, timeout)
        if self._listen is not None:
            self._listen.poll()  # raises OperationalError when Postgres went away
            woken = self._woke_by_notify = bool(self._listen.notifies)
            self._note_scheduled(self._listen.notifies)
            self._listen.notifies.clear()
            if woken and self.config.gather > 0:
                # A burst of commits notifies once each; gathering them for a few milliseconds
                # makes one batch (one claim, one confirm wait) of many. (Under load the relay
                # does not listen: _listen_while_quiet.)
                self.publisher.wait([self._stop.fd], self.config.gather)
        if not self.publisher.is_open:
            raise PublisherUnavailable("connection lost while idle")

    def _note_scheduled(self, notifies) -> None:
        """A scheduled send's NOTIFY carries its hand-off time (epoch seconds; others carry nothing):
        keep the earliest as the time to wake up."""
        for notify in notifies:
            try:
                at = float(notify.payload)
            except ValueError:
                continue
            due = time.monotonic() + max(0.0, at - time.time())
            if self._next_due is None or due < self._next_due:
                self._next_due = due

    def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.config.stats_interval
        with self._db.cursor() as cursor:
            backlog = outbox_backlog(cursor)
            cursor.execute(PARKED_SQL)
            row = cursor.fetchone()
            assert row is not None  # count(*) answers one row
            (parked,) = row
        self._db.rollback()
        BACKLOG.set(backlog.due)
        OLDEST_AGE.set(backlog.oldest_due_age_seconds)
        DEAD_ROWS.set(backlog.dead)
        PARKED.set(parked)
        STATS_UPDATED.set_to_current_time()
