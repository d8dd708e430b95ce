"""The read side's processes and ops commands.

    python -m query_api project              apply events to the read table until SIGTERM
    python -m query_api rebuild [--yes]      rebuild the read table from the write side's records
    python -m query_api reconcile [--repair] report (and mend) emails whose read row is missing or behind,
                                             and emails stuck unfinished (their lost requests sent again)

The query API itself is a WSGI app: gunicorn query_api.wsgi (or manage.py runserver with
DJANGO_SETTINGS_MODULE=query_api.settings).
"""

import argparse
import os
import sys

from core import cli


def command_project(args) -> int:
    from django.conf import settings

    from core.broker import topology_from_settings
    from core.worker_http import Health, serve
    from query_api.projector import ProjectorWorker

    health = Health()
    if args.http_port:
        serve(health, host=args.http_host, port=args.http_port)
    worker = ProjectorWorker(broker_url=settings.RABBITMQ_URL, topology=topology_from_settings(),
                             database=settings.DATABASES["default"], health=health,
                             batch_size=settings.PROJECTOR_BATCH_SIZE,
                             batch_wait=settings.PROJECTOR_BATCH_WAIT_MS / 1000,
                             stuck_after=settings.EMAIL_STUCK_AFTER_SECONDS)
    worker.install_signal_handlers()
    return worker.run()


def command_rebuild(args) -> int:
    from tqdm import tqdm

    from query_api.rebuild import read_model_rebuild

    with tqdm(unit="email", desc="rebuild", file=sys.stderr) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        result = read_model_rebuild(progress=progress)
    print(f"rebuilt the read table: {result.emails} emails, {result.caught_up} caught up during the swap, "
          f"in {result.seconds:.1f}s")
    return 0


def command_reconcile(args) -> int:
    import json

    from query_api.rebuild import read_model_reconcile

    report = read_model_reconcile(repair=args.repair, limit=args.limit)
    print(json.dumps({"missing": len(report.missing), "behind": len(report.behind), "repaired": report.repaired,
                      "stuck": len(report.stuck), "rearmed": len(report.rearmed),
                      "examples": (report.missing + report.behind)[:20], "stuck_examples": report.stuck[:20]}))
    return 0 if args.repair or not (report.missing or report.behind or report.stuck) else 1


def main(argv=None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "query_api.settings")
    parser = argparse.ArgumentParser(prog="python -m query_api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    project = verbs.add_parser("project", help="apply events to the read table until SIGTERM")
    project.add_argument("--http-host", default=os.environ.get("PROJECTOR_HTTP_HOST", "0.0.0.0"))
    project.add_argument("--http-port", type=cli.port, default=None,
                         help="probes and /metrics (default PROJECTOR_HTTP_PORT)")
    project.set_defaults(func=command_project)
    rebuild = verbs.add_parser("rebuild", help="rebuild the read table from the write side")
    rebuild.set_defaults(func=command_rebuild)
    reconcile = verbs.add_parser("reconcile", help="find (and mend) read rows missing or behind")
    reconcile.add_argument("--repair", action="store_true")
    reconcile.add_argument("--limit", type=cli.integer(1, 10_000_000), default=10_000,
                           help="at most this many emails per run")
    reconcile.set_defaults(func=command_reconcile)
    args = parser.parse_args(argv)
    import django

    django.setup()
    if args.verb == "project" and args.http_port is None:
        from django.conf import settings

        args.http_port = settings.PROJECTOR_HTTP_PORT
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
