"""The delivery records' SQL on the sender's path: claim deliveries, record outcomes with their
status events, schedule what comes next, and note what the provider reported.

Each method is one statement in autocommit (one round trip). The claim is an upsert that only
takes recipients nobody finished, nobody holds, and that are due; it stamps them with a claim
token, and every outcome write applies only while that token still holds the row (a sender
whose lease ran out cannot overwrite another's result). An outcome updates the claimed rows and
writes the status event into the outbox, with its NOTIFY, in the same statement, so the result
and the event commit together or not at all.

What comes later lives in the data, not in the broker: a recipient to retry has its
`next_attempt_at`, and the event's own outbox row is armed again for the earliest moment one of
its recipients is due (`rearm`), so the relay publishes the same event id again then. A
delivery in doubt (the sender died, or the call timed out, after the provider may have taken
it) is resolved from the provider's own events, which the webhook notes on the deliveries in
the transaction that stores them (`note_provider_reports`): seen, it is sent, never resent; not
seen within the grace period, it is sent again (or held, by policy).

The suppression check is part of the claim: a recipient on its owner's list (core.suppressions)
is never claimed, so never sent; it is written `suppressed`, terminal, with the reason and
`email.suppressed`. The claim is the moment the send is decided, and the list is read in the
claim's own snapshot, so a suppression committed before it always counts (one committed after
it comes after the decision), however long the email waited for its turn or its retry.

Connections come from a small pool; the provider call never holds one. Claims and outcomes of
threads that arrive together run as one statement (core.deliveries.batching), each row with the
same conditions and its own token, so a busy sender commits a handful of times per batch instead
of twice per email.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg2
import structlog
from prometheus_client import Counter
from psycopg2.pool import ThreadedConnectionPool

from core.contracts import (
    ContractError,
    EmailCancelled,
    EmailDeliveryStatus,
    EmailDeliveryStatuses,
    EmailFailed,
    EmailRequested,
    EmailSent,
    EmailSuppressed,
    Event,
    event_from_dict,
)
from core.db import connect_kwargs
from core.deliveries.batching import Batch
from core.deliveries.states import TERMINAL_SQL
from core.outbox.services import new_event_id
from core.outbox.sql import GIVEN as OUTBOX_GIVEN
from core.outbox.sql import TABLE as OUTBOX
from core.outbox.sql import insert_select, outbox_parameters
from core.prepared import Prepared
from core.suppressions.sql import not_suppressed, suppressed_recipients
from core.text import uuid_text

log = structlog.get_logger(__name__)

BATCH_ROWS = 500  # deliveries one batched claim or outcome statement writes, at most
BATCH_FALLBACKS = Counter(
    "sender_batch_fallbacks_total",
    "Batched claims, outcomes or receipts Postgres refused (a bad value, a timeout, a deadlock), run again one by one",
    ["kind"],
)

# Who may take a delivery that exists: a retry that is due, or (with `resend`) one in doubt whose
# lease and grace ran out with no word from the provider (the grace counts from the later of its
# last attempt and `grace_from`, a scheduled send's send_at).
_CLAIMABLE = """(d.state = 'retry' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now()))
        OR (%(resend)s::bool AND d.state IN ('sending', 'unknown') AND d.lease_until < now()
            AND d.provider_seen_at IS NULL
            AND greatest(d.updated_at, %(grace_from)s::timestamptz)
                <= now() - %(grace)s::float8 * interval '1 second')"""
# The suppression check's `email.suppressed`: the recipients and their reasons, in one order.
_SUPPRESSED_EVENT = insert_select(
    payload="""%(payload)s::jsonb || jsonb_build_object(
                   'recipients', (SELECT jsonb_agg(recipient ORDER BY recipient) FROM suppressed),
                   'reasons', (SELECT jsonb_agg(last_error ORDER BY recipient) FROM suppressed))"""
)
# The claim: new recipients and those due again, none on the owner's suppression list (the list
# is read in the claim's own snapshot: a suppression committed before it stops the recipient).
# Every email runs it; the check adds one index probe per recipient.
CLAIM = Prepared(
    "sender_claim",
    f"""
    INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, lease_until, claim_token,
                                      provider_message_id, last_error, created_at, updated_at)
    SELECT %(event_id)s::uuid, r, %(email_id)s::bigint, 'sending', 1, now() + %(lease)s::float8 * interval '1 second',
           %(token)s::uuid, '', '', now(), now()
      FROM unnest(%(recipients)s::text[]) AS r
     WHERE {not_suppressed(owner="%(owner_id)s::bigint", recipient="r")}
    ON CONFLICT (event_id, recipient) DO UPDATE
       SET state = 'sending', attempts = d.attempts + 1, lease_until = EXCLUDED.lease_until,
           claim_token = EXCLUDED.claim_token, next_attempt_at = NULL, updated_at = now()
     WHERE {_CLAIMABLE}
    RETURNING recipient, attempts, last_error
