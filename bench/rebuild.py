"""Benchmark: rebuilding the read model from the write side, at size.

    .venv/bin/python bench/rebuild.py [--emails 10000000] [--keep] [--database emails_bench_rebuild]

Fills the write side with --emails sent emails of one user (3 recipients each, every recipient
sent: a delivery row each), unless --keep finds them there already, then runs the rebuild as
`python -m query_api rebuild` does (the same function, with its progress), and prints the time
it took and emails/s. Run it by hand; it needs its own database, created and migrated.
"""

import argparse
import time

from common import setup_django  # noqa: E402

STEP = 250_000


def fill(emails: int, owner: int) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE emails_sentemailrecipient, emails_sentemail, sender_delivery, webhook_provider_event CASCADE"
        )
        for lo in range(1, emails + 1, STEP):
            hi = min(emails, lo + STEP - 1)
            params = {"owner": owner, "lo": lo, "hi": hi}
            cursor.execute(
                """
                INSERT INTO emails_sentemail (id, template_name, from_email, subject, body, context, correlation_id,
                                              request_fingerprint, created, sender_id)
                SELECT g, 't', 'no-reply@example.com', 'Subject ' || g, '<p>Hi</p>', '{}', 'bench', '',
                       now() - g * interval '3 seconds', %(owner)s
                  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
                """,
                params,
            )
            cursor.execute(
                """
                INSERT INTO emails_sentemailrecipient (address, email_id)
                SELECT a, g FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g,
                       LATERAL (VALUES ('c' || g %% 100000 || '@example.com'), ('x' || g || '@example.org'),
                                       ('y' || g %% 7919 || '@example.net')) AS r(a)
                """,
                params,
            )
            cursor.execute(
                """
                INSERT INTO sender_delivery (event_id, recipient, email_id, state, attempts, provider_message_id,
                                             last_error, created_at, updated_at)
                SELECT md5(email_id::text)::uuid, address, email_id, 'sent', 1, 'm' || email_id, '',
                       now() - email_id * interval '3 seconds', now() - email_id * interval '3 seconds'
                  FROM emails_sentemailrecipient WHERE email_id BETWEEN %(lo)s AND %(hi)s
                """,
                params,
            )
            elapsed = time.perf_counter() - started
            print(f"  filled {hi:,} of {emails:,} emails, {elapsed:.0f}s", flush=True)
        cursor.execute("ANALYZE emails_sentemail, emails_sentemailrecipient, sender_delivery")
    print(f"filled {emails:,} emails (and 3 recipients, 3 deliveries each) in {time.perf_counter() - started:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse the write side of an earlier fill of the same size")
    parser.add_argument("--database", default="emails_bench_rebuild")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix="bench-rebuild")
    from django.db import connection

    from core.accounts.models import User
    from query_api.rebuild import read_model_rebuild

    owner, _ = User.objects.get_or_create(email="owner@example.com", defaults={"username": "owner"})
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM emails_sentemail")
        filled = cursor.fetchone()[0] == args.emails
    if not (args.keep and filled):
        fill(args.emails, owner.pk)

    started = time.perf_counter()
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or time.perf_counter() - shown[0] >= 10:
            shown[0] = time.perf_counter()
            elapsed = shown[0] - started
            print(f"  rebuilt {done:,} of {total:,} emails, {elapsed:.0f}s, {done / elapsed:,.0f}/s", flush=True)

    result = read_model_rebuild(progress=progress)
    print(
        f"rebuilt {result.emails:,} emails in {result.seconds:.0f}s ({result.emails / result.seconds:,.0f} emails/s), "
        f"{result.caught_up} caught up at the end"
    )
    print(f"SUMMARY emails={result.emails} seconds={result.seconds:.0f} per_s={result.emails / result.seconds:.0f}")


if __name__ == "__main__":
    main()
