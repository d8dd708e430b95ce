"""The outbox table's hand-written SQL, in one place beside its model: the table's name, the
columns a writer fills and what the others start as, the row every writer inserts, and the
relay's claim, marks, backlog and purge statements.

Writers whose statement also touches other tables (the send's `WITH … INSERT`, the sender's
outcomes) build their outbox part with `insert_select`, so no writer spells the columns itself.
Statements take psycopg2 parameters and run on a Django cursor and a plain psycopg2 cursor alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.contracts import Event
from core.deliveries.states import TERMINAL_SQL

TABLE = "outbox"

# What a writer gives for each row (the keys of `outbox_row`), as `insert_select` binds it.
GIVEN = {
    "id": "%(id)s",
    "aggregatetype": "%(aggregatetype)s",
    "aggregateid": "%(aggregateid)s",
    "type": "%(type)s",
    "payload": "%(payload)s::jsonb",
    "headers": "%(headers)s::jsonb",
}
# What every other column a writer names starts as.
DEFAULTS = {"created_at": "now()", "not_before": "now()", "attempts": "0", "last_error": "''"}
INSERT_COLUMNS = ", ".join([*GIVEN, *DEFAULTS])


def outbox_row(event: Event, *, aggregatetype: str, aggregateid: str) -> dict:
    """The outbox columns for `event`: one definition for the ORM and the raw-SQL writers."""
    return {
        "id": event.event_id,
        "aggregatetype": aggregatetype,
        "aggregateid": aggregateid,
        "type": event.TYPE,
        "payload": event.to_dict(),
        "headers": {
            "schema_version": event.VERSION,
            "correlation_id": event.correlation_id,
            "aggregateid": aggregateid,
        },
    }


def outbox_parameters(event: Event, *, aggregatetype: str, aggregateid: str) -> dict:
    """`outbox_row` as the parameters of `insert_select` (payload and headers as JSON text)."""
    row = outbox_row(event, aggregatetype=aggregatetype, aggregateid=aggregateid)
    return row | {"payload": json.dumps(row["payload"]), "headers": json.dumps(row["headers"])}


def insert_select(**expressions: str) -> str:
    """`INSERT INTO outbox (…) SELECT …`, for the caller to finish with its FROM or WHERE: one
    row per row selected. Each column is its GIVEN parameter or its DEFAULTS value unless
    `expressions` names another SQL expression for it (a payload merged with a new id, a later
    `not_before`)."""
    unknown = expressions.keys() - GIVEN.keys() - DEFAULTS.keys()
    if unknown:
        raise ValueError(f"not outbox columns a writer fills: {sorted(unknown)}")
    values = {**GIVEN, **DEFAULTS, **expressions}
    return f"INSERT INTO {TABLE} ({INSERT_COLUMNS})\n    SELECT {', '.join(values.values())}"


# Many rows in one statement, passed as one JSON array of outbox_row() dicts.
BULK_INSERT_SQL = f"""
    {insert_select(**{column: column for column in GIVEN})}
    FROM jsonb_to_recordset(%s::jsonb)
        AS given(id uuid, aggregatetype text, aggregateid text, type text, payload jsonb, headers jsonb)
"""

# The relay ------------------------------------------------------------------------------------

# Due, unpublished rows, oldest due first: a range scan of the partial index outbox_pending_due_idx.
CLAIM_SQL = f"""
    SELECT id, type, payload::text, headers::text
      FROM {TABLE}
     WHERE published_at IS NULL AND failed_at IS NULL AND not_before <= now()
     ORDER BY not_before
     LIMIT %s
       FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED_SQL = f"""
    UPDATE {TABLE} SET published_at = now(), attempts = attempts + 1, last_error = ''
     WHERE id = ANY(%s::uuid[])
"""
# Refused by the broker: failed (dead) with the reason of each, until a replay.
MARK_DEAD_SQL = f"""
    UPDATE {TABLE} AS o SET failed_at = now(), attempts = o.attempts + 1, last_error = r.error
      FROM unnest(%s::uuid[], %s::text[]) AS r(id, error)
     WHERE o.id = r.id
"""
# Not confirmed: still unpublished, claimed again, with the attempt and the error recorded.
MARK_RETRY_SQL = f"""
    UPDATE {TABLE} SET attempts = attempts + 1, last_error = %s WHERE id = ANY(%s::uuid[])
"""

