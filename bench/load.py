"""End-to-end load benchmark on this machine, every process running (both APIs under gunicorn,
relay, sender, projector, the fake SendGrid with added latency), plus two references in the same
run:

    .venv/bin/python bench/load.py [--duration 20] [--connections 4] [--latency-ms 50]

1. references: the same POST load (wrk, 2 recipients) against the original design (the API
   publishing to RabbitMQ synchronously inside the request, no outbox) and a bare DRF endpoint
   that only does the same inserts;
2. API only: the real POST with the relay, sender and projector stopped;
3. end to end: the real POST with everything running: accepted emails/s, and recipients/s
   delivered and shown as sent in the read model, from the first POST to the last one sent;
   the outbox backlog when the load stops;
4. latency: emails posted at half the end-to-end rate, timed from the POST to "sent" in the read
   model: p50, p99.
Needs wrk. Run it by hand.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

from common import ROOT, cpu_by_group, setup_django, wrk_post  # noqa: E402

PREFIX = "bench-load"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def sql(query, params=()):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def wait_all_sent(since_id: int, count: int, timeout: float) -> float:
    """Wait until the `count` emails after `since_id` are sent (or beyond) in the read model;
    returns the time.time() when the last one got there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (done,) = sql("SELECT count(*) FROM read_sent_email WHERE id > %s AND status IN ('sent', 'delivered')",
                      [since_id])[0]
        if done >= count:
            return time.time()
        time.sleep(0.1)
    raise SystemExit(f"only {done} of {count} emails sent within {timeout}s")


