"""The POST endpoints compared in one process, interleaved, with a precise clock: the real
`sent-email`, the synchronous-publish variant and the bare inserts of bench/variants_app.py.

    .venv/bin/python bench/post_inprocess.py [--requests 500] [--profile real|sync|bare]

wrk through gunicorn measures what a client sees, but on this machine consecutive runs drift by
more than the differences between the endpoints. Here each iteration calls the three endpoints
one after the other through Django's test client (the whole middleware and DRF stack, the real
Postgres and RabbitMQ, no HTTP parsing), so drift hits all three alike. Prints the median wall
and CPU time per request of each, and the statements each runs. With --profile, a cProfile of
one endpoint (cumulative time, top 40). Run it by hand.
"""

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time

from common import ROOT, setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="iterations (each calls all three endpoints)")
    parser.add_argument("--profile", choices=("real", "sync", "bare"))
    parser.add_argument("--database", default="emails_bench_inprocess")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    setup_django(
        database=args.database, settings_module="variants_settings", prefix="bench-inprocess", SEND_RATE_LIMIT="off"
    )

    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import include, path
    from knox.models import AuthToken

    import variants_app
    from command_api.emails.models import EmailTemplate
    from core.accounts.models import User
    from core.broker import Topology
    from tests.broker import declare

    declare(Topology(prefix="bench-inprocess"))
    settings.ALLOWED_HOSTS = ["*"]
    variants_app.urlpatterns.append(path("real/", include("command_api.urls")))
    user, _ = User.objects.get_or_create(email="inprocess@example.com", defaults={"username": "inprocess"})
    _, token = AuthToken.objects.create(user)
    template, _ = EmailTemplate.objects.get_or_create(
        name="inprocess", defaults={"subject": "Hi {{ name }}", "body": "<p>Hi {{ name }}</p>"}
    )
    body = json.dumps(
        {"recipients": ["ann@example.com", "bob@example.org"], "template": template.pk, "context": {"name": "Ann"}}
    )
    client = Client()
    endpoints = {
        "real": ("/real/api/v1/emails/sent-email/", True),
        "sync": ("/sync-publish/", True),
        "bare": ("/bare/", False),
    }

    def post(name: str) -> None:
        url, authenticated = endpoints[name]
        headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if authenticated else {}
        response = client.post(url, body, content_type="application/json", **headers)
        if response.status_code != 202:
            raise SystemExit(f"{name}: {response.status_code} {response.content[:300]!r}")

    statements = {}
    for name in endpoints:
        for _ in range(20):  # warm: connections, caches, compiled templates
            post(name)
        with CaptureQueriesContext(connection) as queries:
            post(name)
        statements[name] = [q["sql"].split()[0] for q in queries.captured_queries]

    wall = {name: [] for name in endpoints}
    cpu = {name: [] for name in endpoints}
    for _ in range(args.requests):
        for name in endpoints:
            started, started_cpu = time.perf_counter(), time.process_time()
            post(name)
            wall[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - started_cpu) * 1000)

    print(
        f"\n{args.requests} interleaved iterations, median per request (this process's CPU; Postgres and "
        "RabbitMQ work shows in wall time only):"
    )
    for name in endpoints:
        print(
            f"  {name:5} wall {statistics.median(wall[name]):6.3f} ms  cpu {statistics.median(cpu[name]):6.3f} ms  "
            f"statements: {', '.join(statements[name])}"
        )
    real, sync, bare = (statistics.median(wall[name]) for name in endpoints)
    print(
        f"SUMMARY real_vs_sync={sync / real:.0%} real_vs_bare={bare / real:.0%} "
        "(requests/s of the real endpoint as a share of the other's, from wall time)"
    )

    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(300):
            post(args.profile)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
