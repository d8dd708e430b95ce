"""Queue the status changes a projector batch made for the endpoints that want them.

Called by the projector inside the transaction that applies the batch, so a change and its
messages commit together or not at all (the feature's outbox: nothing is lost between the read
model and the notifier, and a batch applied twice queues nothing twice because the projector
skips events it has processed). With no enabled endpoint among the batch's owners it costs no
statement: the projector learns it from the statement that writes its rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from core.client_webhooks.events import event_type_for
from core.client_webhooks.sql import ENDPOINTS_FOR_OWNERS_SQL, INSERT_MESSAGES_SQL, NOTIFY_SQL


@dataclass(frozen=True)
class StatusChange:
    """One recipient's status change (or the whole email's: recipient ""), as the read model made it."""

    owner_id: int
    email_id: int
    sequence: int
    status: str
    recipient: str
    at: str
    detail: str
    event_id: str


def payload(change: StatusChange, event_type: str) -> dict:
    """The body a client receives: Standard Webhooks' {type, timestamp, data}. `data.sequence`
    grows with every status change of the email: a client that has seen a higher one for the
    same recipient drops this delivery as stale."""
    return {
        "type": event_type,
        "timestamp": change.at,
        "data": {
            "email_id": change.email_id,
            "recipient": change.recipient or None,
            "status": change.status,
            "sequence": change.sequence,
            "occurred_at": change.at,
            "detail": change.detail,
            "event_id": change.event_id,
        },
    }


def messages_queue(cursor, changes: list[StatusChange], *, owners: set[int], notify_channel: str | None) -> int:
    """Insert one message per change per enabled endpoint of its owner that wants its event type,
    in the caller's transaction; NOTIFY `notify_channel` (if any) when there is one. `owners` are
    those of the changes' owners the caller knows to have an enabled endpoint (`owners_with_endpoints`);
    with none, this runs no statement. Returns how many were queued. Raises on a database error
    (the caller rolls back)."""
    typed = [
        (change, kind) for change in changes if change.owner_id in owners and (kind := event_type_for(change.status))
    ]
    if not typed:
        return 0
    cursor.execute(ENDPOINTS_FOR_OWNERS_SQL, [sorted({change.owner_id for change, _ in typed})])
    endpoints: dict[int, list[tuple[int, set[str]]]] = {}
    for endpoint_id, owner_id, event_types in cursor.fetchall():
        endpoints.setdefault(owner_id, []).append((endpoint_id, set(event_types)))
    if not endpoints:
        return 0
    rows = [
        {
            "id": str(uuid.uuid4()),
            "endpoint_id": endpoint_id,
            "email_id": change.email_id,
            "sequence": change.sequence,
            "event_type": kind,
            "payload": payload(change, kind),
        }
        for change, kind in typed
        for endpoint_id, wanted in endpoints.get(change.owner_id, ())
        if not wanted or kind in wanted
    ]
    if rows:
        cursor.execute(INSERT_MESSAGES_SQL, [json.dumps(rows)])
        if notify_channel:
            cursor.execute(NOTIFY_SQL, [notify_channel])
    return len(rows)
