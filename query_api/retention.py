"""Retention of the projector's processed-event ids (scheduled daily)."""

from collections.abc import Callable

from django.conf import settings

from core.retention import prune
from query_api.write_side import OUTBOX

# An id dedupes a redelivery or a replay of its event: kept while the outbox still holds the event
# (a replay is possible) and for PROCESSED_EVENT_RETENTION_DAYS in any case (a redelivery).
_PRUNABLE = f"""
    SELECT p.event_id FROM read_processed_event p
     WHERE p.processed_at < now() - %(days)s * interval '1 day'
       AND NOT EXISTS (SELECT 1 FROM {OUTBOX} o WHERE o.{OUTBOX.id} = p.event_id)
"""


def processed_events_prune(
    *, older_than_days: int | None = None, dry_run: bool = False, progress: Callable[[int], object] | None = None
) -> int:
    """Delete processed-event ids nothing can bring back. Returns how many."""
    days = settings.PROCESSED_EVENT_RETENTION_DAYS if older_than_days is None else older_than_days
    return prune(
        name="processed_events",
        table="read_processed_event",
        key="event_id",
        select_sql=_PRUNABLE,
        params={"days": days},
        dry_run=dry_run,
        progress=progress,
    )
