"""The outbox writer (every service that changes state records its events through here), and
the ops operations on the outbox: replay and purge."""

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from core.contracts import Event
from core.errors import ApplicationError
from core.outbox.models import OutboxEvent, OutboxReplay
from core.outbox.selectors import OutboxFilter, outbox_event_list
from core.outbox.sql import BULK_INSERT_SQL, PURGEABLE_SQL, outbox_row

log = structlog.get_logger(__name__)


def new_event_id() -> str:
    return str(uuid.uuid4())


def outbox_events_add(*, events: Sequence[tuple[Event, str]], aggregatetype: str) -> None:
    """Write `events` (each with its aggregate id) to the outbox in one statement, and wake the
    relay when the transaction commits.

    Must run inside the caller's `transaction.atomic()`, next to the change the events describe:
    all commit or none does. Postgres folds identical NOTIFYs of one transaction into one.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("outbox_events_add must run inside the transaction of its change")
    if not events:
        return
    rows = [outbox_row(event, aggregatetype=aggregatetype, aggregateid=aggregateid) for event, aggregateid in events]
    with connection.cursor() as cursor:
        cursor.execute(BULK_INSERT_SQL, [json.dumps(rows)])
    notify_relay()


# Ops: replay and purge -----------------------------------------------------------------------

REPLAY_CHUNK = 1000


@dataclass(frozen=True)
class ReplayResult:
    count: int
    dry_run: bool
    replay: OutboxReplay | None
    sample: list[OutboxEvent]


def outbox_replay(
    *,
    selection: OutboxFilter,
    actor: str,
    via: str,
    reason: str = "",
    dry_run: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ReplayResult:
    """Put the published or failed rows of `selection` back into the outbox, unchanged: the relay
    publishes them again with the same event ids, so idempotent consumers skip what they already
    handled. Rows still pending are left alone (they will go anyway). Records who replayed what
    and when. `dry_run` only counts. Refuses an empty selection (ApplicationError)."""
    if selection.is_empty():
        raise ApplicationError(
            "Name what to replay: an event id, an aggregate id, an event type or a time range.",
            errors={"selection": ["At least one of event_ids, aggregate_id, event_type, since, until."]},
        )
    candidates = outbox_event_list(selection=selection).filter(
        Q(published_at__isnull=False) | Q(failed_at__isnull=False)
    )
    count = candidates.count()
    sample = list(candidates[:20])
    if dry_run or count == 0:
        return ReplayResult(count=count, dry_run=dry_run, replay=None, sample=sample)

    with transaction.atomic():
        replay = OutboxReplay.objects.create(
            actor=actor, via=via, filters=selection.describe(), event_count=count, reason=reason
        )
        ids = list(candidates.values_list("id", flat=True))
        done = 0
        for start in range(0, len(ids), REPLAY_CHUNK):
            chunk = ids[start : start + REPLAY_CHUNK]
            done += OutboxEvent.objects.filter(id__in=chunk).update(
                published_at=None, failed_at=None, not_before=Now(), last_error="", last_replay=replay
            )
            if progress:
                progress(len(chunk))
        replay.event_count = done
        replay.save(update_fields=["event_count"])
        notify_relay()
    log.info("outbox_replayed", replay_id=replay.pk, events=done, actor=actor, via=via)
    return ReplayResult(count=done, dry_run=False, replay=replay, sample=sample)


PURGE_CHUNK = 5000


def outbox_purge_published(
    *, older_than: timedelta | None = None, dry_run: bool = False, progress: Callable[[int], object] | None = None
) -> int:
    """Delete rows published longer than `older_than` ago (default OUTBOX_RETENTION_DAYS), in
    chunks of short transactions. Never touches unpublished or failed rows, nor the request of an
    email that is not finished. Returns the count."""
    if older_than is None:
        older_than = timedelta(days=settings.OUTBOX_RETENTION_DAYS)
    params = {"cutoff": timezone.now() - older_than}
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({PURGEABLE_SQL}) AS purgeable", params)
            return cursor.fetchone()[0]
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(f"{PURGEABLE_SQL} LIMIT {PURGE_CHUNK}", params)
            chunk = [row[0] for row in cursor.fetchall()]
        if not chunk:
            break
        # Replay records keep their counts; the rows they pointed at go.
        count, _ = OutboxEvent.objects.filter(id__in=chunk).delete()
        deleted += count
        if progress:
            progress(count)
    log.info("outbox_purged", deleted=deleted, older_than_days=older_than.days)
    return deleted


def notify_relay() -> None:
    """Wake the relay when the current transaction commits (Postgres folds repeated NOTIFYs)."""
    if settings.OUTBOX_NOTIFY:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [settings.OUTBOX_NOTIFY_CHANNEL])
