"""The read side's processes and ops commands.

    python -m query_api project              apply events to the read table until SIGTERM
    python -m query_api rebuild [--yes]      rebuild the read table from the write side's records
    python -m query_api reconcile [--repair] report (and mend) emails whose read row is missing or behind,
                                             and emails stuck unfinished (their lost requests sent again)

The query API itself is a WSGI app: gunicorn query_api.wsgi (or manage.py runserver with
DJANGO_SETTINGS_MODULE=query_api.settings).
"""

import argparse
import sys

from core import bootstrap, cli


def command_project(args) -> int:
    from django.conf import settings

    from core.broker import topology_from_settings
    from query_api.projector import ProjectorWorker

    return bootstrap.run_worker(
        args,
        lambda health: ProjectorWorker(
            broker_url=settings.RABBITMQ_URL,
            topology=topology_from_settings(),
            database=settings.DATABASES["default"],
            health=health,
            batch_size=settings.PROJECTOR_BATCH_SIZE,
            batch_wait=settings.PROJECTOR_BATCH_WAIT_MS / 1000,
            stuck_after=settings.EMAIL_STUCK_AFTER_SECONDS,
            webhooks_channel=settings.CLIENT_WEBHOOKS_NOTIFY_CHANNEL if settings.CLIENT_WEBHOOKS_NOTIFY else None,
        ),
    )


def command_rebuild(args) -> int:
    from tqdm import tqdm

    from query_api.rebuild import read_model_rebuild

    with tqdm(unit="email", desc="rebuild", file=sys.stderr) as bar:

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        result = read_model_rebuild(progress=progress)
    print(
        f"rebuilt the read table: {result.emails} emails, {result.caught_up} caught up during the swap, "
        f"in {result.seconds:.1f}s"
    )
    return 0


def command_reconcile(args) -> int:
    import json

    from query_api.rebuild import read_model_reconcile

    report = read_model_reconcile(repair=args.repair, limit=args.limit)
    print(
        json.dumps(
            {
                "missing": len(report.missing),
                "behind": len(report.behind),
                "repaired": report.repaired,
                "stuck": len(report.stuck),
                "rearmed": len(report.rearmed),
                "examples": (report.missing + report.behind)[:20],
                "stuck_examples": report.stuck[:20],
            }
        )
    )
    return 0 if args.repair or not (report.missing or report.behind or report.stuck) else 1


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m query_api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    project = verbs.add_parser("project", help="apply events to the read table until SIGTERM")
    bootstrap.add_http_options(project, env="PROJECTOR")
    project.set_defaults(func=command_project)
    rebuild = verbs.add_parser("rebuild", help="rebuild the read table from the write side")
    rebuild.set_defaults(func=command_rebuild)
    reconcile = verbs.add_parser("reconcile", help="find (and mend) read rows missing or behind")
    reconcile.add_argument("--repair", action="store_true")
    reconcile.add_argument(
        "--limit", type=cli.integer(1, 10_000_000), default=10_000, help="at most this many emails per run"
    )
    reconcile.set_defaults(func=command_reconcile)
    return parser


def main(argv=None) -> int:
    return bootstrap.main(parser, argv, settings_module="query_api.settings")


if __name__ == "__main__":
    sys.exit(main())
