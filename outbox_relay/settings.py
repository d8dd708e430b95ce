"""Settings of the relay process and the outbox CLI: no URLs served.

The relay reaches Postgres through its own connections (core/db.py); the CLI queries the outbox,
its replays and dead letters, and re-drives deliveries, through the ORM.
"""

from core.settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "core.outbox", "core.deliveries"]  # noqa: F405
