"""Client webhooks under the end-to-end load: does a slow or dead endpoint slow the sending
pipeline? Every process runs (both APIs under gunicorn, relay, sender, projector, notifier, the
fake SendGrid with added latency), and a local receiver (tests/webhook_receiver.py) plays three
endpoints of the posting user: one that hangs (never answers within the notifier's timeout), one
that answers 500, one that answers at once.

    .venv/bin/python bench/client_webhooks.py [--duration 8] [--rounds 2] [--connections 4] [--latency-ms 50]

Each round runs, back to back and from empty tables, the same load twice: without any endpoint
(the feature present and unused) and with the three endpoints registered. Each run measures, as
bench/load.py does: the POST rate wrk gets (closed loop), the emails/s shown as sent in the read
model from the first POST to the last one sent, then POST-to-sent latency (p50, p99) of emails
posted at a fixed rate; with the endpoints, the fast endpoint's delivery lag (arrival at the
receiver less the status change's own time) and what the other two got. Every figure is the
median of its rounds. It also times the projector's extra statement per batch (the enabled
endpoints of a batch's owners) when nobody has an endpoint.

Needs wrk. Run it by hand.
"""

import argparse
import json
import statistics
import threading
import time
from datetime import datetime

from load import max_email_id, sql, wait_all_sent  # noqa: E402

from common import ROOT, percentile, setup_django, wrk_post  # noqa: E402

PREFIX = "bench-hooks"
PIPELINE = ("outbox_relay", "sender", "projector", "notifier")
TABLES = (
    "outbox, emails_sentemailrecipient, emails_sentemail, sender_delivery, read_sent_email, "
    "read_sent_email_event, read_processed_event, webhook_provider_event, client_webhook_message, "
    "client_webhook_attempt"
)


def latency_run(client, body, *, rate: float, duration: float) -> list[float]:
    """POST at `rate` for `duration` seconds; milliseconds from each POST to "sent" in the read model."""
    posted: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    stop = threading.Event()

    def watch():
        give_up = None
        while not stop.is_set() or len(sent_at) < len(posted):
            ids = [i for i in posted if i not in sent_at]
            if ids:
                now = time.time()
                for (email_id,) in sql(
                    "SELECT id FROM read_sent_email WHERE id = ANY(%s) AND status IN ('sent', 'delivered')", [ids]
                ):
                    sent_at[email_id] = now
            time.sleep(0.01)
            if stop.is_set():
                give_up = give_up or time.time() + 60
                if time.time() > give_up:
                    break

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < duration:
        status, answer = client.call("POST", "/api/v1/emails/sent-email/", body)
        if status == 202:
            posted[answer["id"]] = time.time()
        n += 1
        time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    stop.set()
    watcher.join(timeout=90)
    return [(sent_at[i] - posted[i]) * 1000 for i in posted if i in sent_at]


def endpoint_query_cost(owners: int = 100, runs: int = 2000) -> float:
    """Microseconds of the projector's one extra statement per batch, with no endpoint at all."""
    from django.db import connection

    from core.client_webhooks.sql import ENDPOINTS_FOR_OWNERS_SQL

    ids = list(range(1, owners + 1))
    with connection.cursor() as cursor:
        for _ in range(100):
            cursor.execute(ENDPOINTS_FOR_OWNERS_SQL, [ids])
        started = time.perf_counter()
        for _ in range(runs):
            cursor.execute(ENDPOINTS_FOR_OWNERS_SQL, [ids])
            cursor.fetchall()
        return (time.perf_counter() - started) / runs * 1e6


