"""Benchmark: the query API over a million emails, and the projector on a backlog.

    .venv/bin/python bench/query.py [--rows 1000000] [--events 50000] [--duration 10]

1. Fills the read table with --rows emails (3 recipients each, 1,000 users, a year of time),
   prints the plan of each filter, then measures GET api/v1/emails/sent-email/ under gunicorn
   (2 workers) with wrk for: no filter, one recipient, three recipients, a time range; a page of
   50 each: requests/s, p50 and p99.
2. Publishes --events events (email.requested then email.sent for half as many emails) to the
   projector's queue, starts one projector and times it until all are applied: events/s.
Needs wrk (apt-get install wrk). Run it by hand.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

from common import ROOT, parse_wrk, setup_django, wait_http  # noqa: E402

PREFIX = "bench-query"


def fill(rows: int, owner_base: int) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE read_sent_email, read_sent_email_event, read_processed_event")
        step = 200_000
        for start in range(0, rows, step):
            cursor.execute(
                """
                INSERT INTO read_sent_email (id, owner_id, from_email, template_id, template_name, subject, created,
                                             recipients, recipient_status, status, last_event_at)
                SELECT g, %(base)s + g %% 1000, 'no-reply@example.com', 1 + g %% 20, 't' || (1 + g %% 20),
                       'Subject ' || g, now() - (g * interval '30 seconds'),
                       ARRAY['u' || g %% 1000 || '-' || (g / 1000) %% 300 || '@example.com',
                             'x' || g || '@example.org', 'y' || g %% 7919 || '@example.net'],
                       jsonb_build_object('x' || g || '@example.org',
                                          jsonb_build_object('status', 'sent', 'at', now())),
                       (ARRAY['queued','sending','sent','delivered','failed'])[1 + g %% 5],
                       now() - (g * interval '30 seconds')
                  FROM generate_series(%(lo)s, %(hi)s) AS g
                """,
                {"base": owner_base, "lo": start + 1, "hi": min(rows, start + step)},
            )
            print(f"  filled {min(rows, start + step):,} rows", flush=True)
    # What autovacuum would do after such a load: statistics, and the GIN index's pending list
    # merged (a fresh bulk load leaves it long, which slows every recipient query).
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) read_sent_email")
    print(f"filled {rows:,} rows in {time.perf_counter() - started:.0f}s")


QUERIES = {
    "no filter": "",
    "one recipient": "?recipient=u0-7@example.com",
    "three recipients": "?recipient=u0-7@example.com&recipient=u0-150@example.com&recipient=u0-299@example.com",
    "time range": "?start_time=2026-06-01&end_time=2026-06-30",
}


def explain(owner: int) -> None:
    from django.db import connection

    from query_api.apis import _parse_bound
    from query_api.selectors import sent_email_log_list

    for name, recipients, start, end in [
        ("no filter", [], None, None),
        ("one recipient", ["u0-7@example.com"], None, None),
        (
            "time range",
            [],
            _parse_bound("start_time", "2026-06-01", end=False),
            _parse_bound("end_time", "2026-06-30", end=True),
        ),
    ]:
        queryset = sent_email_log_list(owner_id=owner, recipients=recipients, start=start, end=end)[:51]
        sql, params = queryset.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql, params)
            plan = " | ".join(line[0].strip() for line in cursor.fetchall()[:4])
        print(f"  plan, {name}: {plan}")


def wrk(url: str, token: str, duration: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.headers["Authorization"] = "Token {token}"\n')
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = parse_wrk(out)
    return {"rps": result["rps"], "p50": result["p50"], "p99": result["p99"], "errors": result["non_2xx"]}


def projector_run(events: int) -> float:
    import pika
    from django.db import connection

    from core.broker import topology_from_settings
    from core.contracts import EmailRequested, EmailSent
    from tests.broker import blocking_connection, declare, purge

    topology = topology_from_settings()
    declare(topology)
    purge(topology)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE read_sent_email, read_sent_email_event, read_processed_event")
    conn = blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    now = datetime.now(UTC)
    emails = events // 2
    for i in range(emails):
        at = (now + timedelta(milliseconds=i)).isoformat()
        request = EmailRequested(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=at,
            email_id=i + 1,
            owner_id=1,
            template_id=1,
            from_email="f@example.com",
            reply_to=None,
            recipients=(f"a{i}@example.com", f"b{i}@example.com", f"c{i}@example.com"),
            subject="Hi",
            body_html="",
            template_name="t",
        )
        sent = EmailSent(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=at,
            email_id=i + 1,
            request_event_id=request.event_id,
            recipients=request.recipients,
            provider="sendgrid",
            provider_message_id=f"m{i}",
            attempt=1,
        )
        for event in (request, sent):
            channel.basic_publish(
                topology.exchange,
                event.TYPE,
                json.dumps(event.to_dict()).encode(),
                pika.BasicProperties(message_id=event.event_id, delivery_mode=2),
            )
    conn.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "query_api", "project", "--http-host", "127.0.0.1", "--http-port", "9313"],
        cwd=ROOT,
        env=os.environ | {"LOG_JSON": "true"},
    )
    started = time.perf_counter()
    try:
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM read_processed_event")
                if cursor.fetchone()[0] >= emails * 2:
                    break
            if process.poll() is not None:
                raise SystemExit("the projector died")
            time.sleep(0.1)
        return emails * 2 / (time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--database", default="emails_bench_query")
    args = parser.parse_args()
    setup_django(
        database=args.database, settings_module="query_api.settings", prefix=PREFIX, POSTGRES_CONN_MAX_AGE="600"
    )
    from knox.models import AuthToken

    from core.accounts.models import User

    user, _ = User.objects.get_or_create(email="reader@example.com", defaults={"username": "reader"})
    _, token = AuthToken.objects.create(user=user)
    fill(args.rows, owner_base=user.pk)
    explain(user.pk)

    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "query_api.wsgi:application", "--workers", "2", "--bind", "127.0.0.1:8012"],
        cwd=ROOT,
        env=os.environ | {"LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = {}
    try:
        base = "http://127.0.0.1:8012/api/v1/emails/sent-email/"
        wait_http("http://127.0.0.1:8012/healthz")
        for name, query in QUERIES.items():
            check = urllib.request.Request(base + query, headers={"Authorization": f"Token {token}"})
            count = len(json.loads(urllib.request.urlopen(check).read())["results"])
            results[name] = wrk(base + query, token, args.duration) | {"page": count}
            r = results[name]
            print(
                f"  {name:17} {r['rps']:6.0f} req/s  p50 {r['p50']:5.1f} ms  p99 {r['p99']:5.1f} ms  "
                f"({r['page']} rows in the page, {r['errors']} non-2xx)"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    rate = projector_run(args.events)
    print(f"projector: {rate:,.0f} events/s applying a backlog of {args.events:,} events")
    print(
        "SUMMARY "
        + " ".join(f"{k.replace(' ', '_')}_p99_ms={v['p99']:.1f}" for k, v in results.items())
        + f" projector_events_s={rate:.0f}"
    )


if __name__ == "__main__":
    main()
