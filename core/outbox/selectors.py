"""Reads of the outbox for ops: status and filtered lists."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q, QuerySet

from core.outbox.models import OutboxEvent
from core.outbox.sql import PUBLISHED_LAST_HOUR_SQL, outbox_backlog

STATES = ("pending", "published", "failed")


@dataclass(frozen=True)
class OutboxFilter:
    """A selection of outbox rows. Empty fields select everything."""

    event_ids: tuple[str, ...] = ()
    aggregate_id: str | None = None
    event_type: str | None = None
    state: str | None = None  # pending | published | failed
    failing: bool = False  # dead, or pending with a recorded error
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at <= until

    def is_empty(self) -> bool:
        return not (self.event_ids or self.aggregate_id or self.event_type or self.since or self.until)

    def describe(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if v not in (None, (), False)}
        for key in ("since", "until"):
            if key in data:
                data[key] = data[key].isoformat()
        if "event_ids" in data:
            data["event_ids"] = list(data["event_ids"])
        return data


def outbox_event_list(*, selection: OutboxFilter) -> QuerySet[OutboxEvent]:
    """The rows `selection` names, oldest first."""
    rows = OutboxEvent.objects.all()
    if selection.event_ids:
        rows = rows.filter(id__in=selection.event_ids)
    if selection.aggregate_id:
        rows = rows.filter(aggregateid=selection.aggregate_id)
    if selection.event_type:
        rows = rows.filter(type=selection.event_type)
    if selection.since:
        rows = rows.filter(created_at__gte=selection.since)
    if selection.until:
        rows = rows.filter(created_at__lte=selection.until)
    if selection.state == "pending":
        rows = rows.filter(published_at__isnull=True, failed_at__isnull=True)
    elif selection.state == "published":
        rows = rows.filter(published_at__isnull=False)
    elif selection.state == "failed":
        rows = rows.filter(failed_at__isnull=False)
    if selection.failing:
        rows = rows.filter(Q(failed_at__isnull=False) | Q(published_at__isnull=True, attempts__gt=0))
    return rows.order_by("created_at", "id")


@dataclass(frozen=True)
class OutboxStatus:
    backlog: int  # unpublished and due
    scheduled: int  # unpublished, not due yet
    oldest_due_age_seconds: float
    published_last_hour: int
    failed: int  # dead: refused by the broker, waiting for a replay
    retrying: int  # pending with an error from an earlier attempt


def outbox_status() -> OutboxStatus:
    with connection.cursor() as cursor:
        backlog = outbox_backlog(cursor)
        cursor.execute(PUBLISHED_LAST_HOUR_SQL)
        (published_last_hour,) = cursor.fetchone()
    return OutboxStatus(
        backlog=backlog.due,
        scheduled=backlog.scheduled,
        oldest_due_age_seconds=round(backlog.oldest_due_age_seconds, 3),
        published_last_hour=published_last_hour,
        failed=backlog.dead,
        retrying=backlog.retrying,
    )
