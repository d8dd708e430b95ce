"""Settings of the sender worker.

It reaches Postgres through its own connection pool (core/deliveries/store.py), never through the
ORM; it installs the apps of the tables it writes, the deliveries and the outbox, whose writer
(core/outbox/services.py) loads the outbox's models.
"""

from core.settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "core.outbox", "core.deliveries"]  # noqa: F405
