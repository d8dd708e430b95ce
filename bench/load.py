"""End-to-end load benchmark on this machine, every process running (both APIs under gunicorn,
relay, sender, projector, the fake SendGrid with added latency), plus three references in the
same run:

    .venv/bin/python bench/load.py [--duration 8] [--rounds 3] [--connections 4] [--latency-ms 50]
                                   [--celery-pool gevent] [--celery-concurrency 100]

Each round measures, back to back (this machine drifts by more than the differences measured, so
every figure is the median of its rounds, and each round's end-to-end share is taken against the
API-only figure of the same round):

1. references: the same POST load (wrk, 2 recipients) against the original design (the API
   publishing to RabbitMQ synchronously inside the request, no outbox) and a bare DRF endpoint
   that only does the same inserts;
2. API only: the real POST with the relay, sender and projector stopped;
3. end to end: the real POST with everything running, from empty tables: accepted emails/s, and
   recipients/s delivered and shown as sent in the read model, from the first POST to the last
   one sent; the outbox backlog when the load stops; the CPU each process used per email;
4. the Celery reference end to end (bench/celery_reference.py), run before 3 while the pipeline is
   stopped: the same POST load against an endpoint (same authentication, validation and
   rendering) that queues the email to Celery on the same RabbitMQ, a Celery worker delivering it
   through django-anymail's SendGrid backend to a second fake SendGrid at the same latency
   (without the Event Webhook: Celery tracks no status): emails/s from the first POST to the last
   one the fake accepted, the CPU per email, and the project's end-to-end rate as a share of it,
   round by round.

Then, once, 5. latency: emails posted at half the end-to-end rate, timed from the POST to "sent"
in the read model: p50, p99.

Needs wrk. Run it by hand.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

from common import ROOT, cpu_by_group, cpu_delta, percentile, send_load, setup_django, wrk_post  # noqa: E402

PREFIX = "bench-load"
PIPELINE = ("outbox_relay", "sender", "projector")
WRITE_AND_READ_TABLES = (
    "outbox, emails_sentemailrecipient, emails_sentemail, sender_delivery, read_sent_email, "
    "read_sent_email_event, read_processed_event, webhook_provider_event"
)


def sql(query, params=()):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def sent_count(since_id: int) -> int:
    return sql("SELECT count(*) FROM read_sent_email WHERE id > %s AND status IN ('sent', 'delivered')", [since_id])[0][
        0
    ]


def wait_all_sent(since_id: int, count: int, timeout: float) -> float:
    """Wait until the `count` emails after `since_id` are sent (or beyond) in the read model;
    returns the time.time() when the last one got there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (done := sent_count(since_id)) >= count:
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"only {done} of {count} emails sent within {timeout}s")


def wait_fake(fake, done, *, timeout: float = 60, settle: float = 0.0) -> float:
    """Poll a fake SendGrid's /_stats until `done(stats)` is true (or, with `settle`, until its
    value stopped changing for that long); returns the time.time() it was first seen."""
    deadline, last_value, since, stats = time.monotonic() + timeout, None, time.monotonic(), None
    while time.monotonic() < deadline:
        status, stats = fake.call("GET", "/_stats")
        value = done(stats) if status == 200 else None
        if settle:
            if value != last_value:
                last_value, since = value, time.monotonic()
            elif time.monotonic() - since >= settle:
                return time.time()
        elif value:
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"the fake SendGrid did not get there within {timeout}s: {stats}")