""",
)
# CLAIM for many emails at once (core.deliveries.batching): the same rows, each email with its
# own token and grace, in one statement. Emails go in event id order and each email's recipients
# in the request's order, so two batches, or a batch and a cancel, take the rows' locks in one
# order. Rows come back with their event id.
_CLAIMABLE_EACH = _CLAIMABLE.replace(
    "%(grace_from)s::timestamptz", "(SELECT g.grace_from FROM given g WHERE g.token = EXCLUDED.claim_token)"
)
CLAIM_MANY = Prepared(
    "sender_claim_many",
    f"""
    WITH given AS (
        SELECT * FROM jsonb_to_recordset(%(emails)s::jsonb)
            AS g(event_id uuid, email_id bigint, owner_id bigint, recipients text[], grace_from timestamptz,
                 token uuid)
    )
    INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, lease_until, claim_token,
                                      provider_message_id, last_error, created_at, updated_at)
    SELECT g.event_id, r.recipient, g.email_id, 'sending', 1, now() + %(lease)s::float8 * interval '1 second',
           g.token, '', '', now(), now()
      FROM given g CROSS JOIN LATERAL unnest(g.recipients) WITH ORDINALITY AS r(recipient, position)
     WHERE {not_suppressed(owner="g.owner_id", recipient="r.recipient")}
     ORDER BY g.event_id, r.position
    ON CONFLICT (event_id, recipient) DO UPDATE
       SET state = 'sending', attempts = d.attempts + 1, lease_until = EXCLUDED.lease_until,
           claim_token = EXCLUDED.claim_token, next_attempt_at = NULL, updated_at = now()
     WHERE {_CLAIMABLE_EACH}
    RETURNING claim_token::text, recipient, attempts, last_error
""",
)
# The rest of a claim, for the recipients the first statement did not take (rare: suppressed,
# duplicates, retries not due): in one statement, those on the owner's list (`barred`) are not
# claimed but written `suppressed` with the reason, with `email.suppressed` in the outbox (only
# when any were), and the others are claimed. It reads the list again, in its own snapshot:
# whatever it finds is the decision, claim or suppress, so a change of the list between the two
# statements leaves no recipient undecided. Rows come back as (recipient, attempts, last_error,
# suppressed); a row of NULLs says the relay was woken.
CLAIM_SUPPRESSING = Prepared(
    "sender_claim_suppressing",
    f"""
    WITH barred AS MATERIALIZED (
        {suppressed_recipients(owner="%(owner_id)s::bigint", recipients="%(recipients)s")}
    ), suppressed AS (
        INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, provider_message_id,
                                          last_error, created_at, updated_at)
        SELECT %(event_id)s::uuid, b.recipient, %(email_id)s::bigint, 'suppressed', 0, '', b.reason, now(), now()
          FROM barred b
         ORDER BY b.position
        ON CONFLICT (event_id, recipient) DO UPDATE
           SET state = 'suppressed', last_error = EXCLUDED.last_error, lease_until = NULL, claim_token = NULL,
               next_attempt_at = NULL, updated_at = now()
         WHERE {_CLAIMABLE}
        RETURNING recipient, last_error
    ), event AS (
        {_SUPPRESSED_EVENT}
         WHERE EXISTS (SELECT 1 FROM suppressed)
        RETURNING 1
    ), claimed AS (
        INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, lease_until, claim_token,
                                          provider_message_id, last_error, created_at, updated_at)
        SELECT %(event_id)s::uuid, r, %(email_id)s::bigint, 'sending', 1,
               now() + %(lease)s::float8 * interval '1 second', %(token)s::uuid, '', '', now(), now()
          FROM unnest(%(recipients)s::text[]) AS r
         WHERE NOT EXISTS (SELECT 1 FROM barred b WHERE b.recipient = r)
        ON CONFLICT (event_id, recipient) DO UPDATE
           SET state = 'sending', attempts = d.attempts + 1, lease_until = EXCLUDED.lease_until,
               claim_token = EXCLUDED.claim_token, next_attempt_at = NULL, updated_at = now()
         WHERE {_CLAIMABLE}
        RETURNING recipient, attempts, last_error
    )
    SELECT recipient, attempts, last_error, false FROM claimed
    UNION ALL
    SELECT recipient, 0, last_error, true FROM suppressed
    UNION ALL
    SELECT NULL, NULL, NULL, NULL
      FROM (SELECT pg_notify(%(channel)s, '') FROM event WHERE %(notify)s::bool) AS woken
""",
)
# What the claim did not take, and why.
UNCLAIMED_SQL = """
    SELECT recipient, state, coalesce(lease_until > now(), false), provider_seen_at IS NOT NULL,
           greatest(updated_at, %(grace_from)s::timestamptz) > now() - %(grace)s::float8 * interval '1 second'
      FROM sender_delivery
     WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[])
"""
HOLD_SQL = """
    UPDATE sender_delivery SET state = 'held', lease_until = NULL, claim_token = NULL, updated_at = now(),
           last_error = CASE WHEN last_error = '' THEN 'outcome unknown' ELSE last_error END
     WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[]) AND provider_seen_at IS NULL
       AND (state = 'unknown' OR (state = 'sending' AND lease_until < now()))
