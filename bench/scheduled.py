"""Scheduled sends, every process running (both APIs under gunicorn, relay, one sender,
projector, the fake SendGrid with added latency): post N emails (one recipient each) all scheduled
for the same second T, far enough ahead to post them all, then measure how late each one left:

    .venv/bin/python bench/scheduled.py [--emails 10000] [--lead 150] [--latency-ms 50] [--posters 8]
                                        [--handoff SECONDS]

Each request is published SCHEDULED_HANDOFF_SECONDS (default 120; --handoff) before T, and the
sender hands it to SendGrid with `send_at`, which holds it until T. Figures, each p50/p99/max:
(a) publication: the request's outbox `published_at` - `not_before` (the relay's part);
(b) the hand-off: when the fake SendGrid accepted the message - T (negative: before T);
(c) departure: when the provider lets it leave (the later of its acceptance and its `send_at`,
    as SendGrid holds a scheduled mail) - T. The target is p99 <= 1 s.
With --handoff 0 the request is published at T and the sender calls SendGrid when it gets to it:
(b) and (c) are then the same. Run it by hand; it needs its own database (created and migrated)
and broker prefix.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from common import ROOT, percentile, setup_django  # noqa: E402

PREFIX = "bench-scheduled"
TABLES = (
    "outbox, emails_sentemailrecipient, emails_sentemail, sender_delivery, read_sent_email, "
    "read_sent_email_event, read_processed_event, webhook_provider_event"
)


def sql(query, params=()):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def figures(name: str, lateness: list[float]) -> str:
    return (
        f"  {name:34} p50 {statistics.median(lateness) * 1000:7.0f} ms  p99 {percentile(lateness, 99) * 1000:7.0f} ms"
        f"  max {max(lateness) * 1000:7.0f} ms  (min {min(lateness) * 1000:.0f} ms, {len(lateness)} emails)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=150, help="seconds from the start of posting to T")
    parser.add_argument("--handoff", type=int, default=None, help="SCHEDULED_HANDOFF_SECONDS (default: the setting's)")
    parser.add_argument("--latency-ms", type=int, default=50, help="the fake SendGrid's added latency")
    parser.add_argument("--posters", type=int, default=8, help="concurrent HTTP clients posting")
    parser.add_argument("--relays", type=int, default=1, help="relay processes")
    parser.add_argument("--relay-batch", type=int, default=None, help="OUTBOX_BATCH_SIZE (default: the setting's)")
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="stop the sender and the projector before T: (a) alone, without the consumers' CPU; no (b)",
    )
    parser.add_argument("--database", default="emails_bench_scheduled")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from django.conf import settings

    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import Http, System

    topology = Topology(prefix=PREFIX)
    declare(topology)
    purge(topology)
    sql(f"TRUNCATE {TABLES} CASCADE")
    batch = args.relay_batch or settings.OUTBOX_BATCH_SIZE
    handoff = settings.SCHEDULED_HANDOFF_SECONDS if args.handoff is None else args.handoff
    system = System(
        database=args.database,
        prefix=PREFIX,
        log_dir=ROOT / "var" / "scheduled",
        also=tuple(f"outbox_relay.{n}" for n in range(2, args.relays + 1)),
        FAKE_SENDGRID_LATENCY_MS=args.latency_ms,
        OUTBOX_BATCH_SIZE=batch,
        SCHEDULED_HANDOFF_SECONDS=handoff,
        LOG_LEVEL="WARNING",
    )
    system.start_all()
    try:
        token, template_id = system.staff_with_template("scheduled", subject="Hi {{ n }}", body="<p>Hi {{ n }}</p>")
        Http(system.fake_url).call("DELETE", "/_messages")
        send_at = (datetime.now(UTC) + timedelta(seconds=args.lead)).replace(microsecond=0)
        stamp = send_at.isoformat()
        client = Http(system.command_url, token)
        refused = []

        def post(n: int) -> None:
            body = {"recipients": [f"r{n}@example.com"], "template": template_id, "context": {"n": n}, "send_at": stamp}
            status, answer = client.call("POST", "/api/v1/emails/sent-email/", body, timeout=30)
            if status != 202:
                refused.append((status, answer))

        started = time.monotonic()
        with ThreadPoolExecutor(args.posters) as pool:
            list(pool.map(post, range(args.emails)))
        posting = time.monotonic() - started
        left = (send_at - datetime.now(UTC)).total_seconds()
        print(
            f"posted {args.emails - len(refused)} emails scheduled for {stamp} in {posting:.1f}s "
            f"({(args.emails - len(refused)) / posting:.0f}/s), {left:.1f}s before T; refused {len(refused)}",
            flush=True,
        )
        if refused:
            raise SystemExit(f"refused: {refused[:3]}")
        if left <= handoff:
            raise SystemExit("posting ran past the hand-off, so the burst was spread: give a longer --lead")
        if args.relay_only:
            for name in ("sender", "projector"):
                system.processes[name].terminate()
                system.processes[name].wait(timeout=60)
            while (
                datetime.now(UTC) < send_at + timedelta(seconds=20)
                and sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]
            ):
                time.sleep(0.5)
        (published_early,) = sql(
            "SELECT count(*) FROM outbox WHERE type = 'email.requested' AND published_at < not_before"
        )[0]

        # Wait until every message reached the fake SendGrid, or nothing more came for 20 s (a
        # delivery in doubt waits SENDER_IN_DOUBT_GRACE_SECONDS for the provider's word).
        fake = Http(system.fake_url)
        deadline = time.monotonic() + (0 if args.relay_only else left + 600)
        count, progressed = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - progressed < 20 + max(0.0, left):
            status, stats = fake.call("GET", "/_stats")
            now_count = stats.get("recipients", 0) if status == 200 else count
            if now_count >= args.emails:
                break
            if now_count != count:
                count, progressed = now_count, time.monotonic()
            time.sleep(0.5)
        status, messages = fake.call("GET", "/_messages", timeout=120)
        assert status == 200, messages
        # Then the provider lets them leave at T, and its events (processed, delivered) follow:
        # none may show in the log before T; how long until all do.
        delivered = "SELECT count(*) FROM read_sent_email WHERE status = 'delivered'"
        while datetime.now(UTC) < send_at and not args.relay_only:
            (early_delivered,) = sql(delivered)[0]
            if early_delivered:
                raise SystemExit(f"{early_delivered} emails delivered before T")
            time.sleep(0.5)
        all_delivered = None
        while not args.relay_only and datetime.now(UTC) < send_at + timedelta(seconds=120):
            if sql(delivered)[0][0] >= args.emails:
                all_delivered = (datetime.now(UTC) - send_at).total_seconds()
                break
            time.sleep(0.25)
        accepted = [m["received_at"] - send_at.timestamp() for m in messages]
        leaving = [r["sends_at"] - send_at.timestamp() for m in messages for r in m["recipients"]]
        held = sum(1 for m in messages if m.get("send_at") == int(send_at.timestamp()))
        missing = args.emails - len(accepted)
        rows = sql(
            "SELECT extract(epoch FROM published_at - not_before) FROM outbox "
            "WHERE type = 'email.requested' AND published_at IS NOT NULL"
        )
        published = [float(r[0]) for r in rows]
    finally:
        system.stop_all()

    print(
        f"\n{args.emails} emails (1 recipient each) scheduled for the same second T, {args.relays} relay(s) (batch "
        f"{batch}), one sender (concurrency {settings.SENDER_CONCURRENCY}, prefetch "
        f"{settings.SENDER_PREFETCH}), fake SendGrid at {args.latency_ms} ms, hand-off {handoff} s before T:"
    )
    print(figures("(a) published, after its not_before", published))
    if not accepted:
        raise SystemExit("nothing reached the fake SendGrid")
    print(figures("(b) handed to the provider, after T", accepted))
    print(figures("(c) leaving the provider, after T", leaving))
    if all_delivered is None:
        print("  not every email showed delivered in the log within 120 s of T")
    else:
        print(f"  every email delivered in the log (from the provider's events, after T) {all_delivered:.1f} s after T")
    last = max(accepted) + handoff
    print(
        f"  publishing {len(published) / max(published):.0f} rows/s, handing off {len(accepted) / last:.0f}/s "
        f"from the hand-off time; handed off with send_at T: {held}, after T: {sum(1 for a in accepted if a > 0)}; "
        f"published before their time: {published_early}; not sent when the run stopped: {missing}"
    )
    print(
        f"SUMMARY emails={args.emails} handoff_s={handoff} published_p99_ms={percentile(published, 99) * 1000:.0f} "
        f"handed_off_p50_ms={statistics.median(accepted) * 1000:.0f} "
        f"handed_off_p99_ms={percentile(accepted, 99) * 1000:.0f} "
        f"leaving_p50_ms={statistics.median(leaving) * 1000:.0f} leaving_p99_ms={percentile(leaving, 99) * 1000:.0f} "
        f"leaving_max_ms={max(leaving) * 1000:.0f} early={published_early} missing={missing}"
    )


if __name__ == "__main__":
    main()
