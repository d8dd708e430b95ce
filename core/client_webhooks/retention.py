"""Retention of delivered and failed client webhook messages and their attempts (scheduled daily).
Pending messages are never pruned, whatever their age (a disabled endpoint's wait to be re-enabled)."""

from collections.abc import Callable

from django.conf import settings

from core.client_webhooks.sql import MESSAGE
from core.retention import prune

_PRUNABLE = f"""
    SELECT id FROM {MESSAGE} WHERE state <> 'pending' AND created_at < now() - %(days)s * interval '1 day'
"""


def client_webhook_messages_prune(
    *, older_than_days: int | None = None, dry_run: bool = False, progress: Callable[[int], object] | None = None
) -> int:
    """Delete finished messages older than CLIENT_WEBHOOKS_RETENTION_DAYS (their attempts go with
    them: the database cascades, migration 0003). Returns how many."""
    days = settings.CLIENT_WEBHOOKS_RETENTION_DAYS if older_than_days is None else older_than_days
    return prune(
        name="client_webhook_messages",
        table=MESSAGE,
        key="id",
        select_sql=_PRUNABLE,
        params={"days": days},
        dry_run=dry_run,
        progress=progress,
    )
