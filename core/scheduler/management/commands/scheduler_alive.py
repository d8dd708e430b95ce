"""`manage.py scheduler_alive`: the scheduler's liveness probe. Exits 0 when the django-q2 cluster on
this host reported within SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS, 1 otherwise."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.scheduler.heartbeat import cluster_heartbeat_age


class Command(BaseCommand):
    help = "Exit non-zero unless this host's django-q2 cluster has reported recently."

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="seconds (default the setting SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS)",
        )

    def handle(self, *args, max_age: float | None, **options):
        limit = settings.SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS if max_age is None else max_age
        try:
            age = cluster_heartbeat_age()
        except Exception as exc:  # the cache is the database: a probe says what failed, in one line
            raise CommandError(f"cannot read the cluster's heartbeat: {exc}") from exc
        if age is None:
            raise CommandError("no running cluster on this host has reported")
        if age > limit:
            raise CommandError(f"the cluster's last heartbeat is {age:.1f} s old (limit {limit} s)")
        self.stdout.write(f"alive: last heartbeat {age:.1f} s ago")
