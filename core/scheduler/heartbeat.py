"""Is the django-q2 cluster on this host alive? Read from the heartbeat it writes.

A running cluster's sentinel saves a `Stat` (its status and a timestamp) to the cache every guard
cycle (half a second), with a few seconds' expiry; our cache is Django's database cache, so the
heartbeat is a row in Postgres. A cluster that is killed or hangs stops writing, and its last Stat
ages and then expires.
"""

import socket
from datetime import datetime

from django.utils import timezone
from django_q.conf import Conf
from django_q.status import Stat

RUNNING = (Conf.STARTING, Conf.IDLE, Conf.WORKING)


def cluster_heartbeat_age(*, host: str | None = None, now: datetime | None = None) -> float | None:
    """Seconds since the freshest heartbeat of a running cluster on `host` (default this machine's
    hostname: in Kubernetes the pod's name, so a rolling update's other pod does not count);
    None when there is none. Reads the cache; may raise its errors."""
    host = host or socket.gethostname()
    now = now or timezone.now()
    stamps = [stat.timestamp for stat in Stat.get_all() if stat.host == host and stat.status in RUNNING]
    if not stamps:
        return None
    return (now - max(stamps)).total_seconds()
