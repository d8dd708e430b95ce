"""Benchmark: the query API over millions of emails, one tenant owning half of them, and the
projector on a backlog at that size.

    .venv/bin/python bench/query.py [--rows 10000000] [--events 50000] [--duration 10] [--keep]

1. Fills the read table with --rows emails (3 recipients each, a year of time), half of them the
   reader's (the big tenant), the rest spread over 1,000 other users; prints the plan and the
   execution time of each filter, then measures GET api/v1/emails/sent-email/ under gunicorn
   (2 workers) with wrk (2 connections, one per worker) for each filter and combination (a page of
   50): requests/s, p50, p99.
   The reader's emails: 85% delivered, 10% sent, 3% failed, 1% partially failed, 1% queued; 20
   templates; recipients drawn from 100,000 customers (about 50 emails each), one address unique
   to the email, and one of 7,919 shared addresses (about 630 each). --keep reuses a table
   already filled with as many rows.
2. Publishes --events events (email.requested then email.sent for half as many new emails of
   the reader) to the projector's queue, packed 20 to a message as the relay packs them, starts
   one projector and times it until all are applied, on top of the full table: events/s.
Needs wrk (apt-get install wrk). Run it by hand; it needs its own database, created and migrated.
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
STEP = 250_000


def fill(rows: int, reader: int) -> None:
    """Rows 1..rows; even ids are the reader's, odd ones belong to 1,000 other owners (ids far
    above any real user's). Newest first by id: row g was created g * 3 s before now."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE read_sent_email, read_sent_email_event, read_processed_event")
        for lo in range(1, rows + 1, STEP):
            hi = min(rows, lo + STEP - 1)
            cursor.execute(
                """
                INSERT INTO read_sent_email (id, owner_id, from_email, template_id, template_name, subject, created,
                                             recipients, recipient_status, status, last_event_at, status_seq)
                SELECT g, CASE WHEN g %% 2 = 0 THEN %(reader)s ELSE 1000000 + g %% 1000 END, 'no-reply@example.com',
                       1 + (g / 2) %% 20, 't' || (1 + (g / 2) %% 20), 'Subject ' || g, created,
                       ARRAY['c' || (g / 2) %% 100000 || '@example.com', 'x' || g || '@example.org',
                             'y' || g %% 7919 || '@example.net'],
                       jsonb_build_object('x' || g || '@example.org',
                                          jsonb_build_object('status', status, 'at', created)),
                       status, created, 3
                  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g,
                       LATERAL (SELECT now() - g * interval '3 seconds' AS created,
                                       CASE WHEN (g / 2) %% 100 < 85 THEN 'delivered'
                                            WHEN (g / 2) %% 100 < 95 THEN 'sent'
                                            WHEN (g / 2) %% 100 < 98 THEN 'failed'
                                            WHEN (g / 2) %% 100 < 99 THEN 'partially_failed'
                                            ELSE 'queued' END AS status) AS row
                """,
                {"reader": reader, "lo": lo, "hi": hi},
            )
            elapsed = time.perf_counter() - started
            print(f"  filled {hi:,} of {rows:,} rows, {elapsed:.0f}s, {hi / elapsed:,.0f} rows/s", flush=True)
    # What autovacuum would do after such a load: statistics, and the GIN index's pending list
    # merged (a fresh bulk load leaves it long, which slows every recipient query).
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) read_sent_email")
    print(f"filled {rows:,} rows in {time.perf_counter() - started:.0f}s (indexes and VACUUM ANALYZE included)")


def _month() -> tuple[str, str]:
    """A calendar month half a year back: well inside the data."""
    day = (datetime.now(UTC) - timedelta(days=180)).date().replace(day=1)
    following = (day + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return day.isoformat(), following.isoformat()


START, END = _month()
ONE = "c4242@example.com"  # about 50 of the reader's emails
THREE = ("c4242@example.com", "c777@example.com", "c99999@example.com")
SHARED = "y42@example.net"  # about 630 of the reader's emails (and as many of the others')
QUERIES = {
    "no filter": {},
    "one recipient": {"recipient": [ONE]},
    "three recipients": {"recipient": list(THREE)},
    "a shared recipient": {"recipient": [SHARED]},
    "a month": {"start_time": [START], "end_time": [END]},
    "status failed": {"status": ["failed"]},
    "status queued or failed": {"status": ["queued", "failed"]},
    "template": {"template": ["7"]},
    "month + status failed": {"start_time": [START], "end_time": [END], "status": ["failed"]},
    "template + status failed": {"template": ["7"], "status": ["failed"]},  # none: template 7 never fails
    "status cancelled or suppressed": {"status": ["cancelled", "suppressed"]},  # none of the reader's
    "a template never used": {"template": ["999"]},
    "month + template": {"start_time": [START], "end_time": [END], "template": ["7"]},
    "recipient + status failed": {"recipient": [SHARED], "status": ["failed"]},
    "recipient + month": {"recipient": [SHARED], "start_time": [START], "end_time": [END]},
    "everything": {
        "recipient": [SHARED],
        "start_time": [START],
        "end_time": [END],
        "status": ["delivered"],
        "template": ["7"],
    },
}


def query_string(params: dict) -> str:
    return "?" + "&".join(f"{k}={v}" for k, values in params.items() for v in values) if params else ""


def explain(owner: int) -> None:
    from django.db import connection

    from query_api.apis import _parse_bound
    from query_api.selectors import sent_email_log_list

    for name, params in QUERIES.items():
        queryset = sent_email_log_list(
            owner_id=owner,
            recipients=params.get("recipient", []),
            start=_parse_bound("start_time", params["start_time"][0], end=False) if "start_time" in params else None,
            end=_parse_bound("end_time", params["end_time"][0], end=True) if "end_time" in params else None,
            statuses=params.get("status", []),
            template_ids=[int(t) for t in params.get("template", [])],
        )[:51]
        sql, values = queryset.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, values)
            lines = [line[0].strip() for line in cursor.fetchall()]
        took = next((line for line in lines if line.startswith("Execution Time")), "")
        print(f"  plan, {name}: {' | '.join(lines[:3])} ... {took}")


