"""Benchmark: POST api/v1/emails/sent-email/ with 2 recipients under gunicorn.

Starts the command API under gunicorn (2 sync workers, persistent database connections,
production settings, INFO logs written to a file) on its own database, then drives it with wrk
(closed loop, keep-alive) and prints throughput and p50/p99 latency, and checks that every
request wrote its email and its outbox row.

    .venv/bin/python bench/send_email.py [--connections 4] [--duration 20] [--workers 2]

Needs wrk (Debian: apt-get install wrk). Run it by hand; it is not part of the test suite.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys

from common import ROOT, wait_http, wrk_post  # noqa: E402

PYTHON = sys.executable


def bench_env(args) -> dict:
    return os.environ | {
        "POSTGRES_DB": args.database,
        "DJANGO_SETTINGS_MODULE": "command_api.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "benchmark-only",
        "SEND_RATE_LIMIT": "off",
        "LOG_JSON": "true",
        "LOG_LEVEL": "INFO",
        "POSTGRES_CONN_MAX_AGE": "600",
    }


def prepare(env: dict) -> tuple[str, int]:
    """Create and migrate the benchmark database, empty it; return a token and a template id."""
    subprocess.run([PYTHON, "-m", "core.db_bootstrap"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env | {"DJANGO_SETTINGS_MODULE": "deployment.settings"},
        check=True,
    )
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from knox.models import AuthToken

    from command_api.emails.models import EmailTemplate
    from core.accounts.models import User

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox, emails_sentemailrecipient, emails_sentemail, knox_authtoken")
    user, _ = User.objects.get_or_create(email="bench@example.com", defaults={"username": "bench"})
    template, _ = EmailTemplate.objects.get_or_create(
        name="bench", defaults={"subject": "Hello {{ name }}", "body": "<p>Dear {{ name }}, code {{ code }}.</p>"}
    )
    _, token = AuthToken.objects.create(user=user)
    connection.close()
    return token, template.pk


def counts(env: dict) -> tuple[int, int]:
    out = subprocess.run(
        [
            "psql",
            "-h",
            os.environ.get("POSTGRES_HOST", "127.0.0.1"),
            "-U",
            os.environ.get("POSTGRES_USER", "postgres"),
            "-d",
            env["POSTGRES_DB"],
            "-Atc",
            "SELECT (SELECT count(*) FROM emails_sentemail), (SELECT count(*) FROM outbox)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    emails, outbox = out.split("|")
    return int(emails), int(outbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=int, default=20, help="seconds of measured load")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--database", default="emails_bench")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")

    env = bench_env(args)
    token, template_id = prepare(env)
    logs = ROOT / "var" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "command_api.log", "w") as log_file:
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "command_api.wsgi:application",
                "--workers",
                str(args.workers),
                "--bind",
                f"127.0.0.1:{args.port}",
                "--backlog",
                "2048",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{args.port}"
            wait_http(f"{base}/readyz", 30)
            url = f"{base}/api/v1/emails/sent-email/"
            body = {
                "recipients": ["ann@example.com", "bob@example.org"],
                "template": template_id,
                "context": {"name": "Ann", "code": 1234},
            }
            wrk_post(url, body, token=token, connections=args.connections, duration=3)  # warm-up
            before = counts(env)
            result, output = wrk_post(url, body, token=token, connections=args.connections, duration=args.duration)
            after = counts(env)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    written = after[0] - before[0], after[1] - before[1]
    print(output)
    print(
        f"POST sent-email (2 recipients), gunicorn {args.workers} sync workers, {args.connections} connections, "
        f"{args.duration}s: {result['rps']:.0f} requests/s, p50 {result['p50']:.1f} ms, "
        f"p90 {result['p90']:.1f} ms, p99 {result['p99']:.1f} ms; "
        f"non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}; "
        f"written: {written[0]} emails, {written[1]} outbox rows for {result['requests']} completed requests "
        "(requests in flight when wrk stopped are written too)"
    )


if __name__ == "__main__":
    main()
