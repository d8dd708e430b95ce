"""Rebuild and reconcile the read table from the write side's own records.

The broker keeps nothing, so the write side is the source: each email's events are synthesized
from its row and recipients (email.requested), the sender's delivery records (email.sent,
email.failed, email.suppressed) and the stored provider webhook events (email.delivery_status),
then applied with the projector's own rules (query_api.projection), so a rebuilt row is what
projection gives.

`read_model_rebuild` fills new tables inside one REPEATABLE READ snapshot, then, holding an
exclusive lock on the live table (the projector waits, readers wait a moment), catches up the
emails that changed since the snapshot began and swaps the new tables in. The query API never
sees a half-built log.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import structlog
from django.conf import settings
from django.db import connection, transaction

from core.client_webhooks.queueing import StatusChange, messages_queue
from core.contracts import (
    EmailCancelled,
    EmailDeliveryStatus,
    EmailFailed,
    EmailRequested,
    EmailScheduled,
    EmailSent,
    EmailSuppressed,
)
from core.deliveries.states import TERMINAL_SQL
from core.outbox.sql import REARM_PUBLISHED_REQUESTS_SQL
from query_api.apply import COLUMNS, history_entry, write_history
from query_api.projection import RANK, Row, apply
from query_api.write_side import DELIVERY as D
from query_api.write_side import PROVIDER_EVENT as P
from query_api.write_side import RECIPIENT as R
from query_api.write_side import SENT_EMAIL as E

log = structlog.get_logger(__name__)
CHUNK = 2000
PHASE = {
    EmailScheduled: 0,
    EmailRequested: 0,
    EmailCancelled: 1,
    EmailSent: 1,
    EmailFailed: 1,
    EmailSuppressed: 1,
    EmailDeliveryStatus: 2,
}
SLACK = "interval '60 seconds'"  # longer than any write transaction: a commit may carry an older now()

# The write side's tables and columns are named in query_api.write_side (E, R, D, P, O here).
EMAILS_SQL = f"""
    SELECT e.{E.id}, e.{E.owner}, e.{E.from_email}, e.{E.template_id}, e.{E.template_name}, e.{E.subject},
           e.{E.created}, array_agg(r.{R.address} ORDER BY r.{R.id}), e.{E.send_at},
           e.{E.send_at} IS NULL OR e.{E.send_at} <= now() + %s * interval '1 second'
      FROM {E} e JOIN {R} r ON r.{R.email_id} = e.{E.id}
     WHERE e.{E.id} = ANY(%s::bigint[])
     GROUP BY e.{E.id}
"""
DELIVERIES_SQL = f"""
    SELECT {D.email_id}, {D.event_id}::text, {D.state}, {D.recipient}, {D.provider_message_id}, {D.last_error},
           {D.attempts}, {D.updated_at}
      FROM {D}
     WHERE {D.email_id} = ANY(%s::bigint[]) AND {D.state} IN {TERMINAL_SQL}
"""
PROVIDER_EVENTS_SQL = f"""
    SELECT {P.email_id}, {P.provider_event_id}, {P.request_event_id}::text, {P.recipient}, {P.status},
           {P.provider_message_id}, {P.reason}, {P.reported_at}
      FROM {P}
     WHERE {P.email_id} = ANY(%s::bigint[])
"""
ALL_EMAILS_SQL = f"SELECT {E.id} FROM {E} ORDER BY {E.id}"
# The emails that changed since the snapshot of time %(t)s was taken.
CHANGED_SQL = f"""
    SELECT {E.id} FROM {E} WHERE {E.created} >= %(t)s - {SLACK}
    UNION SELECT {D.email_id} FROM {D} WHERE {D.updated_at} >= %(t)s - {SLACK}
    UNION SELECT {P.email_id} FROM {P} WHERE {P.received_at} >= %(t)s - {SLACK}
