"""Where the CPU of one email goes, end to end: every process running (both APIs under gunicorn,
relay, sender, projector, the fake SendGrid at 50 ms posting signed webhooks back), wrk POSTing
2-recipient emails, then each process's CPU (Postgres split by the client each backend serves)
divided by the emails accepted. Shorter than bench/load.py (no references, no Celery), for
comparing two settings or two commits back to back:

    .venv/bin/python bench/pipeline_cpu.py [--duration 18] [--runs 1] [--env NAME=VALUE ...]

`--env` sets a variable for every process of the pipeline (say OUTBOX_GATHER_BUSY_MS=5). This
machine drifts by more than the differences it is used for: interleave the runs of what you
compare (A, B, A, B) and compare neighbours. The tables are not truncated between runs, so a
later run works on larger tables; each run starts with `VACUUM (ANALYZE)` of the database, as
autovacuum keeps a production database (this machine's Postgres runs with autovacuum off, and
with statistics gone stale the sender's prepared outcome statement took 3.3 ms a call on 50,000
deliveries, against 0.2 ms after an ANALYZE). Prints, per run, the emails accepted, the POST rate, the
relay's mean batch, and the CPU per email of each process. Run it by hand.
"""

import argparse
import re
import time
import urllib.request

from common import ROOT, cpu_by_group, cpu_delta, send_load, setup_django, wrk_post  # noqa: E402

PREFIX = "bench-pipeline-cpu"


def relay_mean_batch(system) -> float:
    metrics = urllib.request.urlopen(system.probe_url("outbox_relay").replace("/readyz", "/metrics")).read().decode()

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return value("outbox_relay_batch_size_sum") / max(1.0, value("outbox_relay_batch_size_count"))


def one_run(args, env: dict[str, str]) -> None:
    from django.db import connection

    from core.broker import Topology
    from tests.broker import declare, purge
    from tests.system import System

    topology = Topology(prefix=PREFIX)
    declare(topology)
    purge(topology)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE)")
    system = System(
        database=args.database,
        prefix=PREFIX,
        log_dir=ROOT / "var" / "pipeline-cpu",
        FAKE_SENDGRID_LATENCY_MS=50,
        LOG_LEVEL="WARNING",
        **env,
    )
    system.start_all()
    try:
        url, body, token = send_load(system)
        wrk_post(url, body, token=token, connections=4, duration=3)  # warm up
        time.sleep(2)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid, application_name FROM pg_stat_activity WHERE application_name <> ''")
            backends = dict(cursor.fetchall())
            cursor.execute("SELECT coalesce(max(id), 0) FROM emails_sentemail")
            (first,) = cursor.fetchone()
        roots = {name: process.pid for name, process in system.processes.items()}
        before = cpu_by_group(roots, backends)
        figures, _ = wrk_post(url, body, token=token, connections=4, duration=args.duration)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM emails_sentemail WHERE id > %s", [first])
            (accepted,) = cursor.fetchone()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM read_sent_email WHERE id > %s AND status IN ('sent', 'delivered')", [first]
                )
                if cursor.fetchone()[0] >= accepted:
                    break
                time.sleep(0.1)
            time.sleep(1)  # the webhook's last statuses
            cursor.execute("SELECT pid, application_name FROM pg_stat_activity WHERE application_name <> ''")
            backends |= dict(cursor.fetchall())
        used = cpu_delta(before, cpu_by_group(roots, backends))
        print(
            f"{accepted} emails accepted, {figures['rps']:.0f} POST/s, relay batches of {relay_mean_batch(system):.1f} "
            f"rows on average; CPU per email (ms), {', '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}:"
        )
        for name, seconds in sorted(used.items(), key=lambda item: -item[1]):
            if seconds * 1000 / accepted >= 0.005:
                print(f"  {name:32} {seconds * 1000 / accepted:5.2f}")
        print(f"  {'total':32} {sum(used.values()) * 1000 / accepted:5.2f}", flush=True)
    finally:
        system.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=18, help="seconds of wrk")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--database", default="emails_bench_pipeline_cpu")
    args = parser.parse_args()
    if bad := [item for item in args.env if "=" not in item or not item.split("=", 1)[0]]:
        parser.error(f"--env takes NAME=VALUE, got {bad[0]!r}")
    env = dict(item.split("=", 1) for item in args.env)
    setup_django(database=args.database, settings_module="deployment.settings", prefix=PREFIX)
    for _ in range(args.runs):
        one_run(args, env)


if __name__ == "__main__":
    main()