def max_email_id() -> int:
    return sql("SELECT coalesce(max(id), 0) FROM emails_sentemail")[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the references and the API")
    parser.add_argument("--database", default="emails_bench_load")
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="outbox_relay.settings", prefix=PREFIX)

    from core.accounts.models import User
    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import Http, System

    topology = Topology(prefix=PREFIX)
    declare(topology)
    purge(topology)
    sql("TRUNCATE outbox, emails_sentemailrecipient, emails_sentemail, sender_delivery, read_sent_email, "
        "read_sent_email_event, read_processed_event, webhook_provider_event CASCADE")
    system = System(database=args.database, prefix=PREFIX, log_dir=ROOT / "var" / "load",
                    FAKE_SENDGRID_LATENCY_MS=args.latency_ms, LOG_LEVEL="WARNING")
    system.start_all()
    variants = None
    results = {}
    try:
        api = Http(system.command_url)
        api.call("POST", "/api/v1/users/register/", {"email": "load@example.com", "username": "load",
                                                     "password": "quiet-meadow-Lantern-46"})
        User.objects.filter(email="load@example.com").update(is_staff=True)
        token = api.call("POST", "/api/v1/users/login/", {"username": "load@example.com",
                                                          "password": "quiet-meadow-Lantern-46"})[1]["token"]
        template = Http(system.command_url, token).call("POST", "/api/v1/emails/email-template/",
                                                        {"name": f"load-{int(time.time())}", "subject": "Hi {{ name }}",
                                                         "body": "<p>Hi {{ name }}</p>"})[1]
        body = {"recipients": ["ann@example.com", "bob@example.org"], "template": template["id"],
                "context": {"name": "Ann"}}

        # 1 and 2. The references (on a gunicorn of their own, 2 workers like the command API) and
        # the API alone (the pipeline stopped), in interleaved rounds: this machine drifts by more
        # than the differences measured, so each figure is the median of its rounds.
        variants = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "command_api.wsgi:application", "--workers", "2",
             "--bind", "127.0.0.1:8019"], cwd=ROOT,
            env=system.env | {"DJANGO_SETTINGS_MODULE": "variants_settings", "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # gunicorn boots; the endpoints answer only POST
        url = f"{system.command_url}/api/v1/emails/sent-email/"
        for name in ("outbox_relay", "sender", "projector"):
            system.processes[name].terminate()
            system.processes[name].wait(timeout=60)
        targets = {"sync publish (original design)": ("http://127.0.0.1:8019/sync-publish/", token),
                   "bare DRF inserts": ("http://127.0.0.1:8019/bare/", None),
                   "API only (outbox, pipeline stopped)": (url, token)}
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (target, tok) in targets.items():
                wrk_post(target, body, token=tok, connections=args.connections, duration=2)
                rounds[name].append(wrk_post(target, body, token=tok, connections=args.connections,
                                             duration=args.duration)[0])
        for name, runs in rounds.items():
            if not runs:  # --rounds 0: the end-to-end part only
                continue
            results[name] = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99", "non_2xx")}
            results[name]["runs"] = [round(r["rps"]) for r in runs]
        variants.terminate()
        variants.wait(timeout=30)
        variants = None
        # The references' emails have no outbox row and will never be sent: drop them.
        orphans = ("SELECT e.id FROM emails_sentemail e WHERE NOT EXISTS (SELECT 1 FROM outbox o "
                   "WHERE o.aggregatetype = 'sent_email' AND o.aggregateid = e.id::text)")
        sql(f"DELETE FROM emails_sentemailrecipient WHERE email_id IN ({orphans})")
        sql(f"DELETE FROM emails_sentemail WHERE id IN ({orphans})")
        backlog_emails = max_email_id()
        for name in ("outbox_relay", "sender", "projector"):
            system.start(name)
            system.wait_ready(name)
        wait_all_sent(0, sql("SELECT count(*) FROM emails_sentemail")[0][0], timeout=600)  # drain, unmeasured

        # 3. End to end, everything running.
        first_id = max_email_id()
        roots = {name: process.pid for name, process in system.processes.items()} | {"this script": os.getpid()}
        backends = dict(sql("SELECT pid, application_name FROM pg_stat_activity WHERE application_name <> ''"))
        cpu_before = cpu_by_group(roots, backends)
        started = time.time()
        e2e, _ = wrk_post(url, body, token=token, connections=args.connections, duration=args.duration)
        accepted = sql("SELECT count(*) FROM emails_sentemail WHERE id > %s", [first_id])[0][0]
        (backlog,) = sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0]
        last_sent = wait_all_sent(first_id, accepted, timeout=600)
        cpu_after = cpu_by_group(roots, backends)
        cpu_ms = {key: (cpu_after.get(key, 0) - cpu_before.get(key, 0)) * 1000 / accepted for key in cpu_after}
        results["end to end (everything running)"] = e2e
        delivered_rate = accepted * 2 / (last_sent - started)

        # 4. Latency at half the end-to-end rate.
        rate = e2e["rps"] / 2
        posted: dict[int, float] = {}
        sent_at: dict[int, float] = {}
        stop = threading.Event()
        client = Http(system.command_url, token)

        def watch():
            while not stop.is_set() or len(sent_at) < len(posted):
                ids = [i for i in posted if i not in sent_at]
                if ids:
                    now = time.time()
                    for (email_id,) in sql("SELECT id FROM read_sent_email WHERE id = ANY(%s) AND status IN "
                                           "('sent', 'delivered')", [ids]):
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
        system.stop_all()

    print(f"\nPOST sent-email, 2 recipients, wrk {args.connections} connections, {args.duration}s, "
          f"fake SendGrid at {args.latency_ms} ms:")
    for name, r in results.items():
        runs = f"  (rounds: {', '.join(map(str, r['runs']))})" if "runs" in r else ""
        print(f"  {name:38} {r['rps']:6.0f} requests/s  p50 {r['p50']:5.1f} ms  p99 {r['p99']:6.1f} ms  "
              f"non-2xx {r['non_2xx']:.0f}{runs}")
    api_only = results.get("API only (outbox, pipeline stopped)", {}).get("rps", float("nan"))
    print(f"  end to end: {accepted} emails accepted at {e2e['rps']:.0f}/s; {delivered_rate:.0f} recipients/s "
          f"delivered and shown as sent ({delivered_rate / 2 / api_only:.0%} of the API-only rate in emails); "
          f"outbox backlog when the load stopped: {backlog}")
    print("  CPU per accepted email, end to end (ms): " + ", ".join(
        f"{key} {value:.2f}" for key, value in sorted(cpu_ms.items(), key=lambda item: -item[1]) if value >= 0.01)
        + f"; total {sum(cpu_ms.values()):.2f}")
    print(f"  POST to sent at {rate:.0f} emails/s: p50 {statistics.median(latencies):.0f} ms, "
          f"p99 {percentile(latencies, 99):.0f} ms over {len(latencies)} of {len(posted)} emails")
    sync = results.get("sync publish (original design)", {}).get("rps", float("nan"))
    bare = results.get("bare DRF inserts", {}).get("rps", float("nan"))
    print(f"SUMMARY api_only={api_only:.0f}/s sync_publish={sync:.0f}/s bare={bare:.0f}/s "
          f"api_vs_sync={api_only / sync:.0%} api_vs_bare={api_only / bare:.0%} e2e_accepted={e2e['rps']:.0f}/s "
          f"e2e_sent_recipients={delivered_rate:.0f}/s p50_ms={statistics.median(latencies):.0f} "
          f"p99_ms={percentile(latencies, 99):.0f} backlog_at_stop={backlog} drained_before={backlog_emails}")


if __name__ == "__main__":
    main()
