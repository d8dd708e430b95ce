"""How every process's `python -m <service>` starts.

`main` gives DJANGO_SETTINGS_MODULE the process's default, parses the command line, sets Django up
and runs the verb, returning its exit code. A worker's long-running verb takes `add_http_options`
and calls `run_worker`: the probes and /metrics server (core.worker_http), the SIGTERM/SIGINT
handlers, the worker's loop (core.workers.ReconnectingWorker) and its exit code.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from core import cli


def add_http_options(parser: argparse.ArgumentParser, *, env: str, port_note: str = "") -> None:
    """--http-host (default $<env>_HTTP_HOST, else every interface) and --http-port (default the
    setting <env>_HTTP_PORT, read once Django is set up; 0: no server)."""
    parser.add_argument("--http-host", default=os.environ.get(f"{env}_HTTP_HOST", "0.0.0.0"))
    parser.add_argument(
        "--http-port", type=cli.port, default=None, help=f"probes and /metrics (default {env}_HTTP_PORT{port_note})"
    )
    parser.set_defaults(http_port_setting=f"{env}_HTTP_PORT")


def main(parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None, *, settings_module: str) -> int:
    """Run the verb that `argv` (else sys.argv) names, with Django set up on DJANGO_SETTINGS_MODULE,
    `settings_module` unless the environment names one. Returns the verb's exit code."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    args = parser().parse_args(argv)
    import django

    django.setup()
    if getattr(args, "http_port_setting", None) and args.http_port is None:
        from django.conf import settings

        args.http_port = getattr(settings, args.http_port_setting)
    return args.func(args)


def run_worker(args: argparse.Namespace, worker: Callable) -> int:
    """Serve the probes and /metrics on the options of `add_http_options`, build the worker with
    `worker(health)`, stop it on SIGTERM/SIGINT and run it. /readyz answers 503 while a migration
    of the process's apps is unapplied. Returns its exit code (0 once stopped)."""
    from core.schema import migrations_applied
    from core.worker_http import Health, serve

    health = Health(checks={"migrations": migrations_applied})
    if args.http_port:
        serve(health, host=args.http_host, port=args.http_port)
    running = worker(health)
    running.install_signal_handlers()
    return running.run()
