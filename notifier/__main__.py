"""The notifier worker: `python -m notifier run`.

Delivers the status changes the projector queued for users' webhook endpoints
(core.client_webhooks), signed per Standard Webhooks, retried on CLIENT_WEBHOOKS_RETRY_SCHEDULE.
Port NOTIFIER_HTTP_PORT (9104) serves /healthz, /readyz and /metrics.
"""

import argparse
import sys

from core import bootstrap


def command_run(args) -> int:
    from django.conf import settings

    from notifier.dispatcher import NotifierWorker, Policy
    from notifier.http import Poster

    timeout = settings.CLIENT_WEBHOOKS_TIMEOUT_SECONDS
    return bootstrap.run_worker(
        args,
        lambda health: NotifierWorker(
            database=settings.DATABASES["default"],
            health=health,
            policy=Policy(
                schedule=settings.CLIENT_WEBHOOKS_RETRY_SCHEDULE,
                disable_after=settings.CLIENT_WEBHOOKS_DISABLE_AFTER,
                allow_private=settings.CLIENT_WEBHOOKS_ALLOW_PRIVATE,
                allow_http=settings.CLIENT_WEBHOOKS_ALLOW_HTTP,
                # Longer than an attempt can take (the connect and the read each time out): a
                # message comes back to another notifier only if this one died with it.
                lease_seconds=2 * timeout + 30,
            ),
            # Endpoints on one host share its pool: as many connections as threads.
            poster=Poster(timeout=timeout, connections_per_host=settings.CLIENT_WEBHOOKS_CONCURRENCY),
            concurrency=settings.CLIENT_WEBHOOKS_CONCURRENCY,
            per_endpoint=settings.CLIENT_WEBHOOKS_PER_ENDPOINT,
            poll_interval=settings.CLIENT_WEBHOOKS_POLL_INTERVAL_MS / 1000,
            notify_channel=settings.CLIENT_WEBHOOKS_NOTIFY_CHANNEL if settings.CLIENT_WEBHOOKS_NOTIFY else None,
        ),
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m notifier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="deliver client webhooks until SIGTERM")
    bootstrap.add_http_options(run, env="NOTIFIER")
    run.set_defaults(func=command_run)
    return parser


def main(argv=None) -> int:
    return bootstrap.main(parser, argv, settings_module="notifier.settings")


if __name__ == "__main__":
    sys.exit(main())