# Publish again the requests of `ids` (email ids) published over `stuck` seconds ago and never
# claimed by a sender: reconcile's repair of a message lost after the relay's confirm.
REARM_PUBLISHED_REQUESTS_SQL = f"""
    UPDATE {TABLE} SET published_at = NULL, not_before = now(),
           last_error = 're-armed by reconcile: it never reached a sender'
     WHERE type = 'email.requested' AND aggregateid = ANY(%(ids)s::text[]) AND failed_at IS NULL
       AND published_at < now() - %(stuck)s * interval '1 second'
    RETURNING aggregateid
"""

# An email's request (its event id and recipients, in the order the sender claims them): for the
# owner's cancel. A scan of outbox_aggregate_idx.
REQUEST_OF_EMAIL_SQL = f"""
    SELECT id::text, ARRAY(SELECT jsonb_array_elements_text(payload -> 'recipients'))
      FROM {TABLE}
     WHERE aggregatetype = 'sent_email' AND aggregateid = %s AND type = 'email.requested'
"""
# When the next row not due yet is due, in seconds from now (NULL: none): the relay sleeps until
# then rather than a whole poll interval. A scan of the partial index outbox_pending_due_idx.
NEXT_DUE_SQL = f"""
    SELECT extract(epoch FROM min(not_before) - now())
      FROM {TABLE}
     WHERE published_at IS NULL AND failed_at IS NULL AND not_before > now()
"""

# The backlog: for the relay's gauges and the ops status ------------------------------------------

BACKLOG_SQL = f"""
    SELECT count(*) FILTER (WHERE failed_at IS NULL AND not_before <= now()),
           count(*) FILTER (WHERE failed_at IS NULL AND not_before > now()),
           coalesce(extract(epoch FROM now() - min(not_before)
                    FILTER (WHERE failed_at IS NULL AND not_before <= now())), 0),
           count(*) FILTER (WHERE failed_at IS NOT NULL),
           count(*) FILTER (WHERE failed_at IS NULL AND attempts > 0)
      FROM {TABLE}
     WHERE published_at IS NULL
"""
PUBLISHED_LAST_HOUR_SQL = f"SELECT count(*) FROM {TABLE} WHERE published_at >= now() - interval '1 hour'"


@dataclass(frozen=True)
class Backlog:
    due: int  # unpublished and due
    scheduled: int  # unpublished, not due yet
    oldest_due_age_seconds: float
    dead: int  # refused by the broker, waiting for a replay
    retrying: int  # pending with an error from an earlier attempt


def outbox_backlog(cursor) -> Backlog:
    """The unpublished rows, counted in one statement on `cursor` (Django's or psycopg2's)."""
    cursor.execute(BACKLOG_SQL)
    due, scheduled, oldest, dead, retrying = cursor.fetchone()
    return Backlog(due=due, scheduled=scheduled, oldest_due_age_seconds=float(oldest), dead=dead, retrying=retrying)


# Retention -------------------------------------------------------------------------------------

# Published rows past the retention, but never an email's request while one of its recipients is
# not finished (sent, failed, suppressed or cancelled): the request is the only way to send them again (re-drive).
PURGEABLE_SQL = f"""
    SELECT o.id FROM {TABLE} o
     WHERE o.published_at < %(cutoff)s
       AND (o.type <> 'email.requested'
            OR (SELECT count(*) FROM sender_delivery d WHERE d.event_id = o.id AND d.state IN {TERMINAL_SQL})
               >= jsonb_array_length(o.payload -> 'recipients'))
"""
