"""Benchmark: the sender's claim with and without the suppression check, one statement at a time.

    .venv/bin/python bench/claim.py [--database emails_bench_claim] [--emails 4000]

The claim is the one statement the suppression check adds work to, on every email. This times
it as the sender runs it (autocommit, one round trip), for emails of 1 and of 100 recipients,
prepared and planned each time (behind PgBouncer the sender prepares nothing), against the
claim as it was before the check (the same statement without the anti-join). The suppression
list is empty, then holds 100,000 addresses of the same account, none of them a recipient.
The two alternate email by email; each figure is the median time of one claim, in µs.
"""

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

from common import setup_django  # noqa: E402

# The claim before the suppression check, for reference.
BEFORE = """
    INSERT INTO sender_delivery AS d (event_id, recipient, email_id, state, attempts, lease_until, claim_token,
                                      provider_message_id, last_error, created_at, updated_at)
    SELECT %(event_id)s::uuid, r, %(email_id)s::bigint, 'sending', 1, now() + %(lease)s::float8 * interval '1 second',
           %(token)s::uuid, '', '', now(), now()
      FROM unnest(%(recipients)s::text[]) AS r
    ON CONFLICT (event_id, recipient) DO UPDATE
       SET state = 'sending', attempts = d.attempts + 1, lease_until = EXCLUDED.lease_until,
           claim_token = EXCLUDED.claim_token, next_attempt_at = NULL, updated_at = now()
     WHERE (d.state = 'retry' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now()))
        OR (%(resend)s::bool AND d.state IN ('sending', 'unknown') AND d.lease_until < now()
            AND d.provider_seen_at IS NULL AND d.updated_at <= now() - %(grace)s::float8 * interval '1 second')
    RETURNING recipient, attempts, last_error
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="emails_bench_claim")
    parser.add_argument("--emails", type=int, default=4000)
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="sender.settings", prefix="bench-claim")

    from django.conf import settings
    from django.db import connection

    from core.contracts import EmailRequested
    from core.deliveries.store import DeliveryStore
    from core.prepared import Prepared

    before = Prepared("bench_claim_before", BEFORE)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name, email, "
            "is_staff, is_active, date_joined) VALUES ('', false, 'bench-claim', '', '', "
            "'bench-claim@example.com', false, true, now()) ON CONFLICT DO NOTHING"
        )
        cursor.execute("SELECT id FROM accounts_user WHERE username = 'bench-claim'")
        (owner_id,) = cursor.fetchone()
        # An empty list, analyzed as the migration leaves it, and no deliveries.
        cursor.execute("TRUNCATE suppression, sender_delivery")
        cursor.execute("ANALYZE suppression")

    def request(n: int) -> EmailRequested:
        return EmailRequested(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=datetime.now(UTC).isoformat(),
            email_id=1,
            owner_id=owner_id,
            template_id=None,
            from_email="bench@example.com",
            reply_to=None,
            recipients=tuple(f"r{i}-{uuid.uuid4().hex[:8]}@example.com" for i in range(n)),
            subject="s",
            body_html="b",
        )

    store = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)

    def claim_before(event: EmailRequested) -> float:
        # As DeliveryStore.claim ran it before the check: a pooled connection, one statement.
        started = time.perf_counter()
        with store._cursor() as cursor:
            before.execute(
                cursor,
                {
                    "event_id": event.event_id,
                    "email_id": event.email_id,
                    "lease": 60.0,
                    "recipients": list(event.recipients),
                    "resend": True,
                    "grace": 300.0,
                    "grace_from": None,
                    "token": str(uuid.uuid4()),
                },
            )
            cursor.fetchall()
        return time.perf_counter() - started

    def claim_now(event: EmailRequested) -> float:
        started = time.perf_counter()
        store.claim(event, lease_seconds=60.0, resend_in_doubt=True, in_doubt_grace=300.0)
        return time.perf_counter() - started

    print(f"µs per claim: median over {args.emails} emails each, the two claims alternating email by email")
    print("| suppression list | recipients | prepared | before | with the check | difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for listed in ("empty", "100,000 others"):
        if listed != "empty":
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO suppression (owner_id, address, reason, detail, source, created_at) "
                    "SELECT %s, 'other' || g || '@example.com', 'bounce', '', 'api', now() "
                    "FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING",
                    [owner_id],
                )
                cursor.execute("ANALYZE suppression")
        for recipients in (1, 100):
            emails = args.emails if recipients == 1 else max(args.emails // 10, 50)
            for prepared in (True, False):
                settings.POSTGRES_PREPARED_STATEMENTS = prepared
                old, new = [], []
                for n in range(emails):
                    # Alternate which goes first, so both meet the machine's load alike.
                    first, second = (claim_before, claim_now) if n % 2 else (claim_now, claim_before)
                    a, b = first(request(recipients)), second(request(recipients))
                    (old if first is claim_before else new).append(a * 1e6)
                    (new if first is claim_before else old).append(b * 1e6)
                a, b = statistics.median(old), statistics.median(new)
                print(
                    f"| {listed} | {recipients} | {'yes' if prepared else 'no'} | {a:.0f} | {b:.0f} "
                    f"| {b - a:+.0f} ({(b - a) / a:+.0%}) |"
                )
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE sender_delivery")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
