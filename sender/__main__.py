"""The sender worker: `python -m sender run`.

Consumes email.requested, delivers through SendGrid (SENDGRID_HOST and SENDGRID_API_KEY; locally
the fake, `python -m sender.fake_sendgrid`), records each outcome with its status event.
Port SENDER_HTTP_PORT (9102) serves /healthz, /readyz and /metrics.
"""

import argparse
import sys

from core import bootstrap


def command_run(args) -> int:
    from django.conf import settings

    from core.broker import topology_from_settings
    from core.deliveries.store import DeliveryStore
    from sender.consumer import SenderWorker, SenderWorkerConfig
    from sender.handlers import Policy
    from sender.provider import SendGridProvider

    if not settings.SENDGRID_API_KEY:
        print(
            "SENDGRID_API_KEY is not set: the sender cannot send. Locally, bin/run starts the fake SendGrid "
            "and sets it for you.",
            file=sys.stderr,
        )
        return 2
    return bootstrap.run_worker(
        args,
        lambda health: SenderWorker(
            config=SenderWorkerConfig(
                broker_url=settings.RABBITMQ_URL,
                prefetch=settings.SENDER_PREFETCH,
                concurrency=settings.SENDER_CONCURRENCY,
                key_probe_seconds=settings.SENDER_KEY_PROBE_SECONDS,
                shutdown_grace_seconds=settings.SENDER_SHUTDOWN_GRACE_SECONDS,
            ),
            topology=topology_from_settings(),
            provider=SendGridProvider(
                api_key=settings.SENDGRID_API_KEY,
                host=settings.SENDGRID_HOST,
                timeout=settings.SENDGRID_TIMEOUT_SECONDS,
            ),
            store=DeliveryStore(
                settings.DATABASES["default"],
                pool_size=settings.SENDER_DB_POOL_SIZE,
                notify_channel=settings.OUTBOX_NOTIFY_CHANNEL if settings.OUTBOX_NOTIFY else None,
                linger_ms=settings.SENDER_BATCH_LINGER_MS,
            ),
            policy=Policy(
                schedule=settings.SENDER_RETRY_SCHEDULE,
                lease_seconds=settings.SENDER_LEASE_SECONDS,
                resend_in_doubt=settings.SENDER_UNKNOWN_OUTCOME == "retry",
                in_doubt_grace=settings.SENDER_IN_DOUBT_GRACE_SECONDS,
            ),
            health=health,
        ),
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sender", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="consume email.requested and deliver until SIGTERM")
    bootstrap.add_http_options(run, env="SENDER")
    run.set_defaults(func=command_run)
    return parser


def main(argv=None) -> int:
    return bootstrap.main(parser, argv, settings_module="sender.settings")


if __name__ == "__main__":
    sys.exit(main())
