"""Client webhooks under the end-to-end load: does a slow or dead endpoint slow the sending
pipeline? Every process runs (both APIs under gunicorn, relay, sender, projector, notifier, the
fake SendGrid with added latency), and a local receiver (tests/webhook_receiver.py, in a process
of its own) plays the posting user's endpoints: one that hangs (never answers within the
notifier's timeout), one that answers 500, and fast ones that answer at once.

    .venv/bin/python bench/client_webhooks.py [--duration 8] [--rounds 2] [--connections 4] [--latency-ms 50]

Each round runs, back to back and from empty tables, the same load three times: without any
endpoint (the feature present and unused), with three fast endpoints (the cost of the webhooks'
own work: every email makes five status changes, fifteen deliveries), and with one hanging, one
failing and one fast endpoint. Each run measures, as bench/load.py does: the POST rate wrk gets
(closed loop), the emails/s shown as sent in the read model from the first POST to the last one
sent, then POST-to-sent latency (p50, p99) of emails posted at a fixed rate; the projector's mean
batch time; with endpoints, a fast endpoint's delivery lag (arrival at the receiver less the
status change's own time) and what each endpoint got. Every figure is the median of its rounds.
At the end, the notifier alone (the pipeline stopped) drains messages queued for one fast
endpoint: its deliveries per second.

Needs wrk. Run it by hand.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time
from datetime import datetime

from load import max_email_id, sql, wait_all_sent  # noqa: E402

from common import ROOT, cpu_by_group, cpu_delta, percentile, setup_django, wrk_post  # noqa: E402

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


def receiver_process(pipe, niceness: int) -> None:
    """The receiver, in a process of its own so that its threads do not compete with this one's
    for the GIL; answers `pipe` commands: ("url", kind) -> URL, ("reset",) -> None (lets go of the
    hanging requests), ("stats",) -> counts per kind, the fast endpoints' lags (ms), the most
    hanging requests at once. With `niceness` it takes only the CPU the platform leaves: the
    clients' servers are not the platform's, and on this machine they would otherwise compete
    with it for the same two cores."""
    from tests.webhook_receiver import Receiver

    if niceness:
        os.nice(niceness)
    receiver = Receiver(hang_seconds=3600)
    while True:
        command = pipe.recv()
        if command[0] == "url":
            pipe.send(receiver.url(command[1]))
        elif command[0] == "reset":
            receiver.release.set()
            time.sleep(0.2)
            receiver.release.clear()
            with receiver._lock:
                receiver.received.clear()
                receiver.most_at_once.clear()
            pipe.send(None)
        elif command[0] == "stats":
            lags = []
            for received in receiver.at("fast"):
                occurred = datetime.fromisoformat(json.loads(received.body)["data"]["occurred_at"])
                lags.append((received.at - occurred.timestamp()) * 1000)
            counts = {kind: len(receiver.at(kind)) for kind in ("fast", "fail", "hang")}
            pipe.send({"counts": counts, "lags": lags, "hang_at_once": receiver.most_at_once["hang"]})
        else:
            receiver.close()
            pipe.send(None)
            return


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


def notifier_throughput(system, ask, client, owner, count: int) -> float:
    """Deliveries per second of the notifier alone (the pipeline stopped), draining `count`
    messages queued at once for one fast endpoint."""
    import uuid

    from core.client_webhooks.sql import INSERT_MESSAGES_SQL

    for process in PIPELINE:
        system.processes[process].terminate()
        system.processes[process].wait(timeout=60)
    sql(f"TRUNCATE {TABLES} CASCADE")
    for endpoint_id in owner.webhook_endpoints.values_list("id", flat=True):
        client.call("DELETE", f"/api/v1/webhook-endpoints/{endpoint_id}/")
    ask("reset")
    status, endpoint = client.call("POST", "/api/v1/webhook-endpoints/", {"url": ask("url", "fast/alone")})
    assert status == 201, endpoint
    rows = [
        {
            "id": str(uuid.uuid4()),
            "endpoint_id": endpoint["id"],
            "email_id": n,
            "sequence": 1,
            "event_type": "email.sent",
            "payload": {"type": "email.sent", "timestamp": "2026-11-30T00:00:00+00:00", "data": {"email_id": n}},
        }
        for n in range(count)
    ]
    sql(INSERT_MESSAGES_SQL, [json.dumps(rows)])
    system.start("notifier")
    system.wait_ready("notifier")
    started = time.monotonic()
    while sql("SELECT count(*) FROM client_webhook_message WHERE state = 'pending'")[0][0]:
        time.sleep(0.05)
    return count / (time.monotonic() - started)


SHARED = ("other", "wrk", "rabbitmq", "postgres")
BACKENDS_SQL = (
    "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name <> ''"
)

CONFIGURATIONS = {
    "without endpoints": (),
    "three fast endpoints": ("fast/a", "fast/b", "fast/c"),
    "hanging + 500 + fast endpoints": ("hang/a", "fail/a", "fast/a"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run and each latency run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", default="emails_bench_hooks")
    parser.add_argument(
        "--throughput", type=int, default=5000, help="messages the notifier alone drains at the end (0: skip)"
    )
    parser.add_argument(
        "--receiver-nice", type=int, default=19, help="the receiver's niceness (0: it competes with the platform)"
    )
    args = parser.parse_args()
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)

    from core.accounts.models import User
    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import Http, System

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
    pipe, child_pipe = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_process, args=(child_pipe, args.receiver_nice), daemon=True)
    receiver.start()

    def ask(*command):
        pipe.send(command)
        return pipe.recv()

    system.start_all()
    system.start("notifier")
    system.wait_ready("notifier")
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
    try:
        token, template_id = system.staff_with_template("hooks", subject="Hi {{ name }}", body="<p>Hi {{ name }}</p>")
        owner = User.objects.get(email="hooks@example.com")
        client = Http(system.command_url, token)
        body = {"recipients": ["ann@example.com", "bob@example.org"], "template": template_id, "context": {"name": "A"}}
        url = f"{system.command_url}/api/v1/emails/sent-email/"
        wrk_post(url, body, token=token, connections=args.connections, duration=2)  # warm up

        for number in range(1, args.rounds + 1):
            for name, paths in CONFIGURATIONS.items():
                for endpoint_id in owner.webhook_endpoints.values_list("id", flat=True):
                    client.call("DELETE", f"/api/v1/webhook-endpoints/{endpoint_id}/")
                for process in PIPELINE:
                    system.processes[process].terminate()
                    system.processes[process].wait(timeout=60)
                purge(topology)
                sql(f"TRUNCATE {TABLES} CASCADE")
                ask("reset")
                for path in paths:
                    status, answer = client.call("POST", "/api/v1/webhook-endpoints/", {"url": ask("url", path)})
                    assert status == 201, answer
                for process in PIPELINE:
                    system.start(process)
                for process in PIPELINE:
                    system.wait_ready(process)
                batches_before = projector_batches(system)
                first_id = max_email_id()
                roots = {process: system.processes[process].pid for process in system.processes}
                backends = dict(sql(BACKENDS_SQL))
                cpu_before = cpu_by_group(roots, backends)
                started = time.time()
                figures, _ = wrk_post(url, body, token=token, connections=args.connections, duration=args.duration)
                accepted = sql("SELECT count(*) FROM emails_sentemail WHERE id > %s", [first_id])[0][0]
                last_sent = wait_all_sent(first_id, accepted, timeout=600)
                emails_per_second = accepted / (last_sent - started)
                backends |= dict(sql(BACKENDS_SQL))
                used = cpu_delta(cpu_before, cpu_by_group(roots, backends))
                # CPU per email (ms) of the sending pipeline and of the notifier (each with its
                # Postgres backends), from the first POST until the last email shows as sent.
                notifier_ms = sum(v for k, v in used.items() if "notifier" in k) * 1000 / accepted
                # Only this run's processes and their backends: RabbitMQ, the rest of Postgres and
                # the rest of the machine are shared with whatever else runs.
                pipeline_ms = (
                    sum(v for k, v in used.items() if k not in SHARED and "notifier" not in k) * 1000 / accepted
                )
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
                    "pipeline_cpu_ms": pipeline_ms,
                    "notifier_cpu_ms": notifier_ms,
                }
                line = ""
                if paths:
                    time.sleep(2)  # the last changes reach the fast endpoints
                    stats = ask("stats")
                    (queued,) = sql("SELECT count(*) FROM client_webhook_message")[0]
                    (done,) = sql("SELECT count(*) FROM client_webhook_message WHERE state = 'delivered'")[0]
                    run |= {
                        "lag_p50": statistics.median(stats["lags"]) if stats["lags"] else float("nan"),
                        "lag_p99": percentile(stats["lags"], 99) if stats["lags"] else float("nan"),
                        "messages": queued,
                        "delivered": done,
                    }
                    line = (
                        f"; {queued} messages, {done} delivered; fast endpoints' lag p50 {run['lag_p50']:.0f} ms "
                        f"p99 {run['lag_p99']:.0f} ms; received {stats['counts']} "
                        f"(hanging: at most {stats['hang_at_once']} at once)"
                    )
                runs[name].append(run)
                print(
                    f"round {number}, {name}: {figures['rps']:.0f} POST/s, {emails_per_second:.0f} emails/s sent, "
                    f"POST to sent at {rate:.0f}/s p50 {run['p50']:.0f} ms p99 {run['p99']:.0f} ms, "
                    f"projector batch {run['batch_ms']:.2f} ms, CPU per email: pipeline {pipeline_ms:.2f} ms, "
                    f"notifier {notifier_ms:.2f} ms" + line,
                    flush=True,
                )
        throughput = notifier_throughput(system, ask, client, owner, args.throughput) if args.throughput else 0.0
    finally:
        ask("close")
        system.stop_all()

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    print(
        f"\nPOST sent-email, 2 recipients, wrk {args.connections} connections, {args.duration}s, "
        f"fake SendGrid at {args.latency_ms} ms, medians of {args.rounds} rounds:"
    )
    for name, paths in CONFIGURATIONS.items():
        line = (
            f"  {name:32} {median(name, 'rps'):5.0f} POST/s  {median(name, 'emails_per_second'):5.0f} emails/s sent  "
            f"POST to sent p50 {median(name, 'p50'):4.0f} ms p99 {median(name, 'p99'):5.0f} ms  "
            f"projector batch {median(name, 'batch_ms'):.2f} ms  CPU per email: pipeline "
            f"{median(name, 'pipeline_cpu_ms'):.2f} ms, notifier {median(name, 'notifier_cpu_ms'):.2f} ms"
        )
        if paths:
            line += f"  fast endpoint lag p50 {median(name, 'lag_p50'):.0f} ms p99 {median(name, 'lag_p99'):.0f} ms"
        print(line)
    if throughput:
        print(
            f"  the notifier alone, {args.throughput} messages queued for one fast endpoint: "
            f"{throughput:.0f} deliveries/s"
        )


if __name__ == "__main__":
    main()
