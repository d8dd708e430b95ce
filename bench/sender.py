"""Benchmark: one sender process against the fake SendGrid with added latency.

    .venv/bin/python bench/sender.py [--latency-ms 100] [--single 6000] [--bulk 200] [--concurrency 500]
    .venv/bin/python bench/sender.py --cpu 1 --latency-ms 250     # one sender held to one CPU

Two runs, each with the sender queue filled first and one sender process started on it:
  1. --single emails with one recipient each: emails/s;
  2. --bulk emails with 100 recipients each: recipients/s.
It prints the rate from the sender's start to the last delivery recorded, and the sender's CPU
time per email (from /proc). The fake runs as a process of its own. Run it by hand.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, setup_django, wait_http  # noqa: E402

PREFIX = "bench-sender"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_queue(topology, emails: int, recipients: int) -> None:
    import pika

    from core.contracts import EmailRequested
    from tests.broker import blocking_connection

    conn = blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    now = datetime.now(UTC).isoformat()
    for i in range(emails):
        event = EmailRequested(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=now,
            email_id=i,
            owner_id=1,
            template_id=1,
            from_email="no-reply@example.com",
            reply_to=None,
            recipients=tuple(f"r{i}-{n}@example.com" for n in range(recipients)),
            subject="Hello",
            body_html="<p>" + "x" * 500 + "</p>",
        )
        channel.basic_publish(
            topology.exchange,
            "email.requested",
            json.dumps(event.to_dict()).encode(),
            pika.BasicProperties(message_id=event.event_id, delivery_mode=2),
        )
    conn.close()


def sent_recipients() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM sender_delivery WHERE state = 'sent'")
        return cursor.fetchone()[0]


def fake_calls(fake_url: str) -> int:
    return json.loads(urllib.request.urlopen(f"{fake_url}/_stats").read()).get("messages", 0)


def run(topology, *, emails: int, recipients: int, fake_url: str, args) -> tuple[float, float, float]:
    from django.db import connection

    calls_before = fake_calls(fake_url)
    from tests.broker import purge

    purge(topology)  # leftovers of an interrupted run would be sent again
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE sender_delivery, sender_provider_pause, outbox CASCADE")
    fill_queue(topology, emails, recipients)
    env = os.environ | {
        "SENDGRID_HOST": fake_url,
        "SENDGRID_API_KEY": "SG.fake-key",
        "SENDER_CONCURRENCY": str(args.concurrency),
        "SENDER_PREFETCH": str(args.prefetch),
        "SENDER_DB_POOL_SIZE": str(args.pool),
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "true",
    }
    if not args.prepared_statements:
        env["POSTGRES_PREPARED_STATEMENTS"] = "false"  # as behind PgBouncer
    pinned = ["taskset", "-c", str(args.cpu)] if args.cpu is not None else []
    sender = subprocess.Popen(
        [*pinned, sys.executable, "-m", "sender", "run", "--http-host", "127.0.0.1", "--http-port", "9312"],
        cwd=ROOT,
        env=env,
    )
    wait_http("http://127.0.0.1:9312/readyz")
    started, cpu_before = time.perf_counter(), cpu_seconds(sender.pid)
    total = emails * recipients
    samples: list[tuple[float, int]] = []
    while not samples or samples[-1][1] < total:
        if sender.poll() is not None:
            raise SystemExit("the sender died")
        time.sleep(0.05)
        samples.append((time.perf_counter(), sent_recipients()))
    elapsed = time.perf_counter() - started
    # The sustained rate: over the middle half of the deliveries, without the start (threads and
    # connections being made) and the end (the last calls finishing).
    first = next((t, n) for t, n in samples if n >= total // 4)
    last = next((t, n) for t, n in samples if n >= total * 3 // 4)
    sustained = (last[1] - first[1]) / recipients / (last[0] - first[0]) if last[0] > first[0] else 0.0
    print(f"  sustained over the middle half of the deliveries: {sustained:,.0f} emails/s")
    cpu = cpu_seconds(sender.pid) - cpu_before
    sender.terminate()
    sender.wait(timeout=60)
    calls = fake_calls(fake_url) - calls_before
    expected = emails * -(-recipients // 1000)
    if calls != expected:
        print(f"  note: {calls} provider calls for {expected} expected")
    return emails / elapsed, total / elapsed, cpu / emails


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--single", type=int, default=6000, help="one-recipient emails")
    parser.add_argument("--bulk", type=int, default=200, help="100-recipient emails")
    parser.add_argument("--concurrency", type=int, default=500, help="SENDER_CONCURRENCY (the default)")
    parser.add_argument("--prefetch", type=int, default=600, help="SENDER_PREFETCH (the default)")
    parser.add_argument("--pool", type=int, default=8, help="SENDER_DB_POOL_SIZE (the default, and the manifests')")
    parser.add_argument("--cpu", type=int, default=None, help="pin the sender to this one CPU (taskset): a 1-CPU limit")
    parser.add_argument(
        "--prepared-statements",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="off by default, as behind PgBouncer in the manifests",
    )
    parser.add_argument("--database", default="emails_bench_sender")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from core.broker import topology_from_settings
    from tests.broker import declare

    topology = topology_from_settings()
    declare(topology)
    fake_env = os.environ | {"FAKE_SENDGRID_LATENCY_MS": str(args.latency_ms)}
    fake = subprocess.Popen(
        [sys.executable, "-m", "sender.fake_sendgrid", "--port", "8311"],
        cwd=ROOT,
        env=fake_env,
        stdout=subprocess.DEVNULL,
    )
    fake_url = "http://127.0.0.1:8311"
    try:
        wait_http(f"{fake_url}/_stats")
        emails_s, _, cpu_single = run(topology, emails=args.single, recipients=1, fake_url=fake_url, args=args)
        print(
            f"1 recipient/email:    {emails_s:,.0f} emails/s, {cpu_single * 1000:.2f} ms sender CPU per email "
            f"({args.single} emails, {args.latency_ms} ms provider latency, {args.concurrency} threads)"
        )
        bulk_emails_s, recipients_s, cpu_bulk = run(
            topology, emails=args.bulk, recipients=100, fake_url=fake_url, args=args
        )
        print(
            f"100 recipients/email: {recipients_s:,.0f} recipients/s ({bulk_emails_s:,.1f} emails/s), "
            f"{cpu_bulk * 1000:.2f} ms sender CPU per email"
        )
        stats = json.loads(urllib.request.urlopen(f"{fake_url}/_stats").read())
        print(
            f"SUMMARY latency_ms={args.latency_ms} single_emails_s={emails_s:.0f} "
            f"bulk_recipients_s={recipients_s:.0f} cpu_ms_per_single_email={cpu_single * 1000:.2f} "
            f"cpu_ms_per_bulk_email={cpu_bulk * 1000:.2f} fake_calls={stats.get('messages')}"
        )
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
