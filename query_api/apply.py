"""Apply events to the read table in batches, idempotently (the projector's work, query_api.projector).

`apply_batch(conn, events)` is one transaction: record the event ids as processed (the ones
already there are skipped), create missing rows, lock the batch's rows in id order (so two
projectors never deadlock), merge the events in Python (query_api.projection), write the rows and
their history back. A redelivered or replayed event changes nothing; an event for an email the
table does not know yet creates its row, which the request fills in later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog
from prometheus_client import Counter

from core.client_webhooks.queueing import StatusChange, messages_queue
from core.client_webhooks.sql import owners_with_endpoints
from core.contracts import (
    ContractError,
    EmailDeliveryStatuses,
    EmailEvent,
    EmailSuppressed,
    Event,
)
from query_api.projection import Change, Row, apply

log = structlog.get_logger(__name__)

APPLIED = Counter("projector_events_applied_total", "Events applied to the read table")
SKIPPED = Counter("projector_events_skipped_total", "Events skipped as already processed")

COLUMNS = (
    "id",
    "owner_id",
    "from_email",
    "template_id",
    "template_name",
    "subject",
    "created",
    "recipients",
    "recipient_status",
    "status",
    "last_event_at",
    "status_seq",
    "send_at",
)

MARK_PROCESSED_SQL = """
    INSERT INTO read_processed_event (event_id, processed_at)
    SELECT DISTINCT unnest(%s::uuid[]), now()
    ON CONFLICT DO NOTHING
    RETURNING event_id::text
"""
ENSURE_ROWS_SQL = """
    INSERT INTO read_sent_email (id, from_email, template_name, subject, recipients, recipient_status, status)
    SELECT unnest(%s::bigint[]), '', '', '', '{}', '{}', 'queued'
    ON CONFLICT DO NOTHING
"""
LOCK_ROWS_SQL = f"""
    SELECT {", ".join(COLUMNS)} FROM read_sent_email WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE
"""
# Returns the owners of the rows written that have an enabled webhook endpoint (none, while
# nobody has one): client webhooks cost the batch no statement of their own.
WRITE_ROWS_SQL = f"""
    WITH written AS (
        UPDATE read_sent_email AS t
           SET {", ".join(f"{c} = s.{c}" for c in COLUMNS if c != "id")}
          FROM json_populate_recordset(NULL::read_sent_email, %s) AS s
         WHERE t.id = s.id
        RETURNING t.owner_id
    )
    {owners_with_endpoints("written")}
"""
HISTORY_COLUMNS = ("email_id", "event_id", "type", "recipient", "status", "at", "detail")


def unbatched(event: Event) -> Sequence[EmailEvent]:
    """The events `event` stands for: the items of a batch of statuses, else itself. Raises
    ContractError for an item that breaks the contract, or an event that names no email."""
    if isinstance(event, EmailDeliveryStatuses):
        return event.items()
    if isinstance(event, EmailSuppressed):
        event.reason_of()  # a reason for each recipient, or poison
    if isinstance(event, EmailEvent):  # every event that names its email
        return [event]
    raise ContractError(f"{event.TYPE}: not an event about an email")


def history_entry(email_id: int, change: Change, *, derived: bool = False) -> dict:
    """The history row of `change` to email `email_id`; a derived one (the rebuild's) has no event id."""
    return {
        "email_id": email_id,
        "event_id": None if derived else change.event_id,
        "type": change.type,
        "recipient": change.recipient,
        "status": change.status,
        "at": change.at,
        "detail": change.detail[:1000],
    }


def write_history(cursor, history: list[dict], *, table: str = "read_sent_email_event") -> None:
    """Append `history` (rows of `history_entry`) to `table`: read_sent_email_event, or the twin a
    rebuild fills. The one writer of the history: the projector and the rebuild both call it."""
    if history:
        columns = ", ".join(HISTORY_COLUMNS)
        cursor.execute(
            f"""INSERT INTO {table} ({columns})
                           SELECT {columns} FROM json_populate_recordset(NULL::read_sent_email_event, %s)""",
            [json.dumps(history)],
        )


def status_change(owner_id: int, email_id: int, change: Change) -> StatusChange:
    """`change` as the client webhooks take it (core.client_webhooks knows no projection)."""
    return StatusChange(
        owner_id=owner_id,
        email_id=email_id,
        sequence=change.sequence,
        status=change.status,
        recipient=change.recipient,
        at=change.at,
        detail=change.detail[:1000],
        event_id=change.event_id,
    )


def _row_from_db(values) -> Row:
    data = dict(zip(COLUMNS, values, strict=True))
    for key in ("created", "last_event_at", "send_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return Row(**data)


def apply_batch(conn, events: Sequence[Event], *, webhooks_channel: str | None = None) -> tuple[int, int]:
    """Apply `events` in one transaction of `conn`; returns (applied, skipped as duplicates),
    counting the items of an `email.delivery_statuses` one by one. The same transaction queues
    the status changes for the owners' webhook endpoints (core.client_webhooks), with a NOTIFY on
    `webhooks_channel` when it queued any. Raises on any database error, after rolling back:
    nothing of the batch is kept."""
    items = [item for event in events for item in unbatched(event)]
    try:
        with conn.cursor() as cursor:
            cursor.execute(MARK_PROCESSED_SQL, [[e.event_id for e in items]])
            fresh_ids = {row[0] for row in cursor.fetchall()}
            fresh: list[EmailEvent] = []
            seen: set[str] = set()
            for item in items:
                if item.event_id in fresh_ids and item.event_id not in seen:
                    seen.add(item.event_id)
                    fresh.append(item)
            if fresh:
                email_ids = sorted({e.email_id for e in fresh})
                cursor.execute(ENSURE_ROWS_SQL, [email_ids])
                cursor.execute(LOCK_ROWS_SQL, [email_ids])
                rows = {values[0]: _row_from_db(values) for values in cursor.fetchall()}
                history, made = [], []
                for event in fresh:
                    row = rows[event.email_id]
                    for change in apply(row, event):
                        history.append(history_entry(event.email_id, change))
                        made.append((row, change))
                cursor.execute(WRITE_ROWS_SQL, [json.dumps([vars(r) for r in rows.values()])])
                owners = {owner for (owner,) in cursor.fetchall()}
                write_history(cursor, history)
                if owners:
                    changes = [
                        status_change(row.owner_id, row.id, change)
                        for row, change in made
                        if row.owner_id is not None and row.owner_id in owners
                    ]
                    messages_queue(cursor, changes, owners=owners, notify_channel=webhooks_channel)
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    APPLIED.inc(len(fresh))
    SKIPPED.inc(len(items) - len(fresh))
    return len(fresh), len(items) - len(fresh)