"""


def _and_event(insert: str, counts: str = "(SELECT count(*) FROM done)") -> str:
    """The tail of an outcome statement whose first part (`done`) changed deliveries: the outbox
    event `insert` only if it changed any, `counts` returned, and the relay woken when asked."""
    return f"""    ), event AS (
        {insert}
         WHERE EXISTS (SELECT 1 FROM done)
        RETURNING 1
    )
    SELECT {counts},
           CASE WHEN %(notify)s AND EXISTS (SELECT 1 FROM event) THEN pg_notify(%(channel)s, '') END"""


OUTCOME = Prepared(
    "sender_outcome",
    f"""
    WITH done AS (
        UPDATE sender_delivery
           SET state = %(state)s, provider_message_id = %(message_id)s, last_error = %(error)s,
               lease_until = NULL, claim_token = NULL, updated_at = %(occurred_at)s::timestamptz,
               attempts = attempts - %(uncount)s::int
         WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[]) AND state = 'sending'
           AND claim_token = %(token)s::uuid
        RETURNING 1
{_and_event(insert_select(), counts="(SELECT count(*) FROM done), (SELECT count(*) FROM event)")}
""",
)
# OUTCOME for many claims at once (core.deliveries.batching): each with its own rows, token and
# event, and one wake-up of the relay. Returns, for each claim (`i`) that changed rows, how many.
OUTCOME_MANY = Prepared(
    "sender_outcome_many",
    f"""
    WITH given AS (
        SELECT * FROM jsonb_to_recordset(%(outcomes)s::jsonb)
            AS g(i int, event_id uuid, recipients text[], token uuid, state text, message_id text, error text,
                 uncount int, occurred_at timestamptz, id uuid, aggregatetype text, aggregateid text, type text,
                 payload jsonb, headers jsonb)
    ), done AS (
        UPDATE sender_delivery d
           SET state = g.state, provider_message_id = g.message_id, last_error = g.error,
               lease_until = NULL, claim_token = NULL, updated_at = g.occurred_at, attempts = d.attempts - g.uncount
          FROM given g
         WHERE d.event_id = g.event_id AND d.recipient = ANY(g.recipients) AND d.state = 'sending'
           AND d.claim_token = g.token
        RETURNING g.i
    ), counted AS (
        SELECT i, count(*) AS n FROM done GROUP BY i
    ), event AS (
        {insert_select(**{column: f"g.{column}" for column in OUTBOX_GIVEN})}
          FROM given g JOIN counted c ON c.i = g.i
        RETURNING 1
    )
    SELECT i, n FROM counted
    UNION ALL
    SELECT NULL, NULL FROM (SELECT pg_notify(%(channel)s, '') WHERE %(notify)s AND EXISTS (SELECT 1 FROM event)) AS w
""",
)
# Release claimed recipients: `retry` (due at next_attempt_at), `unknown` (in doubt from now).
RELEASE = Prepared(
    "sender_release",
    """
    UPDATE sender_delivery
       SET state = %(state)s::varchar, last_error = %(error)s::text, updated_at = now(), claim_token = NULL,
           lease_until = CASE WHEN %(state)s::varchar = 'unknown' THEN now() END,
           next_attempt_at = CASE WHEN %(state)s::varchar = 'retry'
                                  THEN now() + %(delay)s::float8 * interval '1 second' END,
           attempts = attempts - %(uncount)s::int
     WHERE event_id = %(event_id)s::uuid AND recipient = ANY(%(recipients)s::text[]) AND state = 'sending'
       AND claim_token = %(token)s::uuid
