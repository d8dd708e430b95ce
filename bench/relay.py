"""Benchmark: outbox relay throughput, database round trips per row, idle latency.

    .venv/bin/python bench/relay.py [--rows 50000] [--batch 500] [--latency-samples 300]

In one run, on its own database and broker prefix:
  1. broker only: the relay's pika publisher sends the same 1 KB messages in batches with
     pipelined confirms, no Postgres: the ceiling the relay is measured against;
  2. the outbox filled with --rows rows (1 KB payloads), drained by 1 relay process, then by 2;
     rows/s from the commit of the fill to the last row published, and Postgres statements per
     relayed row (the relays count what they send);
  3. idle latency: rows committed one at a time (with NOTIFY) while the relay is idle, timed from
     the commit to their arrival at a consumer: p50 and p99.
Run it by hand; it is not part of the test suite.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from common import ROOT, percentile, setup_django  # noqa: E402

PREFIX = "bench"


def purge(topology) -> None:
    from tests.broker import purge as purge_all

    purge_all(topology)


def broker_only(topology, rows: int, batch: int) -> float:
    from django.conf import settings

    from outbox_relay.publisher import ConfirmingPublisher, OutgoingMessage

    publisher = ConfirmingPublisher(url=settings.RABBITMQ_URL, topology=topology, name="bench-broker-only")
    publisher.connect()
    body = b'{"type": "email.requested", "pad": "' + b"x" * 1000 + b'"}'
    messages = [OutgoingMessage(str(uuid.uuid4()), "email.requested", body, {"schema_version": 1}) for _ in range(rows)]
    started = time.perf_counter()
    for start in range(0, rows, batch):
        result = publisher.publish_batch(messages[start : start + batch], timeout=30)
        assert len(result.confirmed) == len(messages[start : start + batch]), result.error
    elapsed = time.perf_counter() - started
    publisher.close()
    return rows / elapsed


class Relays:
    def __init__(self, count: int, batch: int):
        self.ports = [9300 + i for i in range(count)]
        env = os.environ | {"OUTBOX_BATCH_SIZE": str(batch), "LOG_LEVEL": "WARNING", "LOG_JSON": "true"}
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "outbox_relay", "run", "--http-host", "127.0.0.1", "--http-port", str(port)],
                cwd=ROOT,
                env=env,
            )
            for port in self.ports
        ]
        for port in self.ports:
            self._wait_ready(port)

    @staticmethod
    def _wait_ready(port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"relay on {port} not ready")

    def metric(self, name: str) -> float:
        total = 0.0
        for port in self.ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
            total += float(match.group(1)) if match else 0.0
        return total

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


def unpublished() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL")
        return cursor.fetchone()[0]


def drain_run(topology, relay_count: int, rows: int, batch: int) -> tuple[float, float]:
    from django.db import connection, transaction

    from tests.broker import fill_outbox

    relays = Relays(relay_count, batch)
    statements_before = relays.metric("outbox_relay_db_statements_total")
    published_before = relays.metric("outbox_relay_published_total")
    with transaction.atomic():
        fill_outbox(rows)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify('outbox', '')")
    started = time.perf_counter()
    while unpublished():
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    time.sleep(0.2)
    statements = relays.metric("outbox_relay_db_statements_total") - statements_before
    published = relays.metric("outbox_relay_published_total") - published_before
    relays.stop()
    purge(topology)
    return rows / elapsed, statements / max(published, 1)


def idle_latency(topology, samples: int) -> list[float]:
    import pika
    import psycopg2
    from django.conf import settings

    from core.broker import connection_parameters

    arrived: dict[str, float] = {}
    ready = threading.Event()

    def consume():
        conn = pika.BlockingConnection(connection_parameters(settings.RABBITMQ_URL))
        channel = conn.channel()
        channel.basic_qos(prefetch_count=100)
        ready.set()
        for method, properties, _ in channel.consume(topology.queue("sender"), auto_ack=True, inactivity_timeout=1):
            if method is not None:
                arrived[properties.message_id] = time.perf_counter()
            elif len(arrived) >= samples:
                break
        conn.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    ready.wait()
    relays = Relays(1, 500)
    db = settings.DATABASES["default"]
    conn = psycopg2.connect(
        host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"]
    )
    committed: dict[str, float] = {}
    for _ in range(samples):
        event_id = str(uuid.uuid4())
        with conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers, created_at, "
                "not_before, attempts, last_error) VALUES (%s, 'sent_email', '1', 'email.requested', "
                "'{\"pad\": \"x\"}', '{}', now(), now(), 0, ''); SELECT pg_notify('outbox', '')",
                [event_id],
            )
        conn.commit()
        committed[event_id] = time.perf_counter()
        time.sleep(0.03)  # let the relay go idle again
    thread.join(timeout=30)
    relays.stop()
    conn.close()
    purge(topology)
    return [(arrived[i] - committed[i]) * 1000 for i in committed if i in arrived]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; medians are reported")
    parser.add_argument("--database", default="emails_bench_relay")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from django.db import connection

    from core.broker import topology_from_settings
    from tests.broker import declare

    topology = topology_from_settings()
    declare(topology)
    purge(topology)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox CASCADE")

    runs = {"broker only": [], "1 relay": [], "2 relays": []}
    trips = []
    for attempt in range(1, args.repeat + 1):
        runs["broker only"].append(broker_only(topology, args.rows, args.batch))
        purge(topology)
        for count, name in ((1, "1 relay"), (2, "2 relays")):
            rate, per_row = drain_run(topology, count, args.rows, args.batch)
            runs[name].append(rate)
            trips.append(per_row)
        print(f"run {attempt}: " + ", ".join(f"{name} {values[-1]:,.0f}/s" for name, values in runs.items()))
    ceiling = statistics.median(runs["broker only"])
    one, two = statistics.median(runs["1 relay"]), statistics.median(runs["2 relays"])
    trips_one = max(trips)
    print(f"medians of {args.repeat} runs, {args.rows} rows of 1 KB, batches of {args.batch}:")
    print(f"  broker only (pika, pipelined confirms): {ceiling:,.0f} msg/s")
    print(f"  1 relay:  {one:,.0f} rows/s ({one / ceiling:.0%} of broker only)")
    print(f"  2 relays: {two:,.0f} rows/s ({two / ceiling:.0%} of broker only)")
    print(f"  Postgres statements per relayed row (worst run): {trips_one:.4f}")
    latencies = idle_latency(topology, args.latency_samples)
    print(
        f"idle commit-to-publish latency over {len(latencies)} rows: p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms"
    )
    print(
        f"SUMMARY rows={args.rows} batch={args.batch} broker_only={ceiling:.0f}/s relay1={one:.0f}/s "
        f"({one / ceiling:.0%}) relay2={two:.0f}/s ({two / ceiling:.0%}) statements_per_row={trips_one:.4f} "
        f"idle_p50_ms={statistics.median(latencies):.1f} idle_p99_ms={percentile(latencies, 99):.1f}"
    )
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox CASCADE")


if __name__ == "__main__":
    main()
