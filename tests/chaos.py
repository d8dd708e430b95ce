"""The fault run: a steady load of emails while processes are killed, the broker and the
database restarted and the provider misbehaves; then every accepted email is accounted for.
Used by tests/faults/test_chaos.py (a short form) and bench/chaos.py (as long as you like)."""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field

from django.db import connection

from tests import services
from tests.system import Http, System

TERMINAL = ("delivered", "failed", "partially_failed")


@dataclass
class ChaosPlan:
    duration: float = 20.0  # seconds of load
    rate: float = 8.0  # emails per second
    recipients: int = 2
    kills: dict = field(default_factory=lambda: {"outbox_relay": 2, "sender": 2, "projector": 2})
    restart_rabbitmq: bool = True
    restart_postgres: bool = True
    provider_errors_seconds: float = 3.0  # the fake answers 429 and 500 for this long
    converge_timeout: float = 180.0
    seed: int | None = None


@dataclass
class ChaosReport:
    accepted: int = 0
    refused: int = 0
    sent: int = 0
    failed: int = 0
    lost: int = 0
    never_reached_provider: int = 0
    duplicates: int = 0
    unexplained_duplicates: int = 0
    kills: int = 0
    restarts: int = 0
    read_model_missing: int = 0
    read_model_behind: int = 0
    events: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"accepted={self.accepted} sent={self.sent} failed={self.failed} lost={self.lost} "
                f"duplicates={self.duplicates} (unexplained {self.unexplained_duplicates}) kills={self.kills} "
                f"restarts={self.restarts} refused_during_outages={self.refused} "
                f"read_model_missing={self.read_model_missing} read_model_behind={self.read_model_behind}")


def _load(client: Http, template_id: int, plan: ChaosPlan, accepted: dict, report: ChaosReport, stop: threading.Event):
    interval, n, started = 1.0 / plan.rate, 0, time.monotonic()
    while not stop.is_set() and time.monotonic() - started < plan.duration:
        recipients = [f"c{n}-{i}@example.com" for i in range(plan.recipients)]
        try:
            status, body = client.call("POST", "/api/v1/emails/sent-email/",
                                       {"recipients": recipients, "template": template_id}, timeout=10)
        except OSError:
            status, body = None, None
        if status == 202:
            accepted[body["id"]] = recipients
        else:
            report.refused += 1  # the API said no (the database was restarting): the client knows
        n += 1
        time.sleep(max(0.0, started + n * interval - time.monotonic()))


def _chaos(system: System, plan: ChaosPlan, report: ChaosReport, rng: random.Random):
    moments = []
    for name, count in plan.kills.items():
        moments += [(rng.uniform(1.0, plan.duration - 1.0), "kill", name) for _ in range(count)]
    if plan.restart_rabbitmq:
        moments.append((rng.uniform(2.0, plan.duration * 0.5), "restart", "rabbitmq"))
    if plan.restart_postgres:
        moments.append((rng.uniform(plan.duration * 0.5, plan.duration - 2.0), "restart", "postgres"))
    if plan.provider_errors_seconds:
        moments.append((rng.uniform(1.0, plan.duration - plan.provider_errors_seconds), "provider", "errors"))
    started = time.monotonic()
    for at, action, target in sorted(moments):
        time.sleep(max(0.0, started + at - time.monotonic()))
        report.events.append((time.time(), action, target))
        if action == "kill":
            system.kill(target)
            report.kills += 1
            system.start(target)
        elif target == "rabbitmq":
            services.stop_rabbitmq()
            time.sleep(1.0)
            services.start_rabbitmq()
            report.restarts += 1
        elif target == "postgres":
            services.restart_postgres()
            report.restarts += 1
        else:
            system.fake().call("PUT", "/_faults", {"rate_429": 0.25, "rate_500": 0.25, "retry_after": 1})
            time.sleep(plan.provider_errors_seconds)
            system.fake().call("PUT", "/_faults", {"rate_429": 0, "rate_500": 0})


def _read_statuses(ids) -> dict[int, str]:
    connection.close()  # Postgres may have restarted under us
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, status FROM read_sent_email WHERE id = ANY(%s)", [list(ids)])
        return dict(cursor.fetchall())


def run_chaos(system: System, plan: ChaosPlan, *, token: str, template_id: int) -> ChaosReport:
    """Run the plan against a started `system`; returns the accounting (see ChaosReport)."""
    rng = random.Random(plan.seed)
    report, accepted, stop = ChaosReport(), {}, threading.Event()
    load = threading.Thread(target=_load, args=(Http(system.command_url, token), template_id, plan, accepted,
                                                report, stop))
    load.start()
    try:
        _chaos(system, plan, report, rng)
    finally:
        load.join()

    deadline = time.monotonic() + plan.converge_timeout
    statuses = {}
    while time.monotonic() < deadline:
        try:
            statuses = _read_statuses(accepted)
        except Exception:  # the database is still coming back
            time.sleep(1)
            continue
        if len(statuses) == len(accepted) and all(s in TERMINAL for s in statuses.values()):
            break
        time.sleep(1)

    report.accepted = len(accepted)
    report.sent = sum(1 for s in statuses.values() if s == "delivered")
    report.failed = sum(1 for s in statuses.values() if s in ("failed", "partially_failed"))
    report.lost = sum(1 for email_id in accepted if statuses.get(email_id) not in TERMINAL)

    calls = collections.defaultdict(list)
    for message in system.accepted_calls():
        for recipient in message["recipients"]:
            calls[(int(recipient["custom_args"]["email_id"]), recipient["email"])].append(message["received_at"])
    wanted = {(email_id, r) for email_id, recipients in accepted.items() for r in recipients}
    report.never_reached_provider = len(wanted - set(calls))
    # A duplicate is explained when the sender died, or lost its database, right after the first
    # call was accepted: between SendGrid's 202 and the sender's commit.
    breaks = [t for t, action, target in report.events if target in ("sender", "postgres")]
    for key in wanted & set(calls):
        times = sorted(calls[key])
        if len(times) > 1:
            report.duplicates += len(times) - 1
            if not any(times[0] - 1.0 <= t <= times[0] + 10.0 for t in breaks):
                report.unexplained_duplicates += len(times) - 1

    from query_api.rebuild import read_model_reconcile

    connection.close()
    reconciled = read_model_reconcile(limit=len(accepted) + 10)
    report.read_model_missing, report.read_model_behind = len(reconciled.missing), len(reconciled.behind)
    return report
