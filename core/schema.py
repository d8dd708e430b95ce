"""Is this process's schema in place? The readiness gate on migrations.

A process installs only its own apps, so the check under its settings sees the migrations of those
apps (and of the apps they depend on): exactly the tables the process reads and writes. Once the
plan is empty it stays empty for the life of the process (migrations are applied before a release,
never rolled back under it), so the answer is remembered and later probes cost nothing.
"""

import structlog
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

log = structlog.get_logger(__name__)

_applied = False


def migrations_pending(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The unapplied migrations of the installed apps, as "app.name", in the order `migrate` would
    apply them; [] once every one is applied (remembered for the process). What `migrate --check`
    looks at. May raise the database's errors."""
    global _applied
    if _applied:
        return []
    executor = MigrationExecutor(connections[using])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    pending = [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]
    if not pending:
        _applied = True
    return pending


def migrations_applied() -> bool:
    """True once every installed app's migrations are applied; False (and a log line naming them)
    while some are not or the database does not answer. Closes the calling thread's connection
    until then: the probe server's threads come and go."""
    if _applied:
        return True
    try:
        pending = migrations_pending()
    except Exception as exc:  # a probe must get an answer, whatever the database does
        log.warning("migrations_check_failed", error=str(exc))
        return False
    finally:
        connections[DEFAULT_DB_ALIAS].close()
    if pending:
        log.warning("migrations_pending", migrations=pending)
    return not pending