"""


def _iso(value) -> str:
    return value.isoformat()


def build_rows(cursor, email_ids: list[int]) -> tuple[dict[int, Row], list[dict]]:
    """Rows and history for `email_ids`, from the write side as `cursor` sees it."""
    events: dict[int, list] = defaultdict(list)
    cursor.execute(EMAILS_SQL, [settings.SCHEDULED_HANDOFF_SECONDS, email_ids])
    for row in cursor.fetchall():
        email_id, owner, from_email, template_id, template_name, subject, created, recipients, send_at, due = row
        if send_at is not None:
            events[email_id].append(
                EmailScheduled(
                    event_id=f"rebuild-scheduled-{email_id}",
                    correlation_id="rebuild",
                    occurred_at=_iso(created),
                    email_id=email_id,
                    request_event_id="",
                    owner_id=owner,
                    from_email=from_email,
                    template_id=template_id,
                    template_name=template_name,
                    subject=subject,
                    recipients=tuple(recipients),
                    requested_at=_iso(created),
                    send_at=_iso(send_at),
                )
            )
        if not due:
            continue  # its request is published for the hand-off: until then the email is scheduled
        events[email_id].append(
            EmailRequested(
                event_id=f"rebuild-requested-{email_id}",
                correlation_id="rebuild",
                occurred_at=_iso(created),
                email_id=email_id,
                owner_id=owner,
                template_id=template_id,
                from_email=from_email,
                reply_to=None,
                recipients=tuple(recipients),
                subject=subject,
                body_html="",
                template_name=template_name,
                send_at=_iso(send_at) if send_at is not None else "",
            )
        )
    cursor.execute(DELIVERIES_SQL, [email_ids])
    grouped = defaultdict(list)
    for email_id, event_id, state, recipient, message_id, error, attempts, updated in cursor.fetchall():
        grouped[(email_id, event_id, state, message_id, error)].append((recipient, attempts, updated))
    for (email_id, request_id, state, message_id, error), items in grouped.items():
        recipients = tuple(r for r, _, _ in items)
        at = _iso(max(u for _, _, u in items))
        attempt = max(a for _, a, _ in items)
        common = dict(
            event_id=f"rebuild-{state}-{email_id}-{message_id or error[:20]}",
            correlation_id="rebuild",
            occurred_at=at,
            email_id=email_id,
            request_event_id=request_id,
            recipients=recipients,
            provider="sendgrid",
            attempt=attempt,
        )
        if state == "cancelled":
            events[email_id].append(
                EmailCancelled(
                    event_id=f"rebuild-cancelled-{email_id}",
                    correlation_id="rebuild",
                    occurred_at=at,
                    email_id=email_id,
                    request_event_id=request_id,
                    recipients=recipients,
                    cancelled_by=0,  # only the owner cancels; the projection does not show who
                )
            )
        elif state == "sent":
            events[email_id].append(EmailSent(provider_message_id=message_id, **common))
        elif state == "suppressed":  # the claim kept the reason as the delivery's error
            del common["provider"], common["attempt"]
            events[email_id].append(EmailSuppressed(reasons=(error,) * len(recipients), **common))
        else:
            events[email_id].append(EmailFailed(reason=error, permanent=True, **common))
    cursor.execute(PROVIDER_EVENTS_SQL, [email_ids])
    for email_id, pid, request_id, recipient, status, message_id, reason, reported in cursor.fetchall():
        events[email_id].append(
            EmailDeliveryStatus(
                event_id=f"rebuild-provider-{pid}",
                correlation_id="rebuild",
                occurred_at=_iso(reported),
                email_id=email_id,
                request_event_id=request_id,
                recipient=recipient,
                status=status,
                provider="sendgrid",
                provider_event_id=pid,
                provider_message_id=message_id,
                reason=reason,
                reported_at=_iso(reported),
            )
        )
    rows: dict[int, Row] = {}
    history: list[dict] = []
    for email_id, email_events in events.items():
        row = rows.setdefault(email_id, Row(id=email_id))
        # Causal order first (the request, then the sender's outcome, then what the provider said
        # about it), time second: webhook timestamps only have whole seconds.
        for event in sorted(email_events, key=lambda e: (PHASE[type(e)], e.occurred_at)):
            history += [history_entry(email_id, change, derived=True) for change in apply(row, event)]
    return rows, history


def _write(
    cursor,
    table: str,
    history_table: str,
    rows: dict[int, Row],
    history: list[dict],
    only_new: AbstractSet[int] = frozenset(),
    fresh: bool = False,
) -> int:
    """Write `rows` and replace their history; a row of `only_new` is written only if no row of its
    id exists by then (another writer made it meanwhile: it stands). `fresh`: none of these emails
    has a history row yet, so none is deleted (the delete's plan on a table with no statistics
    is a full scan: once per chunk, the rebuild slowed as the table grew). Returns the rows
    written."""
    if rows:
        # A status sequence never goes down: clients' webhooks have carried the higher numbers.
        updates = ", ".join(
            f"{c} = GREATEST({table}.{c}, EXCLUDED.{c})" if c == "status_seq" else f"{c} = EXCLUDED.{c}"
            for c in COLUMNS
            if c != "id"
        )
        cursor.execute(
            f"""INSERT INTO {table} ({", ".join(COLUMNS)})
                SELECT {", ".join(COLUMNS)} FROM json_populate_recordset(NULL::read_sent_email, %s)
                ON CONFLICT (id) DO UPDATE SET {updates}
                 WHERE NOT ({table}.id = ANY(%s::bigint[]))
                RETURNING id""",
            [json.dumps([vars(r) for r in rows.values()]), list(only_new)],
        )
        written = {row[0] for row in cursor.fetchall()}
        rows = {k: v for k, v in rows.items() if k in written}
        history = [h for h in history if h["email_id"] in written]
        if not fresh:
            cursor.execute(f"DELETE FROM {history_table} WHERE email_id = ANY(%s::bigint[])", [list(rows)])
    write_history(cursor, history, table=history_table)
    return len(rows)


@dataclass(frozen=True)
class RebuildResult:
    emails: int
    caught_up: int
    seconds: float


def _index_map(cursor, table: str) -> dict[str, str]:
    cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
    return {definition.split(" USING ", 1)[1]: name for name, definition in cursor.fetchall()}


def read_model_rebuild(*, progress: Callable[[int, int], object] | None = None) -> RebuildResult:
    """Rebuild the read table and its history from the write side; see the module docstring."""
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS read_sent_email_new, read_sent_email_event_new")
        cursor.execute("CREATE TABLE read_sent_email_new (LIKE read_sent_email INCLUDING ALL)")
        cursor.execute("CREATE TABLE read_sent_email_event_new (LIKE read_sent_email_event INCLUDING ALL)")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT now()")
        (snapshot_at,) = cursor.fetchone()
        cursor.execute(ALL_EMAILS_SQL)
        ids = [row[0] for row in cursor.fetchall()]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows, history = build_rows(cursor, chunk)
            _write(cursor, "read_sent_email_new", "read_sent_email_event_new", rows, history, fresh=True)
            if progress:
                progress(start + len(chunk), len(ids))
    with connection.cursor() as cursor:
        # Statistics before the catch-up, which looks rows up by id under the lock, and before the
        # query API plans its first query on the new tables.
        cursor.execute("ANALYZE read_sent_email_new, read_sent_email_event_new")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE read_sent_email, read_sent_email_event IN ACCESS EXCLUSIVE MODE")
        cursor.execute(CHANGED_SQL, {"t": snapshot_at})
        changed = sorted(row[0] for row in cursor.fetchall())
        for start in range(0, len(changed), CHUNK):
            rows, history = build_rows(cursor, changed[start : start + CHUNK])
            _write(cursor, "read_sent_email_new", "read_sent_email_event_new", rows, history)
        # Sequence numbers the live rows reached stand: webhooks have told clients of them, and a
        # change after the rebuild must still carry a higher one.
        cursor.execute(
            """UPDATE read_sent_email_new n SET status_seq = o.status_seq
                 FROM read_sent_email o WHERE o.id = n.id AND o.status_seq > n.status_seq"""
        )
        # Keep the live names of indexes and constraints, so migrations still find them.
        names = {}
        for table in ("read_sent_email", "read_sent_email_event"):
            old, new = _index_map(cursor, table), _index_map(cursor, f"{table}_new")
            names.update({new[key]: old[key] for key in old if key in new})
        cursor.execute(
            "SELECT pg_get_serial_sequence('read_sent_email_event', 'id'), "
            "pg_get_serial_sequence('read_sent_email_event_new', 'id')"
        )
        live_sequence, new_sequence = cursor.fetchone()
        cursor.execute("DROP TABLE read_sent_email, read_sent_email_event")
        cursor.execute("ALTER TABLE read_sent_email_new RENAME TO read_sent_email")
        cursor.execute("ALTER TABLE read_sent_email_event_new RENAME TO read_sent_email_event")
        for temporary, live in names.items():
            cursor.execute(f'ALTER INDEX "{temporary}" RENAME TO "{live}"')
        cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {live_sequence.split('.')[-1]}")
    result = RebuildResult(emails=len(ids), caught_up=len(changed), seconds=time.monotonic() - started)
    log.info("read_model_rebuilt", emails=result.emails, caught_up=result.caught_up, seconds=round(result.seconds, 1))
    return result


@dataclass
class ReconcileReport:
    missing: list[int] = field(default_factory=list)
    behind: list[int] = field(default_factory=list)
    repaired: int = 0
    stuck: list[int] = field(default_factory=list)  # not finished on the write side after EMAIL_STUCK_AFTER_SECONDS
    rearmed: list[int] = field(default_factory=list)  # stuck, never claimed: their request sent again


# Which emails to look at: the newest `limit`, and every one that is not finished, in the read
# model or on the write side (small sets, each behind a partial index), all older than the grace.
CANDIDATES_SQL = f"""
    (SELECT {E.id} FROM {E} WHERE {E.created} < now() - %(grace)s * interval '1 second'
      ORDER BY {E.id} DESC LIMIT %(limit)s)
    UNION
    SELECT id FROM read_sent_email
     WHERE status IN ('queued', 'sending') AND created < now() - %(grace)s * interval '1 second'
    UNION
    SELECT DISTINCT {D.email_id} FROM {D}
     WHERE {D.state} NOT IN {TERMINAL_SQL} AND {D.created_at} < now() - %(grace)s * interval '1 second'
    UNION
    -- rows an event made before its email's request, which never came (a request an earlier
    -- release's relay published to the senders alone, during an upgrade): however old
    SELECT id FROM read_sent_email WHERE owner_id IS NULL