""",
)
# In doubt, and the provider's own events say it has the mail: sent, with its message id, and
# `email.sent` in the outbox, in one statement. Never resent.
_SEEN_EVENT = insert_select(
    payload="""%(payload)s::jsonb || jsonb_build_object(
                   'recipients', (SELECT jsonb_agg(recipient ORDER BY recipient) FROM done),
                   'provider_message_id', (SELECT coalesce(min(provider_message_id), '') FROM done),
                   'attempt', (SELECT max(attempts) FROM done))"""
)
RESOLVE_SEEN_SQL = f"""
    WITH done AS (
        UPDATE sender_delivery
           SET state = 'sent', lease_until = NULL, claim_token = NULL, updated_at = now()
         WHERE event_id = %(event_id)s AND recipient = ANY(%(recipients)s::text[]) AND provider_seen_at IS NOT NULL
           AND (state IN ('unknown', 'held') OR (state = 'sending' AND lease_until < now()))
        RETURNING recipient, provider_message_id, attempts
{_and_event(_SEEN_EVENT)}
"""
# Arm the event's outbox row again for the earliest moment one of its recipients is due: the relay
# publishes the same event id then. Inserts the row when
# it was purged. A row already waiting for an earlier time keeps it.
_REARMED_EVENT = insert_select(id="%(id)s::uuid", not_before="due.at", last_error="%(reason)s::text")
REARM = Prepared(
    "sender_rearm",
    f"""
    WITH due AS (
        SELECT min(CASE
                   WHEN state = 'retry' THEN coalesce(next_attempt_at, now())
                   WHEN state = 'sending' AND lease_until > now() THEN lease_until
                   WHEN state IN ('sending', 'unknown') AND provider_seen_at IS NOT NULL THEN now()
                   WHEN state IN ('sending', 'unknown')
                       THEN greatest(greatest(updated_at, %(grace_from)s::timestamptz)
                                     + %(grace)s::float8 * interval '1 second', lease_until)
               END) AS at
          FROM sender_delivery WHERE event_id = %(id)s::uuid
    )
    {_REARMED_EVENT}
      FROM due WHERE due.at IS NOT NULL
    ON CONFLICT (id) DO UPDATE
       SET published_at = NULL, failed_at = NULL, not_before = EXCLUDED.not_before, last_error = %(reason)s
     WHERE {OUTBOX}.published_at IS NOT NULL OR {OUTBOX}.failed_at IS NOT NULL
        OR {OUTBOX}.not_before > EXCLUDED.not_before
    RETURNING not_before
""",
)
# sender_delivery.provider_message_id's length; SendGrid's ids are about 22 characters.
MESSAGE_ID_MAX = 128
# The provider reported on these (event, recipient) pairs: it has the mail. Run by the webhook in the
# transaction that stores the reports (note_provider_reports), and by the sender for the reports an
# earlier release queued for it (record_receipts), with receipts_parameters: one report per pair,
# its first (`processed` then `delivered` in one post, or in two messages of one batch), sorted,
# with its position among the reports given, which RETURNING names for each row it took.
# Each pair finds its delivery by itself (LATERAL, LIMIT 1: through the unique index), then the
# row is updated by its id: the reports are read once, whatever the statistics say. Joined to the
# table directly, on statistics taken while nearly every delivery had its report (as they mostly
# do), Postgres expected one delivery to note and read the post's reports once per delivery, or
# scanned the table once per report: 5.9 ms for one post of 22 emails, quadratic in the post's
# size (tests/integration/test_statement_plans.py). Pairs go in sorted order, event ids first, as
# claims lock; that order is the plan's, not a promise, and a deadlock with a sender reruns the
# webhook's transaction (command_api.webhooks.services).
RECEIPTS_SQL = """
    UPDATE sender_delivery AS d
       SET provider_seen_at = t.reported_at,
           provider_message_id = CASE WHEN d.provider_message_id = '' THEN t.message_id
                                      ELSE d.provider_message_id END
      FROM (
          SELECT found.id, r.message_id, r.reported_at, r.position
            FROM unnest(%(event_ids)s::uuid[], %(recipients)s::text[], %(message_ids)s::text[],
                        %(reported_ats)s::timestamptz[], %(positions)s::int[])
                 AS r(event_id, recipient, message_id, reported_at, position)
           CROSS JOIN LATERAL (
               SELECT x.id FROM sender_delivery AS x
                WHERE x.event_id = r.event_id AND x.recipient = r.recipient AND x.provider_seen_at IS NULL
                LIMIT 1
           ) AS found
      ) AS t
     WHERE d.id = t.id AND d.provider_seen_at IS NULL
    RETURNING t.position
"""


def receipts_parameters(reports: list[dict]) -> dict:
    """RECEIPTS_SQL's parameters for `reports` (as _noted gives them): the first report of each
    (event, recipient) pair, sorted, with its position (1-based) in `reports`."""
    first: dict[tuple[str, str], int] = {}
    for position, report in enumerate(reports, 1):
        first.setdefault((report["event_id"], report["recipient"]), position)
    taken = [reports[position - 1] | {"position": position} for _, position in sorted(first.items())]
    return {
        "event_ids": [report["event_id"] for report in taken],
        "recipients": [report["recipient"] for report in taken],
        "message_ids": [report["message_id"] for report in taken],
        "reported_ats": [report["reported_at"] for report in taken],
        "positions": [report["position"] for report in taken],
    }


# A request that died in the dead-letter queue: its recipients that are not finished, and that no
# sender holds right now, fail with the reason, with `email.failed`, in one statement (rows the
# sender never made are made failed).
_FAILED_EVENT = insert_select(
    payload="%(payload)s::jsonb || jsonb_build_object('recipients', (SELECT jsonb_agg(recipient) FROM done))"
)
FAIL_DEAD_SQL = f"""
    WITH done AS (
        INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, provider_message_id,
                                          last_error, created_at, updated_at)
        SELECT %(event_id)s::uuid, r, %(email_id)s::bigint, 'failed', 0, '', %(error)s, now(), now()
          FROM unnest(%(recipients)s::text[]) AS r
        ON CONFLICT (event_id, recipient) DO UPDATE
           SET state = 'failed', last_error = EXCLUDED.last_error, lease_until = NULL, claim_token = NULL,
               next_attempt_at = NULL, updated_at = now()
         WHERE d.state NOT IN {TERMINAL_SQL} AND NOT (d.state = 'sending' AND d.lease_until > now())
        RETURNING recipient
{_and_event(_FAILED_EVENT)}
"""
# The owner's cancel: a `cancelled` row for every recipient of the request, in the order the claim
# inserts them (the request's own order), none where a row exists; and `email.cancelled` in the
# outbox only if it made all of them. The claim (CLAIM) inserts the same keys in the same order,
# so the unique index serializes the two: whoever inserts the first recipient's row first makes
# every row, and the other waits on that row, then finds them all taken (the claim does not
# update a `cancelled` row). The caller rolls back a cancel that made fewer than all.
CANCEL_SQL = f"""
    WITH done AS (
        INSERT INTO sender_delivery (event_id, recipient, email_id, state, attempts, provider_message_id,
                                     last_error, created_at, updated_at)
        SELECT %(event_id)s::uuid, given.r, %(email_id)s::bigint, 'cancelled', 0, '', %(error)s, now(), now()
          FROM unnest(%(recipients)s::text[]) WITH ORDINALITY AS given(r, position)
         ORDER BY given.position
        ON CONFLICT (event_id, recipient) DO NOTHING
        RETURNING recipient
    ), event AS (
        {insert_select()}
         WHERE (SELECT count(*) FROM done) = %(all)s
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM done),
           CASE WHEN %(notify)s AND EXISTS (SELECT 1 FROM event) THEN pg_notify(%(channel)s, '') END
"""
STATES_SQL = "SELECT state, count(*) FROM sender_delivery WHERE event_id = %s GROUP BY state"
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
    token: str = ""  # fences every outcome write of this claim
    claimed: dict[str, int] = field(default_factory=dict)  # recipient -> attempt number
    last_errors: dict[str, str] = field(default_factory=dict)  # recipient -> the error of its last attempt
    busy: list[str] = field(default_factory=list)  # leased by another sender right now
    scheduled: list[str] = field(default_factory=list)  # waiting for their next attempt
    seen: list[str] = field(default_factory=list)  # in doubt, and the provider reported on them: sent
    waiting: list[str] = field(default_factory=list)  # in doubt, within the grace for the provider's word
    held: list[str] = field(default_factory=list)  # in doubt past the grace, held for ops by policy
    done: list[str] = field(default_factory=list)  # sent, failed, suppressed or held before
    suppressed: dict[str, str] = field(default_factory=dict)  # on the owner's list now: recipient -> reason


class DeliveryStore:
    def __init__(
        self,
        database: dict,
        *,
        pool_size: int,
        notify_channel: str | None,
        provider: str = "sendgrid",
        linger_ms: int = 0,
    ):
        self._pool_size = pool_size
        self._connect_kwargs = connect_kwargs(database, application_name="sender")
        # Opened on first use, not here: a sender started while Postgres is down must wait for it
        # in its run loop like any outage, not die at start.
        self._pool: ThreadedConnectionPool | None = None
        self._pool_lock = threading.Lock()
        # ThreadedConnectionPool raises when it is empty; the sender's threads must wait instead.
        self._available = threading.BoundedSemaphore(pool_size)
        self._notify_channel = notify_channel
        self._provider = provider
        self._pause_cache: tuple[float, float] = (0.0, 0.0)  # (checked at, paused until)
        # The claims' first statement and the outcomes, of threads that arrive together, run as
        # one statement each (core.deliveries.batching), each kind on up to half the pool.
        # A statement writes at most BATCH_ROWS deliveries (or one email's, however many). Under
        # load a claim or outcome statement waits `linger_ms` for the threads arriving behind it
        # (SENDER_BATCH_LINGER_MS); the receipts' never does.
        width = max(1, pool_size // 2)
        linger = max(0, linger_ms) / 1000
        self._claims: Batch[dict, list[tuple]] = _deliveries_batch(
            "claim", self._claim_many, self._claim_one, width, linger
        )
        self._outcomes: Batch[dict, int] = _deliveries_batch(
            "outcome", self._outcome_many, self._outcome_one, width, linger
        )
        # The reports an earlier release queued for the sender (the retired sender-receipts queue):
        # the messages that arrive while one statement runs share the next. Any two may share one
        # (`key=id`): RECEIPTS_SQL keeps one report per delivery, the first.
        self._receipts: Batch[list[dict], int] = Batch(
            run_many=self._receipts_many,
            run_one=lambda receipts: self._receipts_many([receipts])[0],
            key=id,
            size=len,
            most=BATCH_ROWS,
            on_fallback=lambda error, items: _fell_back("receipts", error, items),
        )

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
        pool, self._pool = self._pool, None  # a later use opens a new pool
        if pool is not None:
            pool.closeall()

    def ping(self) -> None:
        with self._cursor() as cursor:
            cursor.execute("SELECT 1")

    # Claims ----------------------------------------------------------------------------------

    def claim(
        self, event: EmailRequested, *, lease_seconds: float, resend_in_doubt: bool, in_doubt_grace: float
    ) -> Claim:
        """Take the recipients of `event` that are due: new ones, retries whose time has come, and
        (with `resend_in_doubt`) ones in doubt whose grace passed with no word from the provider.
        Recipients on the owner's suppression list are not taken: they become `suppressed`, with
        the reason, and `email.suppressed` goes into the outbox, in one statement (run only when
        the first took fewer than all: an email with nobody suppressed pays one index probe per
        recipient, inside the claim, and nothing else). Idempotent: a second claim of a
        finished delivery takes nothing. Says why the others were not taken; holds, by policy,
        the ones in doubt past the grace."""
        token = str(uuid.uuid4())
        params = {
            "event_id": event.event_id,
            "email_id": event.email_id,
            "owner_id": event.owner_id,
            "lease": lease_seconds,
            "recipients": list(event.recipients),
            "resend": resend_in_doubt,
            "grace": in_doubt_grace,
            "grace_from": _grace_from(event),
            "token": token,
        }
        claim = Claim(token=token)
        for recipient, attempts, last_error in self._claims.submit(params):
            claim.claimed[recipient] = attempts
            claim.last_errors[recipient] = last_error
        if len(claim.claimed) == len(event.recipients):
            return claim
        with self._cursor() as cursor:
            rest = [r for r in event.recipients if r not in claim.claimed]
            CLAIM_SUPPRESSING.execute(cursor, self._suppressing_parameters(event, params | {"recipients": rest}))
            for recipient, attempts, last_error, barred in cursor.fetchall():
                if recipient is None:
                    continue  # the row that says the relay was woken
                if barred:
                    claim.suppressed[recipient] = last_error
                else:
                    claim.claimed[recipient] = attempts
                    claim.last_errors[recipient] = last_error
            if len(claim.claimed) + len(claim.suppressed) == len(event.recipients):
                return claim
            cursor.execute(UNCLAIMED_SQL, params)
            rows = [row for row in cursor.fetchall() if row[0] not in claim.claimed and row[0] not in claim.suppressed]
            past_grace = [
                recipient
                for recipient, state, live, seen, in_grace in rows
                if _in_doubt(state, live) and not seen and not in_grace
            ]
            if past_grace and not resend_in_doubt:
                cursor.execute(HOLD_SQL, params | {"recipients": past_grace})
        for recipient, state, live, seen, in_grace in rows:
            if state == "sending" and live:
                claim.busy.append(recipient)
            elif state == "retry":
                claim.scheduled.append(recipient)
            elif seen and (_in_doubt(state, live) or state == "held"):
                claim.seen.append(recipient)
            elif _in_doubt(state, live) and in_grace:
                claim.waiting.append(recipient)
            elif recipient in past_grace and not resend_in_doubt:
                claim.held.append(recipient)
            elif _in_doubt(state, live):
                claim.busy.append(recipient)  # a claim raced ours: look again later
            else:
                claim.done.append(recipient)
        return claim

    def _claim_one(self, params: dict) -> list[tuple]:
        with self._cursor() as cursor:
            CLAIM.execute(cursor, params)
            return cursor.fetchall()

    def _claim_many(self, items: list[dict]) -> list[list[tuple]]:
        shared = {key: items[0][key] for key in ("lease", "resend", "grace")}
        if any({key: p[key] for key in shared} != shared for p in items):
            raise ValueError("claims of one statement share their lease and grace")
        emails = [
            {key: p[key] for key in ("event_id", "email_id", "owner_id", "recipients", "grace_from", "token")}
            for p in items
        ]
        with self._cursor() as cursor:
            CLAIM_MANY.execute(cursor, {"emails": json.dumps(emails), **shared})
            rows = cursor.fetchall()
        by_token: dict[str, list[tuple]] = {p["token"]: [] for p in items}
        for token, recipient, attempts, last_error in rows:
            by_token[token].append((recipient, attempts, last_error))
        return [by_token[p["token"]] for p in items]

    def _suppressing_parameters(self, request: EmailRequested, params: dict) -> dict:
        """`params` of the claim, with the `email.suppressed` event CLAIM_SUPPRESSING writes if it
        suppresses any (the statement fills in who and why) and the relay's channel."""
        event = EmailSuppressed(
            event_id=new_event_id(),
            correlation_id=request.correlation_id,
            occurred_at=_now(),
            email_id=request.email_id,
            request_event_id=request.event_id,
            recipients=(),
            reasons=(),
        )
        return (
            params
            | _outbox_parameters(event, request)
            | {"notify": self._notify_channel is not None, "channel": self._notify_channel or ""}
        )

    # Outcomes --------------------------------------------------------------------------------

    def _outcome(
        self,
        *,
        state: str,
        event: Event,
        request: EmailRequested,
        recipients: list[str],
        token: str,
        message_id: str = "",
        error: str = "",
        uncount: bool = False,
    ) -> int:
        params = _outbox_parameters(event, request) | {
            "state": state,
            "message_id": message_id,
            "error": error,
            "event_id": request.event_id,
            "recipients": recipients,
            "notify": self._notify_channel is not None,
            "token": token,
            "uncount": 1 if uncount else 0,
            "occurred_at": event.occurred_at,  # the row and its event carry the same time
            "channel": self._notify_channel or "",
        }
        return self._outcomes.submit(params)

    def _outcome_one(self, params: dict) -> int:
        with self._cursor() as cursor:
            OUTCOME.execute(cursor, params)
            updated, _, _ = cursor.fetchone()
        return updated

    def _outcome_many(self, items: list[dict]) -> list[int]:
        # The outbox rows' payload and headers are JSON text already: spliced in, not parsed again.
        fields = ("event_id", "recipients", "token", "state", "message_id", "error", "uncount", "occurred_at")
        outcomes = ",".join(
            json.dumps({"i": i, **{key: p[key] for key in (*fields, "id", "aggregatetype", "aggregateid", "type")}})[
                :-1
            ]
            + f', "payload": {p["payload"]}, "headers": {p["headers"]}}}'
            for i, p in enumerate(items)
        )
        first = items[0]
        with self._cursor() as cursor:
            OUTCOME_MANY.execute(
                cursor, {"outcomes": f"[{outcomes}]", "notify": first["notify"], "channel": first["channel"]}
            )
            counts = dict(cursor.fetchall())
        return [counts.get(i, 0) for i in range(len(items))]

    def record_sent(
        self,
        request: EmailRequested,
        recipients: list[str],
        *,
        token: str,
        message_id: str,
        attempt: int,
        provider: str,
    ) -> int:
        """Mark the claimed recipients sent and write `email.sent`, in one statement, while the
        claim `token` holds them. Returns how many it marked (0: the claim was lost)."""
        event = EmailSent(
            event_id=new_event_id(),
            correlation_id=request.correlation_id,
            occurred_at=_now(),
            email_id=request.email_id,
            request_event_id=request.event_id,
            recipients=tuple(recipients),
            provider=provider,
            provider_message_id=message_id,
            attempt=attempt,
        )
        return self._outcome(
            state="sent", event=event, request=request, recipients=recipients, token=token, message_id=message_id
        )

    def record_failed(
        self,
        request: EmailRequested,
        recipients: list[str],
        *,
        token: str,
        reason: str,
        permanent: bool,
        attempt: int,
        provider: str,
        uncount: bool = False,
    ) -> int:
        """Mark the claimed recipients failed and write `email.failed`, in one statement, while
        the claim `token` holds them (`uncount`: the claim made no call). Returns how many."""
        event = EmailFailed(
            event_id=new_event_id(),
            correlation_id=request.correlation_id,
            occurred_at=_now(),
            email_id=request.email_id,
            request_event_id=request.event_id,
            recipients=tuple(recipients),
            provider=provider,
            reason=reason[:1000],
            permanent=permanent,
            attempt=attempt,
        )
        return self._outcome(
            state="failed",
            event=event,
            request=request,
            recipients=recipients,
            token=token,
            error=reason[:1000],
            uncount=uncount,
        )

    def release(
        self,
        request: EmailRequested,
        recipients: list[str],
        *,
        token: str,
        state: str,
        error: str,
        delay: float = 0.0,
        uncount: bool = False,
    ) -> int:
        """Let go of claimed recipients while `token` holds them: `retry` (due in `delay`
        seconds) or `unknown` (in doubt from now: the provider may have the mail). `uncount`
        gives the attempt back. Returns how many it let go (the others: fenced)."""
        if state not in ("retry", "unknown"):
            raise ValueError(f"release to retry or unknown, not {state!r}")
        with self._cursor() as cursor:
            RELEASE.execute(
                cursor,
                {
                    "state": state,
                    "error": error[:1000],
                    "event_id": request.event_id,
                    "recipients": recipients,
                    "token": token,
                    "delay": delay,
                    "uncount": 1 if uncount else 0,
                },
            )
            return cursor.rowcount

    def resolve_seen(self, request: EmailRequested, recipients: list[str], *, provider: str) -> int:
        """Mark in-doubt recipients the provider reported on sent, with `email.sent`, in one
        statement; they are never sent again. Returns how many."""
        event = EmailSent(
            event_id=new_event_id(),
            correlation_id=request.correlation_id,
            occurred_at=_now(),
            email_id=request.email_id,
            request_event_id=request.event_id,
            recipients=(),
            provider=provider,
            provider_message_id="",
            attempt=0,
        )
        params = _outbox_parameters(event, request) | {
            "event_id": request.event_id,
            "recipients": recipients,
            "notify": self._notify_channel is not None,
            "channel": self._notify_channel or "",
        }
        with self._cursor() as cursor:
            cursor.execute(RESOLVE_SEEN_SQL, params)
            resolved, _ = cursor.fetchone()
        return resolved

    def rearm(self, request: EmailRequested, *, in_doubt_grace: float, reason: str) -> datetime | None:
        """Arm the request's outbox row for the earliest moment one of its recipients is due.
        Returns that moment, or None when nothing of it is due again."""
        params = _outbox_parameters(request, request) | {
            "grace": in_doubt_grace,
            "grace_from": _grace_from(request),
            "reason": reason[:1000],
        }
        with self._cursor() as cursor:
            REARM.execute(cursor, params)
            armed = cursor.fetchone()
        return armed[0] if armed else None

    def fail_dead_request(self, request: EmailRequested, *, reason: str, provider: str) -> int:
        """The request died in the dead-letter queue: settle what the provider reported on as
        sent, fail the rest that no sender holds, with `reason` and `email.failed`. Returns how
        many failed."""
        self.resolve_seen(request, list(request.recipients), provider=provider)
        with self._cursor() as cursor:
            return fail_request(
                cursor, request, reason=reason, provider=provider, notify_channel=self._notify_channel, permanent=False
            )

    def park_dead_letter(self, message, *, resolution: str, detail: str) -> bool:
        """Record a dead letter (core.outbox.deadletters); True when it was new."""
        from core.outbox.deadletters import park

        with self._cursor() as cursor:
            return park(cursor, message, resolution=resolution, detail=detail, resolved_by="sender")

    def record_receipts(self, receipts: list[dict]) -> int:
        """note_provider_reports for the reports an earlier release queued for the sender (the
        retired sender-receipts queue), batched, in autocommit. Returns how many deliveries learnt
        it now."""
        receipts = _noted(receipts)
        if not receipts:
            return 0
        return self._receipts.submit(receipts)

    def _receipts_many(self, items: list[list[dict]]) -> list[int]:
        receipts = [receipt for item in items for receipt in item]
        with self._cursor() as cursor:
            cursor.execute(RECEIPTS_SQL, receipts_parameters(receipts))
            positions = sorted(position for (position,) in cursor.fetchall())
        # Each item's share of the positions (1-based, in the order of `receipts`).
        counts, end, taken = [], 0, 0
        for item in items:
            end += len(item)
            counts.append(bisect.bisect_right(positions, end) - taken)
            taken += counts[-1]
        return counts

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


def fail_request(
    cursor, request: EmailRequested, *, reason: str, provider: str, notify_channel: str | None, permanent: bool
) -> int:
    """Fail the recipients of `request` that are not finished and that no sender holds, with
    `reason` and `email.failed`, in one statement on `cursor` (the caller's transaction or
    autocommit). For a request that can never be delivered: dead-lettered, or refused by the
    broker. Returns how many failed."""
    event = EmailFailed(
        event_id=new_event_id(),
        correlation_id=request.correlation_id,
        occurred_at=_now(),
        email_id=request.email_id,
        request_event_id=request.event_id,
        recipients=(),
        provider=provider,
        reason=reason[:1000],
        permanent=permanent,
        attempt=0,
        owner_id=request.owner_id,
        from_email=request.from_email,
        template_id=request.template_id,
        template_name=request.template_name,
        subject=request.subject,
        requested_at=request.occurred_at,
    )
    cursor.execute(
        FAIL_DEAD_SQL,
        _outbox_parameters(event, request)
        | {
            "event_id": request.event_id,
            "email_id": request.email_id,
            "error": reason[:1000],
            "recipients": list(request.recipients),
            "notify": notify_channel is not None,
            "channel": notify_channel or "",
        },
    )
    failed, _ = cursor.fetchone()
    return failed


@dataclass(frozen=True)
class CancelOutcome:
    cancelled: bool  # True: this call cancelled every recipient (its email.cancelled is written)
    states: dict[str, int]  # otherwise: the request's deliveries by state, as they are


def cancel_request(
    cursor,
    *,
    email_id: int,
    request_event_id: str,
    recipients: list[str],
    cancelled_by: int,
    correlation_id: str,
    notify_channel: str | None,
) -> CancelOutcome:
    """Cancel the request `request_event_id` of email `email_id` for all its `recipients` (in the
    request's order), in one statement on `cursor`, inside the caller's transaction: either every
    recipient gets a `cancelled` delivery and `email.cancelled` is written, or the caller must roll
    back (`cancelled` False: some sender claimed it first, or it was cancelled already; `states`
    says which). Race-safe against the sender's claim (see CANCEL_SQL)."""
    event = EmailCancelled(
        event_id=new_event_id(),
        correlation_id=correlation_id,
        occurred_at=_now(),
        email_id=email_id,
        request_event_id=request_event_id,
        recipients=tuple(recipients),
        cancelled_by=cancelled_by,
    )
    cursor.execute(
        CANCEL_SQL,
        outbox_parameters(event, aggregatetype=EmailCancelled.AGGREGATE, aggregateid=str(email_id))
        | {
            "event_id": request_event_id,
            "email_id": email_id,
            "error": f"cancelled by user {cancelled_by}",
            "recipients": recipients,
            "all": len(recipients),
            "notify": notify_channel is not None,
            "channel": notify_channel or "",
        },
    )
    made, _ = cursor.fetchone()
    if made == len(recipients):
        return CancelOutcome(cancelled=True, states={"cancelled": made})
    cursor.execute(STATES_SQL, [request_event_id])
    states = dict(cursor.fetchall())
    # Not the rows this statement made (the caller rolls them back): what the others hold.
    states["cancelled"] = states.get("cancelled", 0) - made
    return CancelOutcome(cancelled=False, states={state: n for state, n in states.items() if n})


def note_provider_reports(cursor, reports: list[dict]) -> int:
    """Note on the deliveries that the provider has the mail, for these `{event_id, recipient,
    message_id, reported_at}` (its reports, newly stored), in one statement on `cursor`, inside
    the caller's transaction: a delivery in doubt is then resolved as sent, never resent. The
    message id is SendGrid's `sg_message_id` up to its first dot (the `X-Message-Id` the sender
    records), cut to what the column holds. Returns how many deliveries learnt it now; a report
    whose event id is not a UUID, or that names no delivery, changes nothing."""
    reports = _noted(reports)
    if not reports:
        return 0
    cursor.execute(RECEIPTS_SQL, receipts_parameters(reports))
    return len(cursor.fetchall())


def _noted(reports: list[dict]) -> list[dict]:
    """The reports that can name a delivery of ours (a UUID event id, text where text goes),
    each message id as the deliveries keep it: SendGrid's `sg_message_id` up to its first dot, cut
    to the column, and the event id as Postgres writes it (lower case), so one delivery's reports
    are one pair whatever the case they came in."""
    return [
        {
            **report,
            "event_id": event_id,
            "message_id": report["message_id"].split(".", 1)[0][:MESSAGE_ID_MAX],
        }
        for report in reports
        if (event_id := uuid_text(report.get("event_id")))
        and all(isinstance(report.get(key), str) for key in ("recipient", "message_id", "reported_at"))
    ]


def provider_reports(data: dict) -> list[dict]:
    """The reports, for note_provider_reports, that an `email.delivery_statuses` (or
    `email.delivery_status`) event carries; none when `data` is not such an event."""
    try:
        event = event_from_dict(data)
    except (ContractError, ValueError, TypeError, KeyError):
        return []
    items = event.items() if isinstance(event, EmailDeliveryStatuses) else [event]
    return [
        {
            "event_id": item.request_event_id,
            "recipient": item.recipient,
            "message_id": item.provider_message_id,
            "reported_at": item.reported_at,
        }
        for item in items
        if isinstance(item, EmailDeliveryStatus)
    ]


def _outbox_parameters(event: Event, request: EmailRequested) -> dict:
    """The outbox row of `event`, about the email of `request`."""
    return outbox_parameters(event, aggregatetype=EmailRequested.AGGREGATE, aggregateid=str(request.email_id))


def _grace_from(request: EmailRequested) -> str | None:
    """When the grace of a delivery in doubt starts, besides its last attempt: a scheduled send's
    `send_at`. The provider holds a mail handed to it early until then, and may say nothing of it
    (no `processed`) before, so the grace counts from then; None (no bound) for a send at once."""
    return request.send_at or None


def _deliveries_batch(kind: str, run_many, run_one, width: int, linger: float) -> Batch:
    """A Batch of claims or outcomes (parameter dicts): one email per statement at most once,
    sized by its recipients."""
    return Batch(
        run_many=run_many,
        run_one=run_one,
        key=lambda p: p["event_id"],
        size=lambda p: len(p["recipients"]),
        width=width,
        most=BATCH_ROWS,
        linger=linger,
        on_fallback=lambda error, items: _fell_back(kind, error, items),
    )


def _fell_back(kind: str, error: psycopg2.Error, items: int) -> None:
    BATCH_FALLBACKS.labels(kind=kind).inc()
    log.warning("batch_ran_item_by_item", kind=kind, items=items, error=str(error)[:300], pgcode=error.pgcode)


def _in_doubt(state: str, live: bool) -> bool:
    return state == "unknown" or (state == "sending" and not live)


def _now() -> str:
    return datetime.now(UTC).isoformat()