def max_email_id() -> int:
    return sql("SELECT coalesce(max(id), 0) FROM emails_sentemail")[0][0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_wrk(url, body, *, token, connections, duration) -> tuple[dict, float]:
    """wrk's figures and the CPU seconds wrk itself used (it exits before /proc can be read)."""
    before = children_cpu()
    figures, _ = wrk_post(url, body, token=token, connections=connections, duration=duration)
    return figures, children_cpu() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", default="emails_bench_load")
    parser.add_argument("--celery-pool", default="gevent", help="the Celery worker's pool (gevent, threads, ...)")
    parser.add_argument("--celery-concurrency", type=int, default=100)
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import Http, System

    topology = Topology(prefix=PREFIX)
    declare(topology)
    purge(topology)
    sql(f"TRUNCATE {WRITE_AND_READ_TABLES} CASCADE")
    system = System(
        database=args.database,
        prefix=PREFIX,
        log_dir=ROOT / "var" / "load",
        FAKE_SENDGRID_LATENCY_MS=args.latency_ms,
        LOG_LEVEL="WARNING",
    )
    system.start_all()
    variants = None
    celery: dict[str, subprocess.Popen] = {}
    celery_rounds: list[dict] = []
    celery_cpu_ms: dict[str, float] = {}
    rounds: dict[str, list[dict]] = {}
    e2e_rounds: list[dict] = []
    cpu_ms: dict[str, float] = {}
    try:
        url, body, token = send_load(system)

        # The references run on a gunicorn of their own, 2 workers like the command API; the Celery
        # reference's worker and its fake SendGrid (the same fake, at the same latency, with no
        # Event Webhook) beside it.
        celery_fake = "http://127.0.0.1:8026"
        reference_env = system.env | {
            "DJANGO_SETTINGS_MODULE": "variants_settings",
            "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}",
            "CELERY_REFERENCE_SENDGRID_URL": celery_fake,
        }
        celery["fake"] = subprocess.Popen(
            [sys.executable, "-m", "sender.fake_sendgrid", "--port", "8026"],
            cwd=ROOT,
            env={k: v for k, v in system.env.items() if k != "FAKE_SENDGRID_WEBHOOK_URL"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        celery["worker"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_reference",
                "worker",
                "--pool",
                args.celery_pool,
                "--concurrency",
                str(args.celery_concurrency),
                "--loglevel",
                "WARNING",
                # Worker heartbeats and gossip (events between workers, which one worker does
                # not need): with both on, the gevent pool ran one task at a time here.
                "--without-heartbeat",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=reference_env,
            stdout=open(ROOT / "var" / "load" / "celery.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        fake2 = Http(celery_fake)
        variants = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "command_api.wsgi:application",
                "--workers",
                "2",
                "--bind",
                "127.0.0.1:8019",
            ],
            cwd=ROOT,
            env=reference_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(3)  # gunicorn boots; the endpoints answer only POST
        for name, process in celery.items():
            if process.poll() is not None:
                raise SystemExit(f"the Celery reference's {name} exited (is port 8026 taken?)")
        targets = {
            "sync publish (original design)": ("http://127.0.0.1:8019/sync-publish/", token),
            "bare DRF inserts": ("http://127.0.0.1:8019/bare/", None),
            "API only (outbox, pipeline stopped)": (url, token),
        }
        rounds = {name: [] for name in targets}
        accepted_total = celery_total = 0
        for number in range(1, args.rounds + 1):
            # 1 and 2: the pipeline stopped.
            for name in PIPELINE:
                system.processes[name].terminate()
                system.processes[name].wait(timeout=60)
            roots = {"server": system.processes["command_api"].pid, "variants": variants.pid}
            for name, (target, tok) in targets.items():
                wrk_post(target, body, token=tok, connections=args.connections, duration=2)  # warm up
                before = cpu_by_group(roots)
                figures, wrk_cpu = measured_wrk(
                    target, body, token=tok, connections=args.connections, duration=args.duration
                )
                per_request = {
                    key: seconds * 1000 / max(1, figures["requests"])
                    for key, seconds in cpu_delta(before, cpu_by_group(roots)).items()
                }
                rounds[name].append(
                    figures
                    | {
                        "wrk_cpu_ms": wrk_cpu * 1000 / max(1, figures["requests"]),
                        "server_cpu_ms": per_request.get("server", 0.0) + per_request.get("variants", 0.0),
                        "postgres_cpu_ms": per_request.get("postgres", 0.0),
                        "rabbitmq_cpu_ms": per_request.get("rabbitmq", 0.0),
                    }
                )
            # 4 (before 3, while the pipeline is stopped): the Celery reference.
            celery_url = "http://127.0.0.1:8019/celery/"
            wrk_post(celery_url, body, token=token, connections=args.connections, duration=2)  # warm up
            wait_fake(fake2, lambda stats: stats.get("recipients", 0), settle=1.0)
            roots = {
                "variants": variants.pid,
                "celery worker": celery["worker"].pid,
                "fake SendGrid": celery["fake"].pid,
                "this script": os.getpid(),
            }
            cpu_before = cpu_by_group(roots)
            before = fake2.call("GET", "/_stats")[1].get("recipients", 0)
            started = time.time()
            celery_figures, wrk_cpu = measured_wrk(
                celery_url, body, token=token, connections=args.connections, duration=args.duration
            )
            queued = celery_figures["requests"] - celery_figures["non_2xx"]
            target = before + 2 * queued
            last = wait_fake(fake2, lambda stats, target=target: stats.get("recipients", 0) >= target, timeout=600)
            for key, seconds in cpu_delta(cpu_before, cpu_by_group(roots)).items():
                celery_cpu_ms[key] = celery_cpu_ms.get(key, 0.0) + seconds * 1000
            celery_cpu_ms["wrk"] = celery_cpu_ms.get("wrk", 0.0) + wrk_cpu * 1000
            celery_total += queued
            celery_emails = queued / (last - started)
            celery_rounds.append(celery_figures | {"delivered_emails": celery_emails})
            # 3: from empty tables and queues, everything running.
            purge(topology)
            sql(f"TRUNCATE {WRITE_AND_READ_TABLES} CASCADE")
            for name in PIPELINE:
                system.start(name)
            for name in PIPELINE:
                system.wait_ready(name)
            first_id = max_email_id()
            roots = {name: process.pid for name, process in system.processes.items()} | {"this script": os.getpid()}
            backends = dict(sql("SELECT pid, application_name FROM pg_stat_activity WHERE application_name <> ''"))
            cpu_before = cpu_by_group(roots, backends)
            started = time.time()
            figures, wrk_cpu = measured_wrk(
                url, body, token=token, connections=args.connections, duration=args.duration
            )
            accepted = sql("SELECT count(*) FROM emails_sentemail WHERE id > %s", [first_id])[0][0]
            (backlog,) = sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0]
            last_sent = wait_all_sent(first_id, accepted, timeout=600)
            backends |= dict(sql("SELECT pid, application_name FROM pg_stat_activity WHERE application_name <> ''"))
            for key, seconds in cpu_delta(cpu_before, cpu_by_group(roots, backends)).items():
                cpu_ms[key] = cpu_ms.get(key, 0.0) + seconds * 1000
            cpu_ms["wrk"] = cpu_ms.get("wrk", 0.0) + wrk_cpu * 1000
            accepted_total += accepted
            delivered_emails = accepted / (last_sent - started)
            api_only = rounds["API only (outbox, pipeline stopped)"][-1]["rps"]
            e2e_rounds.append(
                figures
                | {
                    "accepted": accepted,
                    "backlog": backlog,
                    "delivered_emails": delivered_emails,
                    "share": delivered_emails / api_only,
                }
            )
            celery_rounds[-1]["ratio"] = delivered_emails / celery_emails
            print(
                f"round {number}: API only {api_only:.0f}/s, end to end {figures['rps']:.0f}/s accepted, "
                f"{delivered_emails:.0f} emails/s shown as sent ({delivered_emails / api_only:.0%}); "
                f"Celery reference {celery_emails:.0f} emails/s sent: the project at "
                f"{delivered_emails / celery_emails:.0%} of it",
                flush=True,
            )
        variants.terminate()
        variants.wait(timeout=30)
        variants = None
        cpu_ms = {key: value / accepted_total for key, value in cpu_ms.items()}
        celery_cpu_ms = {key: value / celery_total for key, value in celery_cpu_ms.items()}

        # 4. Latency at half the end-to-end rate.
        rate = statistics.median(r["rps"] for r in e2e_rounds) / 2
        posted: dict[int, float] = {}
        sent_at: dict[int, float] = {}
        stop = threading.Event()
        client = Http(system.command_url, token)

        def watch():
            while not stop.is_set() or len(sent_at) < len(posted):
                ids = [i for i in posted if i not in sent_at]
                if ids:
                    now = time.time()
                    for (email_id,) in sql(
                        "SELECT id FROM read_sent_email WHERE id = ANY(%s) AND status IN ('sent', 'delivered')", [ids]
                    ):
                        sent_at[email_id] = now
                time.sleep(0.01)
                if stop.is_set() and time.time() - stop.time > 60:
                    break

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < args.duration:
            status, answer = client.call("POST", "/api/v1/emails/sent-email/", body)
            if status == 202:
                posted[answer["id"]] = time.time()
            n += 1
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        stop.time = time.time()
        stop.set()
        watcher.join(timeout=90)
        latencies = [(sent_at[i] - posted[i]) * 1000 for i in posted if i in sent_at]
    finally:
        if variants is not None:
            variants.terminate()
        for process in celery.values():
            process.terminate()
            process.wait(timeout=60)
        system.stop_all()

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    print(
        f"\nPOST sent-email, 2 recipients, wrk {args.connections} connections, {args.duration}s, "
        f"fake SendGrid at {args.latency_ms} ms, medians of {args.rounds} rounds (each round in brackets):"
    )
    for name, runs in list(rounds.items()) + [("end to end (everything running)", e2e_rounds)]:
        print(
            f"  {name:38} {median(runs, 'rps'):6.0f} requests/s  p50 {median(runs, 'p50'):5.1f} ms  "
            f"p99 {median(runs, 'p99'):6.1f} ms  non-2xx {sum(r['non_2xx'] for r in runs)}  "
            f"({', '.join(str(round(r['rps'])) for r in runs)})"
        )
    api_only = median(rounds["API only (outbox, pipeline stopped)"], "rps")
    delivered = median(e2e_rounds, "delivered_emails")
    share = median(e2e_rounds, "share")
    shares = ", ".join(format(r["share"], ".0%") for r in e2e_rounds)
    print(
        f"  end to end: {delivered:.0f} emails/s ({delivered * 2:.0f} recipients/s) delivered and shown as sent, "
        f"{share:.0%} of the API-only rate (per round: {shares}); "
        f"outbox backlog when the load stopped: {', '.join(str(r['backlog']) for r in e2e_rounds)}"
    )
    print(
        "  CPU per request (ms, medians): "
        + "; ".join(
            f"{name}: server {median(runs, 'server_cpu_ms'):.2f}, Postgres {median(runs, 'postgres_cpu_ms'):.2f}, "
            f"RabbitMQ {median(runs, 'rabbitmq_cpu_ms'):.2f}, wrk {median(runs, 'wrk_cpu_ms'):.2f}"
            for name, runs in rounds.items()
        )
    )
    print(
        f"  POST to sent at {rate:.0f} emails/s: p50 {statistics.median(latencies):.0f} ms, "
        f"p99 {percentile(latencies, 99):.0f} ms over {len(latencies)} of {len(posted)} emails"
    )

    def cpu_line(cpu: dict[str, float]) -> str:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda item: -item[1]) if v >= 0.01)
        fake = sum(v for k, v in cpu.items() if k.startswith("fake"))
        return f"{shown}; total {sum(cpu.values()):.2f}, without the fake SendGrid {sum(cpu.values()) - fake:.2f}"

    print("  CPU per accepted email, end to end (ms): " + cpu_line(cpu_ms))
    celery_rate = median(celery_rounds, "delivered_emails")
    ratios = [r["ratio"] for r in celery_rounds]
    print(
        f"  Celery reference ({args.celery_pool} pool, concurrency {args.celery_concurrency}): "
        f"{celery_rate:.0f} emails/s sent (per round: "
        f"{', '.join(str(round(r['delivered_emails'])) for r in celery_rounds)}), "
        f"{median(celery_rounds, 'rps'):.0f}/s accepted; the project end to end at "
        f"{statistics.median(ratios):.0%} of it (per round: {', '.join(format(r, '.0%') for r in ratios)})"
    )
    print("  CPU per email, the Celery reference (ms): " + cpu_line(celery_cpu_ms))
    sync = median(rounds["sync publish (original design)"], "rps")
    bare = median(rounds["bare DRF inserts"], "rps")
    print(
        f"SUMMARY api_only={api_only:.0f}/s sync_publish={sync:.0f}/s bare={bare:.0f}/s "
        f"api_vs_sync={api_only / sync:.0%} api_vs_bare={api_only / bare:.0%} "
        f"e2e_accepted={median(e2e_rounds, 'rps'):.0f}/s e2e_sent_emails={delivered:.0f}/s e2e_share={share:.0%} "
        f"p50_ms={statistics.median(latencies):.0f} p99_ms={percentile(latencies, 99):.0f} "
        f"backlog_at_stop={max(r['backlog'] for r in e2e_rounds)} celery_sent_emails={celery_rate:.0f}/s "
        f"e2e_vs_celery={statistics.median(ratios):.0%} cpu_ms={sum(cpu_ms.values()):.2f} "
        f"celery_cpu_ms={sum(celery_cpu_ms.values()):.2f}"
    )


if __name__ == "__main__":
    main()
