"""The fault run, full length, with the sender's default settings: a steady load of emails while
the relay, sender and projector are SIGKILLed at random moments, Postgres is restarted, every
broker connection is closed again and again, the sender is cut off by a network partition longer
than two heartbeats, the fake SendGrid errs, times out (sends in doubt) and goes down for ten
minutes, poison messages and an email over the broker's size limit arrive; on a 3-node RabbitMQ
cluster beside the machine's broker (--cluster, the default) the node leading the sender's queue
is SIGKILLed and started again, otherwise the machine's broker is restarted. Then every accepted
email is accounted for (see tests/chaos.py): it prints progress, one SUMMARY line and the
timeline.

    .venv/bin/python bench/chaos.py                      # about 15 min of load, then recovery
    .venv/bin/python bench/chaos.py --duration 120 --outage 60 --partition 70 --no-cluster

Waits are the defaults (SENDER_LEASE_SECONDS 60, SENDER_IN_DOUBT_GRACE_SECONDS 300, the 32-hour
retry schedule, SENDGRID_TIMEOUT_SECONDS 10, BROKER_HEARTBEAT_SECONDS 30) unless --compressed
gives the test suite's. The outage is full length, so recovery takes the schedule's own time
(an email first tried as the outage began is tried again about 22 minutes later).

Exits 1 unless lost=0 duplicates=0 stuck=0 and nothing else went wrong. It restarts the local
Postgres (and RabbitMQ without --cluster) and needs root for the network namespace: run it on a
development machine, by hand.
"""

import argparse
import sys
import time
import uuid

from common import ROOT, setup_django  # noqa: E402

COMPRESSED = {
    "SENDER_LEASE_SECONDS": "5",
    "SENDER_RETRY_SCHEDULE": "1s,2s,2s,5s,5s,10s,10s,10s",
    "SENDER_IN_DOUBT_GRACE_SECONDS": "15",
    "SENDGRID_TIMEOUT_SECONDS": "5",
    "BROKER_HEARTBEAT_SECONDS": "4",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=900, help="seconds of load")
    parser.add_argument("--rate", type=float, default=10, help="emails per second")
    parser.add_argument("--recipients", type=int, default=2)
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs of each of relay, sender, projector")
    parser.add_argument("--provider-errors", type=float, default=30, help="seconds of 429/500/timeouts")
    parser.add_argument("--outage", type=float, default=600, help="seconds the provider answers only 500")
    parser.add_argument("--partition", type=float, default=90, help="seconds the sender is cut off")
    parser.add_argument("--churn", type=int, default=10, help="times every broker connection is closed")
    parser.add_argument("--poison", type=int, default=4)
    parser.add_argument("--oversized", type=int, default=2)
    parser.add_argument("--leader-kills", type=int, default=2, help="with --cluster")
    parser.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run on a 3-node cluster beside the machine's broker (default)",
    )
    parser.add_argument("--compressed", action="store_true", help="the test suite's short waits, not the defaults")
    parser.add_argument("--converge-timeout", type=float, default=3600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--database", default="emails_chaos")
    args = parser.parse_args()
    prefix = f"chaos-{uuid.uuid4().hex[:6]}"
    setup_django(
        database=args.database, settings_module="deployment.settings", prefix=prefix, RECONCILE_GRACE_SECONDS="0"
    )

    from django.test import override_settings

    from core.broker import Topology
    from tests.broker import declare, delete
    from tests.chaos import OVERSIZED_LIMIT, Broker, ChaosPlan, lowered_message_size_limit, run_chaos
    from tests.rabbit_cluster import RabbitCluster
    from tests.system import System

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    waits = COMPRESSED if args.compressed else {}
    topology = Topology(prefix=prefix)
    cluster = (
        RabbitCluster(base_port=5691, prefix="chaosbench", config=f"max_message_size = {OVERSIZED_LIMIT}\n")
        if args.cluster
        else None
    )
    limit = None if cluster else lowered_message_size_limit(Broker())
    if cluster is not None:
        say("starting a 3-node RabbitMQ cluster")
        cluster.__enter__()
    else:
        limit.__enter__()  # before the relay opens its channel
    try:
        url = cluster.url if cluster else None
        declare(topology, url=url)
        system = System(
            database=args.database,
            prefix=prefix,
            log_dir=ROOT / "var" / "chaos" / prefix,
            isolate=("sender",),
            **waits,
            **({"RABBITMQ_URL": url} if url else {}),
        )
        system.start_all()
        say(f"system up (logs in var/chaos/{prefix}); {args.duration:.0f}s of load at {args.rate}/s")
        try:
            token, template_id = system.staff_with_template(prefix)
            plan = ChaosPlan(
                duration=args.duration,
                rate=args.rate,
                recipients=args.recipients,
                kills={"outbox_relay": args.kills, "sender": args.kills, "projector": args.kills},
                restart_rabbitmq=cluster is None,
                restart_postgres=True,
                provider_errors_seconds=args.provider_errors,
                provider_timeout_seconds=int(waits.get("SENDGRID_TIMEOUT_SECONDS", 10)) + 2,
                churn=args.churn,
                partition_seconds=args.partition,
                outage_seconds=args.outage,
                poison=args.poison,
                oversized=args.oversized,
                leader_kills=args.leader_kills if cluster else 0,
                converge_timeout=args.converge_timeout,
                seed=args.seed,
            )
            with override_settings(**({"RABBITMQ_URL": url} if url else {})):
                report = run_chaos(system, plan, token=token, template_id=template_id, cluster=cluster, progress=say)
        finally:
            system.stop_all()
            if url is None:
                delete(topology)
    finally:
        (cluster or limit).__exit__(None, None, None)
    print(f"SUMMARY {report.summary()}")
    print(
        f"  waits: {'compressed (the suite' + chr(39) + 's)' if args.compressed else 'the sender defaults'}; "
        f"broker: {'a 3-node cluster' if cluster else 'the machine broker'}"
    )
    print(f"  timeline: {report.timeline()}")
    bad = {k: v for k, v in report.details.items() if k not in ("poison", "leaders") and v and v != ([], [])}
    if bad:
        print(f"  details: {bad}")
    wrong = (
        report.exited
        or report.lost
        or report.duplicates
        or report.stuck
        or report.unexpected_failures
        or report.dead_letters
        or report.leaders_moved != report.leader_kills
        or report.read_model_missing
        or report.read_model_behind
        or report.poison_parked != report.poison_published
        or report.oversized_failed != 2 * report.oversized_accepted
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