def wrk(url: str, token: str, duration: int, connections: int = 2) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.headers["Authorization"] = "Token {token}"\n')
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = parse_wrk(out)
    return {"rps": result["rps"], "p50": result["p50"], "p99": result["p99"], "errors": result["non_2xx"]}


# Events per packed message: about what the relay claims a batch under load (12 to 25 rows).
PACKED_EVENTS = 20


def projector_run(events: int, *, reader: int, first_id: int) -> float:
    import pika
    from django.db import connection

    from core.broker import EVENTS_BATCH, topology_from_settings
    from core.contracts import EmailRequested, EmailSent
    from tests.broker import blocking_connection, declare, purge

    topology = topology_from_settings()
    declare(topology)
    purge(topology)
    with connection.cursor() as cursor:  # the filled rows stay: the projector works at full size
        cursor.execute("DELETE FROM read_sent_email WHERE id >= %s", [first_id])
        cursor.execute("TRUNCATE read_sent_email_event, read_processed_event")
    conn = blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    now = datetime.now(UTC)
    emails = events // 2
    packed: list[dict] = []
    for i in range(emails):
        at = (now + timedelta(milliseconds=i)).isoformat()
        request = EmailRequested(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=at,
            email_id=first_id + i,
            owner_id=reader,
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
            email_id=first_id + i,
            request_event_id=request.event_id,
            recipients=request.recipients,
            provider="sendgrid",
            provider_message_id=f"m{i}",
            attempt=1,
        )
        packed += [request.to_dict(), sent.to_dict()]
        if len(packed) >= PACKED_EVENTS or i == emails - 1:
            # As the relay publishes them: packed, one message per batch it claims.
            channel.basic_publish(
                topology.exchange,
                EVENTS_BATCH,
                json.dumps(packed).encode(),
                pika.BasicProperties(message_id=str(uuid.uuid4()), type=EVENTS_BATCH, delivery_mode=2),
                mandatory=True,
            )
            packed = []
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
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--connections", type=int, default=2, help="wrk's: 2 is one per gunicorn worker, so no request queues for one"
    )
    parser.add_argument("--database", default="emails_bench_query")
    parser.add_argument("--keep", action="store_true", help="reuse the rows of an earlier fill of the same size")
    args = parser.parse_args()
    setup_django(
        database=args.database, settings_module="query_api.settings", prefix=PREFIX, POSTGRES_CONN_MAX_AGE="600"
    )
    from knox.models import AuthToken

    from core.accounts.models import User

    user, _ = User.objects.get_or_create(email="reader@example.com", defaults={"username": "reader"})
    _, token = AuthToken.objects.create(user=user)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM read_sent_email WHERE id <= %s", [args.rows])
        filled = cursor.fetchone()[0] == args.rows
        if args.keep and filled:
            cursor.execute(
                "UPDATE read_sent_email SET owner_id = %s WHERE id %% 2 = 0 AND owner_id <> %s", [user.pk] * 2
            )
            cursor.execute("ANALYZE read_sent_email")
    if not (args.keep and filled):
        fill(args.rows, reader=user.pk)
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
        wrk(base, token, 3)  # warm up: the workers' connections, caches and statements
        for name, params in QUERIES.items():
            query = query_string(params)
            check = urllib.request.Request(base + query, headers={"Authorization": f"Token {token}"})
            count = len(json.loads(urllib.request.urlopen(check).read())["results"])
            results[name] = wrk(base + query, token, args.duration, args.connections) | {"page": count}
            r = results[name]
            print(
                f"  {name:26} {r['rps']:6.0f} req/s  p50 {r['p50']:5.1f} ms  p99 {r['p99']:5.1f} ms  "
                f"({r['page']} rows in the page, {r['errors']} non-2xx)"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    rate = projector_run(args.events, reader=user.pk, first_id=args.rows + 1)
    print(f"projector: {rate:,.0f} events/s applying a backlog of {args.events:,} events, on {args.rows:,} rows")
    print(
        "SUMMARY "
        + " ".join(f"{k.replace(' ', '_').replace('+', 'and')}_p99_ms={v['p99']:.1f}" for k, v in results.items())
        + f" worst_p99_ms={max(v['p99'] for v in results.values()):.1f}"
        + f" projector_events_s={rate:.0f}"
    )


if __name__ == "__main__":
    main()
