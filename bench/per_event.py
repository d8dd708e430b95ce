"""What one provider event costs, measured alone, for changes too small for the whole pipeline's
benchmarks to show (bench/pipeline_cpu.py and bench/load.py drift by more than 1% between runs):

    .venv/bin/python bench/per_event.py [--rows 100000] [--rounds 3]

1. the webhook's Python for one SendGrid event of ours, besides its statements: the item's checks
   and record (`_provider_event`) and its receipt for the sender's deliveries (`_noted`), in µs
   per event (timeit, the best of 5 repeats);
2. the projector's reading of a batch of statuses into its items (`unbatched`), in µs per status;
3. the provider events' insert, as the webhook runs it (370 rows a statement, what a busy post
   holds; ON CONFLICT DO NOTHING RETURNING), into two copies of `webhook_provider_event` holding
   `--rows` rows each: the table as it is, and with the `varchar_pattern_ops` index Django gives
   a varchar primary key (dropped by webhooks 0003); µs per row, the median of 10 statements, in
   rounds that alternate the two.

Run it by hand, on a commit and on another, alternately: the machine drifts.
"""

import argparse
import json
import statistics
import time
import timeit
import uuid
from datetime import UTC, datetime

from common import setup_django  # noqa: E402

BATCH = 370


def sendgrid_item(email_id: int) -> dict:
    return {
        "email": "ann@example.com",
        "timestamp": int(time.time()),
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "delivered",
        "category": ["transactional"],
        "sg_event_id": uuid.uuid4().hex[:22],
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "response": "250 OK",
        "email_id": str(email_id),
        "event_id": str(uuid.uuid4()),
        "ip": "168.1.1.1",
        "tls": 1,
    }


def best_per(run, count: int) -> float:
    """µs per unit of `run` (which handles `count` units), the best of 5 repeats."""
    number = 200
    return min(timeit.repeat(run, number=number, repeat=5)) / number / count * 1e6


def webhook_python() -> float:
    from command_api.webhooks.services import _provider_event
    from core.deliveries.store import _noted

    items = [sendgrid_item(n) for n in range(1, 101)]

    def run():
        reports = [_provider_event(item, "delivered", suspect=False) for item in items]
        _noted(
            [
                {
                    "event_id": r.request_event_id,
                    "recipient": r.recipient,
                    "message_id": r.provider_message_id,
                    "reported_at": r.reported_at if isinstance(r.reported_at, str) else r.reported_at.isoformat(),
                }
                for r in reports
            ]
        )

    return best_per(run, len(items))


def projector_items() -> float:
    from core.contracts import EmailDeliveryStatus, EmailDeliveryStatuses, event_from_dict
    from query_api.apply import unbatched

    now = datetime.now(UTC).isoformat()

    def status(email_id: int) -> dict:
        return EmailDeliveryStatus(
            event_id=str(uuid.uuid4()),
            correlation_id="bench",
            occurred_at=now,
            email_id=email_id,
            request_event_id=str(uuid.uuid4()),
            recipient="ann@example.com",
            status="delivered",
            provider="sendgrid",
            provider_event_id=uuid.uuid4().hex[:22],
            provider_message_id="14c5d75ce93.dfd.64b469",
            reason="250 OK",
            reported_at=now,
        ).to_dict()

    events = [
        event_from_dict(
            EmailDeliveryStatuses(
                event_id=str(uuid.uuid4()),
                correlation_id="bench",
                occurred_at=now,
                statuses=tuple(status(n) for _ in range(4)),
            ).to_dict()
        )
        for n in range(1, 26)
    ]
    return best_per(lambda: [unbatched(event) for event in events], 100)


def insert_rows(count: int) -> str:
    now = datetime.now(UTC).isoformat()
    rows = []
    for _ in range(count):
        item = sendgrid_item(1 + uuid.uuid4().int % 10**9)
        rows.append(
            {
                "provider_event_id": item["sg_event_id"],
                "email_id": int(item["email_id"]),
                "request_event_id": item["event_id"],
                "recipient": item["email"],
                "status": "delivered",
                "provider_message_id": item["sg_message_id"],
                "reason": item["response"],
                "reported_at": now,
                "received_at": now,
                "payload": item,
            }
        )
    return json.dumps(rows)


def provider_event_insert(rows: int, rounds: int) -> dict[str, list[float]]:
    from django.db import connection

    tables = {"as it is": "bench_provider_event_now", "with the pattern index": "bench_provider_event_like"}
    with connection.cursor() as cursor:
        try:
            for table in tables.values():
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
                cursor.execute(f"CREATE TABLE {table} (LIKE webhook_provider_event INCLUDING ALL)")
                for start in range(0, rows, 2500):
                    cursor.execute(
                        f"INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, %s)",
                        [insert_rows(min(2500, rows - start))],
                    )
            patterned = tables["with the pattern index"]
            cursor.execute(f"CREATE INDEX ON {patterned} (provider_event_id varchar_pattern_ops)")
            for table in tables.values():
                cursor.execute(f"VACUUM ANALYZE {table}")
            results: dict[str, list[float]] = {name: [] for name in tables}
            for _ in range(rounds):  # the two alternate: the machine drifts
                for name, table in tables.items():
                    results[name].append(timed_inserts(cursor, table))
            return results
        finally:
            for table in tables.values():
                cursor.execute(f"DROP TABLE IF EXISTS {table}")


def timed_inserts(cursor, table: str) -> float:
    """µs a row: the median of 10 statements of BATCH rows."""
    seconds = []
    for _ in range(10):
        body = insert_rows(BATCH)
        started = time.perf_counter()
        cursor.execute(
            f"""INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, %s)
                ON CONFLICT DO NOTHING RETURNING provider_event_id""",
            [body],
        )
        cursor.fetchall()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) / BATCH * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in each copy of the table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", default="emails_bench_per_event")
    args = parser.parse_args()
    if args.rows < 0 or args.rounds < 1:
        parser.error("--rows takes 0 or more, --rounds 1 or more")
    setup_django(database=args.database, settings_module="command_api.settings", prefix="bench-per-event")

    print(f"webhook, an event's checks, record and receipt: {webhook_python():.1f} µs")
    print(f"projector, a status read from its batch: {projector_items():.1f} µs")
    for name, figures in provider_event_insert(args.rows, args.rounds).items():
        print(f"provider events' insert, {name}: " + ", ".join(f"{f:.1f}" for f in figures) + " µs a row")


if __name__ == "__main__":
    main()
