"""Settings of `manage.py migrate` and of the scheduler (`manage.py qcluster`): every app installed.

The migrations build every service's tables in the one database, and the scheduled jobs (the
retention purges, the token purge, the read model's reconcile) belong to several services. The
services' own processes run on their own settings, each with only its apps; this module composes
their app lists, and no service imports it.
"""

from command_api.settings import INSTALLED_APPS as command_api_apps
from core.settings import *  # noqa: F401,F403
from notifier.settings import INSTALLED_APPS as notifier_apps
from outbox_relay.settings import INSTALLED_APPS as outbox_relay_apps
from query_api.settings import INSTALLED_APPS as query_api_apps
from sender.settings import INSTALLED_APPS as sender_apps

# Every app of any process, once each, in the order the processes list them.
INSTALLED_APPS = list(
    dict.fromkeys(command_api_apps + query_api_apps + outbox_relay_apps + sender_apps + notifier_apps)
)
# The scheduler's own liveness command (manage.py scheduler_alive); it has no models.
INSTALLED_APPS.append("core.scheduler")
