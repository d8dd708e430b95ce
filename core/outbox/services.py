"""The outbox writer: every service that changes state records its events through here."""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import connection

from core.contracts import Event
from core.outbox.models import OutboxEvent


def new_event_id() -> str:
    return str(uuid.uuid4())


def outbox_event_add(
    *,
    event: Event,
    aggregatetype: str,
    aggregateid: str,
    not_before: datetime | None = None,
) -> OutboxEvent:
    """Write `event` to the outbox and wake the relay when the transaction commits.

    Must run inside the caller's `transaction.atomic()`, next to the change the event describes:
    both commit or neither does. Postgres folds identical NOTIFYs of one transaction into one.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("outbox_event_add must run inside the transaction of its change")
    headers = {
        "schema_version": event.VERSION,
        "correlation_id": event.correlation_id,
        "aggregateid": aggregateid,
    }
    row = OutboxEvent(
        id=event.event_id,
        aggregatetype=aggregatetype,
        aggregateid=aggregateid,
        type=event.TYPE,
        payload=event.to_dict(),
        headers=headers,
    )
    if not_before is not None:
        row.not_before = not_before
    row.save(force_insert=True)
    if settings.OUTBOX_NOTIFY:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [settings.OUTBOX_NOTIFY_CHANNEL])
    return row
