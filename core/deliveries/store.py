"""The sender's Postgres side: claim deliveries, record outcomes with their status events.

Each method is one statement in autocommit (one round trip): the claim is an upsert that only
takes recipients nobody finished and nobody holds; an outcome updates the claimed rows and writes
the status event into the outbox, with its NOTIFY, in the same statement, so the result and the
event commit together or not at all. Connections come from a small pool; the provider call never
holds one.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg2
from psycopg2.pool import ThreadedConnectionPool

from core.contracts import EmailFailed, EmailRequested, EmailSent, Event
from core.outbox.services import OUTBOX_INSERT_COLUMNS, OUTBOX_INSERT_VALUES, new_event_id, outbox_row
from core.prepared import Prepared

CLAIM = Prepared("sender_claim", """
    INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, lease_until,
                                      provider_message_id, last_error, created_at, updated_at)
    SELECT %(event_id)s, r, %(email_id)s, 'sending', 1, now() + %(lease)s * interval '1 second', '', '', now(), now()
      FROM unnest(%(recipients)s::text[]) AS r
    ON CONFLICT (event_id, recipient) DO UPDATE
       SET state = 'sending', attempts = d.attempts + 1, lease_until = EXCLUDED.lease_until, updated_at = now()
     WHERE d.state = 'retry'
        OR (%(retry_unknown)s AND d.state IN ('sending', 'unknown') AND d.lease_until < now())
    RETURNING recipient, attempts
""")
UNCLAIMED_SQL = """
    SELECT recipient, state, lease_until > now()
      FROM sender_delivery
     WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[])
"""
HOLD_SQL = """
    UPDATE sender_delivery SET state = 'held', lease_until = NULL, updated_at = now(),
           last_error = CASE WHEN last_error = '' THEN 'outcome unknown' ELSE last_error END
     WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[])
       AND (state = 'unknown' OR (state = 'sending' AND lease_until < now()))
"""
OUTCOME = Prepared("sender_outcome", f"""
    WITH done AS (
        UPDATE sender_delivery
           SET state = %(state)s, provider_message_id = %(message_id)s, last_error = %(error)s,
               lease_until = NULL, updated_at = %(occurred_at)s::timestamptz
         WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[]) AND state = 'sending'
        RETURNING 1
    ), event AS (
        INSERT INTO outbox ({OUTBOX_INSERT_COLUMNS})
        SELECT {OUTBOX_INSERT_VALUES}
         WHERE EXISTS (SELECT 1 FROM done)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM event),
           CASE WHEN %(notify)s AND EXISTS (SELECT 1 FROM event) THEN pg_notify(%(channel)s, '') END
""")
SET_STATE_SQL = """
    UPDATE sender_delivery
       SET state = %(state)s, last_error = %(error)s, updated_at = now(),
           lease_until = CASE WHEN %(state)s = 'unknown' THEN now() ELSE NULL END,
           attempts = attempts - %(uncount)s
     WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[]) AND state = 'sending'
"""
PAUSE_GET_SQL = "SELECT extract(epoch FROM paused_until) FROM sender_provider_pause WHERE provider = %s"
PAUSE_SET_SQL = """
    INSERT INTO sender_provider_pause (provider, paused_until, reason)
    VALUES (%s, to_timestamp(%s), %s)
    ON CONFLICT (provider) DO UPDATE
       SET paused_until = GREATEST(sender_provider_pause.paused_until, EXCLUDED.paused_until),
           reason = EXCLUDED.reason
