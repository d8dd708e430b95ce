"""Pruning in chunks of short transactions, for the retention jobs of every table that grows with
traffic (the outbox, deliveries, processed-event ids, provider events). Each job names the rows it
may take with one SELECT of ids; this deletes them chunk by chunk, so a long backlog never holds a
lock for long and the job shows progress."""

from collections.abc import Callable

import structlog
from django.db import connection, transaction

log = structlog.get_logger(__name__)

CHUNK = 5000


def prune(
    *,
    name: str,
    table: str,
    key: str,
    select_sql: str,
    params: dict,
    dry_run: bool = False,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Delete from `table` the rows whose `key` `select_sql` returns (it may return at most
    CHUNK at a time: the statement gets a LIMIT). `dry_run` counts them. Returns the count."""
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({select_sql}) AS prunable", params)
            return cursor.fetchone()[0]
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE {key} IN ({select_sql} LIMIT {CHUNK})", params)
            count = cursor.rowcount
        deleted += count
        if progress and count:
            progress(count)
        if count < CHUNK:
            break
    log.info(f"{name}_pruned", deleted=deleted)
    return deleted
