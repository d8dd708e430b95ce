"""The projector's batches alone: apply the events of many emails (requested, then sent, then
delivered per recipient) with `query_api.apply.apply_batch`, in batches as the projector makes
them, on a fresh database, and time it. Nobody has a webhook endpoint: what the client webhooks
cost a platform that does not use them. Self-contained and run from a checkout's root, so the
same script measures any two checkouts alternately:

    cd <checkout> && .venv/bin/python <this script> [--emails 4000] [--runs 3] --database emails_bench_proj_x

Prints events/s and ms per batch, the median of `runs`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))


def events_for(email_id: int, owner_id: int, at: datetime):
    from core.contracts import EmailDeliveryStatus, EmailRequested, EmailSent

    recipients = (f"a{email_id}@example.com", f"b{email_id}@example.org")
    common = {"correlation_id": "bench", "email_id": email_id}
    requested = EmailRequested(
        event_id=str(uuid.uuid4()),
        occurred_at=at.isoformat(),
        owner_id=owner_id,
        template_id=1,
        from_email="f@example.com",
        reply_to=None,
        recipients=recipients,
        subject="Hi",
        body_html="<p>Hi</p>",
        template_name="t",
        **common,
    )
    sent = EmailSent(
        event_id=str(uuid.uuid4()),
        occurred_at=(at + timedelta(seconds=1)).isoformat(),
        request_event_id=requested.event_id,
        recipients=recipients,
        provider="sendgrid",
        provider_message_id=f"m{email_id}",
        attempt=1,
        **common,
    )
    delivered = [
        EmailDeliveryStatus(
            event_id=str(uuid.uuid4()),
            occurred_at=(at + timedelta(seconds=2)).isoformat(),
            request_event_id=requested.event_id,
            recipient=recipient,
            status="delivered",
            provider="sendgrid",
            provider_event_id=str(uuid.uuid4()),
            provider_message_id=f"m{email_id}.{n}",
            reason="",
            reported_at=(at + timedelta(seconds=2)).isoformat(),
            **common,
        )
        for n, recipient in enumerate(recipients)
    ]
    return requested, sent, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", required=True)
    args = parser.parse_args()
    os.environ.update({"POSTGRES_DB": args.database, "DJANGO_SECRET_KEY": "benchmark-only", "DJANGO_DEBUG": "false"})
    os.environ.update({"LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "deployment.settings"})
    subprocess.run([sys.executable, "-m", "core.db_bootstrap"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from django.db import connection

    from core.db import connect_postgres
    from query_api.apply import apply_batch

    rates, per_batch = [], []
    for _ in range(args.runs):
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE read_sent_email, read_sent_email_event, read_processed_event")
        # As the projector meets them: requests, then their sends, then their deliveries.
        at = datetime.now(UTC)
        made = [events_for(n, owner_id=1 + n % 100, at=at) for n in range(1, args.emails + 1)]
        stream = [r for r, _, _ in made] + [s for _, s, _ in made] + [d for _, _, ds in made for d in ds]
        batches = [stream[i : i + args.batch] for i in range(0, len(stream), args.batch)]
        conn = connect_postgres(connection.settings_dict, application_name="bench-projector", idle_in_transaction_ms=0)
        started = time.perf_counter()
        for batch in batches:
            apply_batch(conn, batch)
        seconds = time.perf_counter() - started
        conn.close()
        rates.append(len(stream) / seconds)
        per_batch.append(seconds / len(batches) * 1000)
    print(
        f"{ROOT.name}: {statistics.median(rates):,.0f} events/s, {statistics.median(per_batch):.2f} ms per batch "
        f"of {args.batch} (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
