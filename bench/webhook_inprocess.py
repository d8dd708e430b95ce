"""SendGrid's Event Webhook posts, in one process: what the command API spends per provider event.

    .venv/bin/python bench/webhook_inprocess.py [--posts 60] [--emails 22] [--profile]

Each post carries, for `--emails` emails of 2 recipients each, SendGrid's `processed` and
`delivered` for every recipient (the fake SendGrid posts about that much every 0.2 s at 110
emails/s), signed as SendGrid signs, each email with its sender's deliveries claimed, so the
webhook stores the events, notes them on the deliveries and writes the statuses to the outbox
as under load. Each post goes through Django's test client (the whole middleware and DRF stack,
the real Postgres, no HTTP parsing), on the same tables each run (emptied, then analyzed after the
warm-up). Prints the median wall and CPU time per post and per event, and the time of each
statement of one post; with --profile, a cProfile of the posts (cumulative, top 40).
Run it by hand, against a commit and another, interleaved: the machine drifts.
"""

import argparse
import base64
import cProfile
import json
import pstats
import statistics
import time
import uuid

from common import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=60)
    parser.add_argument("--emails", type=int, default=22, help="emails a post reports on (2 recipients each)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--database", default="emails_bench_webhook")
    args = parser.parse_args()
    if args.posts < 1 or args.emails < 1:
        parser.error("--posts and --emails take a positive number")
    setup_django(database=args.database, settings_module="command_api.settings", prefix="bench-webhook")

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from core.deliveries.store import DeliveryStore
    from tests.factories import email_requested, sendgrid_event

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = base64.b64encode(der).decode()
    settings.ALLOWED_HOSTS = ["*"]
    store = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel=None)

    def signed(body: str) -> dict:
        timestamp = str(int(time.time()))
        signature = base64.b64encode(key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
        return {
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": signature,
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": timestamp,
        }

    def a_post() -> str:
        events = []
        for _ in range(args.emails):
            request = email_requested(["ann@example.com", "bob@example.org"], email_id=uuid.uuid4().int % 10**9)
            store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
            for kind in ("processed", "delivered"):
                events += [sendgrid_event(request, recipient, kind) for recipient in request.recipients]
        return json.dumps(events)

    client = Client()

    def post(body: str, headers: dict | None = None):
        headers = headers or signed(body)
        response = client.post("/api/v1/webhooks/sendgrid/", body, content_type="application/json", **headers)
        assert response.status_code == 200, response.content
        return response

    events_per_post = args.emails * 4
    # The same tables each run: empty, then the warm-up's posts, then statistics taken with every
    # delivery reported, as a production table mostly is.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE sender_delivery, webhook_provider_event, outbox")
    for _ in range(5):  # warm up
        post(a_post())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sender_delivery, webhook_provider_event, outbox")
    queries: list[tuple[str, float]] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((sql, time.perf_counter() - started))

    with connection.execute_wrapper(timed):
        post(a_post())
    bodies = [(body, signed(body)) for body in (a_post() for _ in range(args.posts))]
    profiler = cProfile.Profile() if args.profile else None
    walls, cpus = [], []
    for body, headers in bodies:
        if profiler:
            profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        post(body, headers)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if profiler:
            profiler.disable()
    store.close()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"{args.posts} posts of {events_per_post} events ({args.emails} emails): median per post wall "
        f"{wall * 1000:.2f} ms, CPU {cpu * 1000:.2f} ms; per event wall {wall * 1e6 / events_per_post:.0f} µs, "
        f"CPU {cpu * 1e6 / events_per_post:.0f} µs (this process only; Postgres apart)"
    )
    print(f"statements a post runs: {len(queries)} (the time of each, in one post)")
    for sql, seconds in queries:
        print(f"  {seconds * 1000:6.2f} ms ", " ".join(sql.split())[:100])
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
