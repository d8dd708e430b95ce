"""Settings of the sender worker.

It reaches Postgres through its own connection pool (core/deliveries/store.py), never through the
ORM; it installs the apps of the tables it writes, the deliveries and the outbox, whose writer
(core/outbox/services.py) loads the outbox's models, and of the one it reads, the suppression
list (with the accounts app its entries belong to), so that its readiness waits for all their
migrations: every claim reads the list.
"""

from core.settings import *  # noqa: F401,F403

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    *INSTALLED_APPS,  # noqa: F405
    "core.outbox",
    "core.deliveries",
    "core.accounts",
    "core.suppressions",
]
# It serves no Django request (its probes are core.worker_http's): no middleware, and no login
# throttling backend (axes, which the command API installs).
MIDDLEWARE = []
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