"""


@dataclass
class Claim:
    claimed: dict[str, int] = field(default_factory=dict)  # recipient -> attempt number
    busy: list[str] = field(default_factory=list)  # leased by another sender right now
    held: list[str] = field(default_factory=list)  # outcome unknown, held for ops by policy
    done: list[str] = field(default_factory=list)  # sent, failed or held before


class DeliveryStore:
    def __init__(self, database: dict, *, pool_size: int, notify_channel: str | None, provider: str = "sendgrid"):
        self._pool_size = pool_size
        self._connect_kwargs = dict(
            host=database["HOST"], port=database["PORT"], dbname=database["NAME"], user=database["USER"],
            password=database["PASSWORD"], connect_timeout=database.get("OPTIONS", {}).get("connect_timeout", 5),
            application_name="sender",
        )
        # Opened on first use, not here: a sender started while Postgres is down must wait for it
        # in its run loop like any outage, not die at start.
        self._pool: ThreadedConnectionPool | None = None
        self._pool_lock = threading.Lock()
        # ThreadedConnectionPool raises when it is empty; the sender's threads must wait instead.
        self._available = threading.BoundedSemaphore(pool_size)
        self._notify_channel = notify_channel
        self._provider = provider
        self._pause_cache: tuple[float, float] = (0.0, 0.0)  # (checked at, paused until)

    def _connections(self) -> ThreadedConnectionPool:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    # minconn = maxconn: psycopg2's pool closes every returned connection beyond
                    # minconn, which would make each statement pay for a new Postgres backend.
                    self._pool = ThreadedConnectionPool(self._pool_size, self._pool_size, **self._connect_kwargs)
        return self._pool

    @contextmanager
    def _cursor(self):
        with self._available:
            pool = self._connections()
            conn = pool.getconn()
            broken = False
            try:
                conn.autocommit = True
                with conn.cursor() as cursor:
                    yield cursor
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True
                raise
            finally:
                pool.putconn(conn, close=broken or conn.closed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.closeall()

    def ping(self) -> None:
        with self._cursor() as cursor:
            cursor.execute("SELECT 1")

    # Claims ----------------------------------------------------------------------------------

    def claim(self, event: EmailRequested, *, lease_seconds: float, retry_unknown: bool) -> Claim:
        """Take the recipients of `event` that nobody finished or holds. Idempotent: a second
        claim of a finished delivery takes nothing."""
        params = {"event_id": event.event_id, "email_id": event.email_id, "lease": lease_seconds,
                  "recipients": list(event.recipients), "retry_unknown": retry_unknown}
        claim = Claim()
        with self._cursor() as cursor:
            CLAIM.execute(cursor, params)
            claim.claimed = dict(cursor.fetchall())
            if len(claim.claimed) == len(event.recipients):
                return claim
            cursor.execute(UNCLAIMED_SQL, params)
            rows = [row for row in cursor.fetchall() if row[0] not in claim.claimed]
            stale = [r for r, state, live in rows if state == "unknown" or (state == "sending" and not live)]
            if stale and not retry_unknown:
                cursor.execute(HOLD_SQL, params | {"recipients": stale})
        for recipient, state, live in rows:
            if state == "sending" and live:
                claim.busy.append(recipient)
            elif recipient in stale and not retry_unknown:
                claim.held.append(recipient)
            else:
                claim.done.append(recipient)
        return claim

    # Outcomes --------------------------------------------------------------------------------

    def _outcome(self, *, state: str, event: Event, request: EmailRequested, recipients: list[str],
                 message_id: str = "", error: str = "") -> int:
        row = outbox_row(event, aggregatetype=EmailRequested.AGGREGATE, aggregateid=str(request.email_id))
        params = row | {
            "payload": json.dumps(row["payload"]), "headers": json.dumps(row["headers"]),
            "state": state, "message_id": message_id, "error": error, "event_id": request.event_id,
            "recipients": recipients, "notify": self._notify_channel is not None,
            "occurred_at": event.occurred_at,  # the row and its event carry the same time
            "channel": self._notify_channel or "",
        }
        with self._cursor() as cursor:
            OUTCOME.execute(cursor, params)
            updated, _, _ = cursor.fetchone()
        return updated

    def record_sent(self, request: EmailRequested, recipients: list[str], *, message_id: str, attempt: int,
                    provider: str) -> int:
        """Mark the claimed recipients sent and write `email.sent`, in one statement."""
        event = EmailSent(event_id=new_event_id(), correlation_id=request.correlation_id, occurred_at=_now(),
                          email_id=request.email_id, request_event_id=request.event_id,
                          recipients=tuple(recipients), provider=provider, provider_message_id=message_id,
                          attempt=attempt)
        return self._outcome(state="sent", event=event, request=request, recipients=recipients, message_id=message_id)

    def record_failed(self, request: EmailRequested, recipients: list[str], *, reason: str, permanent: bool,
                      attempt: int, provider: str) -> int:
        """Mark the claimed recipients failed and write `email.failed`, in one statement."""
        event = EmailFailed(event_id=new_event_id(), correlation_id=request.correlation_id, occurred_at=_now(),
                            email_id=request.email_id, request_event_id=request.event_id,
                            recipients=tuple(recipients), provider=provider, reason=reason[:1000],
                            permanent=permanent, attempt=attempt)
        return self._outcome(state="failed", event=event, request=request, recipients=recipients, error=reason[:1000])

    def set_state(self, request: EmailRequested, recipients: list[str], *, state: str, error: str,
                  uncount: bool = False) -> None:
        """Release claimed recipients: `retry` (wait for the retry message), `unknown` (a timeout:
        reclaimable at once by policy) or `held`. `uncount` gives the attempt back."""
        with self._cursor() as cursor:
            cursor.execute(SET_STATE_SQL, {"state": state, "error": error[:1000], "event_id": request.event_id,
                                           "recipients": recipients, "uncount": 1 if uncount else 0})

    # The shared pause after a 429 --------------------------------------------------------------

    def paused_for(self) -> float:
        """Seconds left of the pause every sender honours (0: none). Read at most twice a second."""
        checked, until = self._pause_cache
        now = time.time()
        if now - checked > 0.5:
            with self._cursor() as cursor:
                cursor.execute(PAUSE_GET_SQL, [self._provider])
                row = cursor.fetchone()
            until = float(row[0]) if row else 0.0
            self._pause_cache = (now, until)
        return max(0.0, until - now)

    def pause(self, seconds: float, reason: str) -> None:
        until = time.time() + seconds
        with self._cursor() as cursor:
            cursor.execute(PAUSE_SET_SQL, [self._provider, until, reason[:500]])
        self._pause_cache = (time.time(), max(until, self._pause_cache[1]))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
