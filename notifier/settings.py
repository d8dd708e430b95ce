"""Settings of the notifier worker.

It reaches Postgres through its own connection (core/db.py), never through the ORM; it installs
the client webhooks' app (and the accounts app its endpoints belong to) so that its readiness
waits for their migrations.
"""

from core.settings import *  # noqa: F401,F403

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    *INSTALLED_APPS,  # noqa: F405
    "core.accounts",
    "core.client_webhooks",
]
# It serves no Django request (its probes are core.worker_http's): no middleware, and no login
# throttling backend (axes, which the command API installs).
MIDDLEWARE = []
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