"""
# Of `ids`, those accepted (or, scheduled, due) longer than the stuck threshold ago with a
# recipient that is not finished on the write side; and whether any of their recipients ever
# reached a sender.
STUCK_SQL = f"""
    SELECT e.{E.id}, EXISTS (SELECT 1 FROM {D} d WHERE d.{D.email_id} = e.{E.id})
      FROM {E} e
     WHERE e.{E.id} = ANY(%(ids)s::bigint[])
       AND coalesce(e.{E.send_at}, e.{E.created}) < now() - %(stuck)s * interval '1 second'
       AND EXISTS (SELECT 1 FROM {R} r
                    WHERE r.{R.email_id} = e.{E.id}
                      AND NOT EXISTS (SELECT 1 FROM {D} d
                                       WHERE d.{D.email_id} = e.{E.id} AND d.{D.recipient} = r.{R.address}
                                         AND d.{D.state} IN {TERMINAL_SQL}))
"""


def read_model_reconcile(*, repair: bool = False, limit: int = 10_000) -> ReconcileReport:
    """Compare with the write side the newest `limit` emails and every email not finished (all
    older than RECONCILE_GRACE_SECONDS): report read rows that are missing or whose recipients are
    behind, and emails stuck (not finished EMAIL_STUCK_AFTER_SECONDS after they were accepted).
    With `repair`, rewrite the missing and behind rows from the write side (statuses only move
    forward, so this never loses news) and send again the request of a stuck email that never
    reached a sender. A read row is locked before the write side is read for it, so an event
    the projector applies meanwhile waits and lands on top; a missing row the projector has made
    in the meantime is left to it."""
    report = ReconcileReport()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CANDIDATES_SQL, {"grace": settings.RECONCILE_GRACE_SECONDS, "limit": limit})
        ids = sorted(row[0] for row in cursor.fetchall())
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            cursor.execute(
                "SELECT id, recipient_status, owner_id, status_seq FROM read_sent_email WHERE id = ANY(%s::bigint[]) "
                "ORDER BY id FOR UPDATE",
                [chunk],
            )
            actual = {
                row[0]: (json.loads(row[1]) if isinstance(row[1], str) else row[1], row[2], row[3])
                for row in cursor.fetchall()
            }
            expected, _ = build_rows(cursor, chunk)
            missing, behind = [], []
            for email_id, row in expected.items():
                if email_id not in actual or actual[email_id][1] is None:
                    missing.append(email_id)
                    continue
                have = actual[email_id][0]
                if any(
                    RANK[state["status"]] > RANK[have.get(r, {"status": "queued"})["status"]]
                    for r, state in row.recipient_status.items()
                ):
                    behind.append(email_id)
            report.missing += missing
            report.behind += behind
            cursor.execute(STUCK_SQL, {"ids": chunk, "stuck": settings.EMAIL_STUCK_AFTER_SECONDS})
            stuck = cursor.fetchall()
            report.stuck += [email_id for email_id, _ in stuck]
            if repair and (missing or behind):
                rows, history = build_rows(cursor, missing + behind)
                changes = _repaired_changes(rows, actual)
                # A row made meanwhile is left to the projector; one there without an owner (made
                # by an event before its request) is locked above and rewritten whole.
                absent = {email_id for email_id in missing if email_id not in actual}
                report.repaired += _write(
                    cursor, "read_sent_email", "read_sent_email_event", rows, history, only_new=absent
                )
                _queue_webhooks(cursor, [c for c in changes if c.email_id in rows])
            never_claimed = [str(email_id) for email_id, claimed in stuck if not claimed]
            if repair and never_claimed:
                cursor.execute(
                    REARM_PUBLISHED_REQUESTS_SQL, {"ids": never_claimed, "stuck": settings.EMAIL_STUCK_AFTER_SECONDS}
                )
                report.rearmed += [int(row[0]) for row in cursor.fetchall()]
    if report.stuck:
        log.warning("emails_stuck", count=len(report.stuck), examples=report.stuck[:20], rearmed=len(report.rearmed))
    log.info(
        "read_model_reconciled",
        missing=len(report.missing),
        behind=len(report.behind),
        repaired=report.repaired,
        stuck=len(report.stuck),
        rearmed=len(report.rearmed),
    )
    return report


def _repaired_changes(rows: dict[int, Row], actual: dict[int, tuple]) -> list[StatusChange]:
    """What a repair moves forward, as status changes for the clients' webhooks: the projector,
    when the events behind it arrive, finds the row there already and records nothing, so the
    repair is what tells the clients. Each change takes the next sequence number after the live
    row's, and the row keeps the highest (written with GREATEST)."""
    changes = []
    for email_id, row in rows.items():
        have, owner, seq = actual.get(email_id, ({}, None, 0))
        seq = max(seq or 0, 0)
        if owner is None:
            have = {}  # nobody was told of a row without an owner: every status is news
        if row.owner_id is None:
            continue
        for recipient, state in sorted(row.recipient_status.items()):
            before = (have or {}).get(recipient, {}).get("status")
            if before is not None and RANK[state["status"]] <= RANK[before]:
                continue
            seq += 1
            changes.append(
                StatusChange(
                    owner_id=row.owner_id,
                    email_id=email_id,
                    sequence=seq,
                    status=state["status"],
                    recipient=recipient,
                    at=state.get("at") or "",
                    detail=(state.get("reason") or state.get("provider_message_id") or "")[:1000],
                    event_id=f"reconcile-{email_id}-{recipient}-{state['status']}",
                )
            )
        row.status_seq = max(row.status_seq, seq)
    return changes


def _queue_webhooks(cursor, changes: list[StatusChange]) -> None:
    if changes:
        channel = settings.CLIENT_WEBHOOKS_NOTIFY_CHANNEL if settings.CLIENT_WEBHOOKS_NOTIFY else None
        messages_queue(cursor, changes, owners={c.owner_id for c in changes}, notify_channel=channel)


def read_model_reconcile_scheduled() -> dict:
    """The django-q2 job: reconcile and repair; returns the counts (kept in the task result)."""
    report = read_model_reconcile(repair=True)
    return {
        "missing": len(report.missing),
        "behind": len(report.behind),
        "repaired": report.repaired,
        "stuck": len(report.stuck),
        "rearmed": len(report.rearmed),
    }
