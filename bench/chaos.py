"""The fault run, as long as you like: steady load while the relay, sender and projector are
killed with SIGKILL at random moments, RabbitMQ and Postgres are restarted and the fake SendGrid
answers 429 and 500 for a while; then every accepted email is accounted for.

    .venv/bin/python bench/chaos.py --duration 120 --rate 20 --kills 5 [--seed 1]

Prints one summary line (accepted, sent, failed, lost, duplicates, kills, restarts); exits 1 if
anything was lost or a duplicate has no kill to explain it. It restarts the local RabbitMQ and
Postgres: run it on a development machine, by hand.
"""

import argparse
import sys
import uuid

from common import ROOT, setup_django  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--rate", type=float, default=20, help="emails per second")
    parser.add_argument("--recipients", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of each of relay, sender, projector")
    parser.add_argument("--provider-errors", type=float, default=10, help="seconds of 429/500 answers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--database", default="emails_chaos")
    args = parser.parse_args()
    prefix = f"chaos-{uuid.uuid4().hex[:6]}"
    setup_django(database=args.database, settings_module="outbox_relay.settings", prefix=prefix,
                 RECONCILE_GRACE_SECONDS="0")

    from core.broker import Topology
    from tests.broker import declare, delete
    from tests.chaos import ChaosPlan, run_chaos
    from tests.system import System

    topology = Topology(prefix=prefix)
    declare(topology)
    system = System(database=args.database, prefix=prefix, log_dir=ROOT / "var" / "chaos" / prefix,
                    SENDER_LEASE_SECONDS=5, SENDER_RETRY_SCHEDULE="1s,2s,2s,5s,5s,10s,10s,10s",
                    SENDER_IN_DOUBT_GRACE_SECONDS=15)
    system.start_all()
    try:
        token, template_id = system.staff_with_template(prefix)
        plan = ChaosPlan(duration=args.duration, rate=args.rate, recipients=args.recipients,
                         kills={"outbox_relay": args.kills, "sender": args.kills, "projector": args.kills},
                         provider_errors_seconds=args.provider_errors, seed=args.seed,
                         converge_timeout=max(180, args.duration * 2))
        report = run_chaos(system, plan, token=token, template_id=template_id)
    finally:
        system.stop_all()
        delete(topology)
    print(f"SUMMARY {report.summary()}")
    for when, action, target in report.events:
        print(f"  {when:.1f} {action} {target}")
    return 1 if report.lost or report.never_reached_provider or report.unexplained_duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