def projector_batches(system) -> tuple[float, float]:
    """(count, sum of seconds) of the projector's batch histogram so far."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{system.ports['projector']}/metrics", timeout=5).read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("projector_batch_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("projector_batch_seconds_sum"):
            total = float(line.split()[-1])
    return count, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run and each latency run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", default="emails_bench_hooks")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from core.accounts.models import User
    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import Http, System
    from tests.webhook_receiver import Receiver

    topology = Topology(prefix=PREFIX)
    declare(topology)
    purge(topology)
    sql(f"TRUNCATE {TABLES} CASCADE")
    sql("DELETE FROM client_webhook_endpoint")
    system = System(
        database=args.database,
        prefix=PREFIX,
        log_dir=ROOT / "var" / "client-webhooks",
        FAKE_SENDGRID_LATENCY_MS=args.latency_ms,
        LOG_LEVEL="WARNING",
        CLIENT_WEBHOOKS_ALLOW_PRIVATE="true",
        CLIENT_WEBHOOKS_ALLOW_HTTP="true",
    )
    receiver = Receiver(hang_seconds=3600)
    system.start_all()
    system.start("notifier")
    system.wait_ready("notifier")
    runs: dict[str, list[dict]] = {"without endpoints": [], "hanging + 500 + fast endpoints": []}
    try:
        token, template_id = system.staff_with_template("hooks", subject="Hi {{ name }}", body="<p>Hi {{ name }}</p>")
        owner = User.objects.get(email="hooks@example.com")
        client = Http(system.command_url, token)
        body = {"recipients": ["ann@example.com", "bob@example.org"], "template": template_id, "context": {"name": "A"}}
        url = f"{system.command_url}/api/v1/emails/sent-email/"
        wrk_post(url, body, token=token, connections=args.connections, duration=2)  # warm up

        for number in range(1, args.rounds + 1):
            for name in runs:
                with_endpoints = name != "without endpoints"
                for endpoint_id in owner.webhook_endpoints.values_list("id", flat=True):
                    client.call("DELETE", f"/api/v1/webhook-endpoints/{endpoint_id}/")
                for name_ in PIPELINE:
                    system.processes[name_].terminate()
                    system.processes[name_].wait(timeout=60)
                purge(topology)
                sql(f"TRUNCATE {TABLES} CASCADE")
                receiver.received.clear()
                receiver.release.set()  # let go of the last run's hanging requests
                receiver.release.clear()
                if with_endpoints:
                    for kind in ("hang", "fail", "fast"):
                        status, answer = client.call(
                            "POST", "/api/v1/webhook-endpoints/", {"url": receiver.url(f"{kind}/{number}")}
                        )
                        assert status == 201, answer
                for name_ in PIPELINE:
                    system.start(name_)
                for name_ in PIPELINE:
                    system.wait_ready(name_)
                batches_before = projector_batches(system)
                first_id = max_email_id()
                started = time.time()
                figures, _ = wrk_post(url, body, token=token, connections=args.connections, duration=args.duration)
                accepted = sql("SELECT count(*) FROM emails_sentemail WHERE id > %s", [first_id])[0][0]
                last_sent = wait_all_sent(first_id, accepted, timeout=600)
                emails_per_second = accepted / (last_sent - started)
                rate = figures["rps"] / 2
                latencies = latency_run(client, body, rate=rate, duration=args.duration)
                count, total = (b - a for a, b in zip(batches_before, projector_batches(system), strict=True))
                run = {
                    "rps": figures["rps"],
                    "emails_per_second": emails_per_second,
                    "p50": statistics.median(latencies),
                    "p99": percentile(latencies, 99),
                    "rate": rate,
                    "batch_ms": total / count * 1000 if count else 0.0,
                }
                if with_endpoints:
                    time.sleep(2)  # the last changes reach the fast endpoint
                    lags = []
                    for received in receiver.at("fast"):
                        occurred = datetime.fromisoformat(json.loads(received.body)["data"]["occurred_at"])
                        lags.append((received.at - occurred.timestamp()) * 1000)
                    (queued,) = sql("SELECT count(*) FROM client_webhook_message")[0]
                    run |= {
                        "lag_p50": statistics.median(lags),
                        "lag_p99": percentile(lags, 99),
                        "fast": len(receiver.at("fast")),
                        "fail": len(receiver.at("fail")),
                        "hang": len(receiver.at("hang")),
                        "hang_at_once": receiver.most_at_once["hang"],
                        "messages": queued,
                    }
                runs[name].append(run)
                print(
                    f"round {number}, {name}: {figures['rps']:.0f} POST/s, {emails_per_second:.0f} emails/s sent, "
                    f"POST to sent at {rate:.0f}/s p50 {run['p50']:.0f} ms p99 {run['p99']:.0f} ms, "
                    f"projector batch {run['batch_ms']:.2f} ms"
                    + (
                        f"; fast endpoint lag p50 {run['lag_p50']:.0f} ms p99 {run['lag_p99']:.0f} ms, "
                        f"received fast {run['fast']}, 500s {run['fail']}, hanging {run['hang']} "
                        f"(at most {run['hang_at_once']} at once) of {run['messages']} messages"
                        if with_endpoints
                        else ""
                    ),
                    flush=True,
                )
        query_us = endpoint_query_cost()
    finally:
        receiver.close()
        system.stop_all()

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    print(
        f"\nPOST sent-email, 2 recipients, wrk {args.connections} connections, {args.duration}s, "
        f"fake SendGrid at {args.latency_ms} ms, medians of {args.rounds} rounds:"
    )
    for name in runs:
        line = (
            f"  {name:32} {median(name, 'rps'):5.0f} POST/s  {median(name, 'emails_per_second'):5.0f} emails/s sent  "
            f"POST to sent p50 {median(name, 'p50'):4.0f} ms p99 {median(name, 'p99'):5.0f} ms  "
            f"projector batch {median(name, 'batch_ms'):.2f} ms"
        )
        if name != "without endpoints":
            line += f"  fast endpoint lag p50 {median(name, 'lag_p50'):.0f} ms p99 {median(name, 'lag_p99'):.0f} ms"
        print(line)
    print(f"  the projector's endpoint lookup per batch (100 owners, no endpoint): {query_us:.0f} µs")


if __name__ == "__main__":
    main()
