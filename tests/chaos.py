"""The fault run: a steady load of emails while processes are killed, the broker and the database
restarted, connections cut, the sender partitioned, the provider misbehaves or goes away, and bad
messages arrive; then every accepted email is accounted for. Used by tests/faults/test_chaos.py
(short forms) and bench/chaos.py (as long as you like, with the sender's default settings).

The accounting, from the write side, the read side and the fake SendGrid's own record of calls:
- `stuck`: accepted emails not in a terminal state (every recipient sent or failed) at the end;
- `lost`: accepted recipients the provider never received and nothing failed with a reason;
- `duplicates`: provider calls beyond the first for one email's recipient;
- `unexpected_failures`: failed recipients other than the oversized emails', which must fail;
- `dead_letters`: messages of this run that reached a dead-letter queue other than the poison
  (a healthy message dead-lettered through the delivery limit shows here), and `poison_parked`,
  the poison messages kept for ops.
"""

from __future__ import annotations

import collections
import random
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.db import connection

from tests import services
from tests.system import Http, System

TERMINAL = ("delivered", "failed", "partially_failed", "suppressed")  # the read model's
BROKER_DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024  # RabbitMQ 3.10's


@dataclass
class ChaosPlan:
    duration: float = 20.0  # seconds of load
    rate: float = 8.0  # emails per second
    recipients: int = 2
    kills: dict = field(default_factory=lambda: {"outbox_relay": 2, "sender": 2, "projector": 2})
    restart_rabbitmq: bool = True
    restart_postgres: bool = True
    provider_errors_seconds: float = 3.0  # the fake answers 429, 500 and (in doubt) timeouts for this long
    # A timeout: the fake takes the mail this long after the call, when the sender's client (its
    # SENDGRID_TIMEOUT_SECONDS) has given up; below SENDER_IN_DOUBT_GRACE_SECONDS, as SendGrid is.
    provider_timeout_seconds: float = 12.0
    provider_latency_ms: int = 0  # every call this slow during the load (a backlog builds in the prefetch)
    churn: int = 0  # `rabbitmqctl close_all_connections`, this many times spread over the load
    partition_seconds: float = 0.0  # the sender (isolated) cut off from everything this long, once
    outage_seconds: float = 0.0  # the provider answers every call with 500 this long, once
    poison: int = 0  # malformed messages published straight to the sender's queue
    oversized: int = 0  # emails over the broker's message size limit (lowered for the run) once rendered
    leader_kills: int = 0  # cluster: SIGKILL the node leading the sender's queue, start it again
    leader_down_seconds: float = 5.0
    converge_timeout: float = 180.0
    seed: int | None = None


@dataclass
class ChaosReport:
    accepted: int = 0
    refused: int = 0
    unanswered: int = 0  # written though the client got no 202 (a commit cut off): finished all the same
    sent: int = 0
    failed: int = 0
    stuck: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected_failures: int = 0
    oversized_accepted: int = 0
    oversized_failed: int = 0  # recipients
    dead_letters: int = 0
    poison_published: int = 0
    poison_parked: int = 0
    kills: int = 0
    restarts: int = 0
    churns: int = 0
    partitions: int = 0
    outages: int = 0
    leader_kills: int = 0
    leaders_moved: int = 0  # leader kills after which another node led the sender's queue
    read_model_missing: int = 0
    read_model_behind: int = 0
    exited: list = field(default_factory=list)  # processes that died by themselves (none was asked to)
    converged_after: float = 0.0  # seconds from the end of the load until everything was terminal
    events: list = field(default_factory=list)
    details: dict = field(default_factory=dict)  # which ids made a count that should be 0 non-zero

    def timeline(self) -> str:
        started = self.events[0][0] if self.events else 0.0
        return " ".join(f"{at - started:.1f}s:{action}:{target}" for at, action, target in self.events)

    def summary(self) -> str:
        return (
            f"accepted={self.accepted} sent={self.sent} failed={self.failed} lost={self.lost} "
            f"duplicates={self.duplicates} stuck={self.stuck} unexpected_failures={self.unexpected_failures} "
            f"oversized_failed={self.oversized_failed} dead_letters={self.dead_letters} "
            f"poison_parked={self.poison_parked} kills={self.kills} restarts={self.restarts} "
            f"churns={self.churns} partitions={self.partitions} outages={self.outages} "
            f"leader_kills={self.leader_kills} leaders_moved={self.leaders_moved} "
            f"refused_during_outages={self.refused} unanswered={self.unanswered} "
            f"read_model_missing={self.read_model_missing} read_model_behind={self.read_model_behind} "
            f"exited={','.join(self.exited) or 'none'} converged_after={self.converged_after:.0f}s"
        )


class Broker:
    """The RabbitMQ of the run: the machine's, or a tests.rabbit_cluster.RabbitCluster."""

    def __init__(self, cluster=None):
        self.cluster = cluster

    def ctl(self, *args: str) -> None:
        if self.cluster is None:
            subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)
            return
        for node in self.cluster.running():
            self.cluster.ctl(node, "-q", *args, check=False)

    def close_all_connections(self) -> None:
        self.ctl("close_all_connections", "fault run: connection churn")

    def set_max_message_size(self, size: int) -> None:
        """For channels opened from now on (a running relay keeps its limit until it reconnects).
        It lasts across `stop_app`/`start_app`; a cluster's nodes have it in their config too."""
        self.ctl("eval", f"application:set_env(rabbit, max_message_size, {size}).")


def _load(client: Http, template_id: int, plan: ChaosPlan, accepted: dict, report: ChaosReport, stop: threading.Event):
    interval, n, started = 1.0 / plan.rate, 0, time.monotonic()
    while not stop.is_set() and time.monotonic() - started < plan.duration:
        recipients = [f"c{n}-{i}@example.com" for i in range(plan.recipients)]
        try:
            status, body = client.call(
                "POST", "/api/v1/emails/sent-email/", {"recipients": recipients, "template": template_id}, timeout=10
            )
        except OSError:
            status, body = None, None
        if status == 202:
            accepted[body["id"]] = recipients
        else:
            report.refused += 1  # the API said no (the database was restarting): the client knows
            report.details.setdefault("refused", []).append((round(time.time(), 1), status, str(body)[:120]))
        n += 1
        time.sleep(max(0.0, started + n * interval - time.monotonic()))


def _moments(plan: ChaosPlan, rng: random.Random) -> list[tuple[float, str, str]]:
    """The run's timeline. The partition comes first, and nothing else that breaks the sender's
    connection falls in it or just before it: it must cut off a sender that is connected and
    consuming, for the broker and the sender to find out through missed heartbeats alone."""
    d = plan.duration
    moments, quiet = [], (0.0, 0.0)
    if plan.partition_seconds:
        at = rng.uniform(4.0, max(4.0, d - plan.partition_seconds))
        moments += [(at, "cut", "sender"), (at + plan.partition_seconds, "heal", "sender")]
        quiet = (at - 6.0, at + plan.partition_seconds + 1.0)

    def when(low: float, high: float, *, breaks_sender: bool = True) -> float:
        """A moment in [low, high], outside the quiet stretch when it would break the sender."""
        spans = [(low, high)]
        if breaks_sender:
            spans = [(a, b) for a, b in ((low, min(high, quiet[0])), (max(low, quiet[1]), high)) if b > a]
            if not spans:
                raise ValueError("the run is too short for its faults: make it longer")
        pick = rng.uniform(0, sum(b - a for a, b in spans))
        for a, b in spans:
            if pick <= b - a:
                return a + pick
            pick -= b - a
        return spans[-1][1]

    for name, count in plan.kills.items():
        moments += [(when(1.0, d - 1.0, breaks_sender=name == "sender"), "kill", name) for _ in range(count)]
    if plan.restart_rabbitmq:
        moments.append((when(2.0, d * 0.5), "restart", "rabbitmq"))
    if plan.restart_postgres:
        moments.append((when(d * 0.5, d - 2.0), "restart", "postgres"))
    if plan.provider_errors_seconds:
        at = when(1.0, max(1.0, d - plan.provider_errors_seconds), breaks_sender=False)
        moments += [(at, "provider", "errors"), (at + plan.provider_errors_seconds, "provider", "errors-end")]
    if plan.outage_seconds:
        at = when(1.0, max(1.0, d - plan.outage_seconds), breaks_sender=False)
        moments += [(at, "provider", "outage"), (at + plan.outage_seconds, "provider", "outage-end")]
    moments += [(when(1.0, d - 1.0), "churn", "rabbitmq") for _ in range(plan.churn)]
    moments += [(when(1.0, d - 1.0, breaks_sender=False), "poison", "sender") for _ in range(plan.poison)]
    moments += [(when(1.0, d - 1.0, breaks_sender=False), "oversized", "command_api") for _ in range(plan.oversized)]
    # One node down at a time (a second would take the majority), each kill in its own stretch.
    stretch = (d - 3.0) / max(1, plan.leader_kills)
    for n in range(plan.leader_kills):
        start = 2.0 + n * stretch
        at = when(start, max(start, start + stretch - plan.leader_down_seconds - 1.0))
        moments += [(at, "leader", "kill"), (at + plan.leader_down_seconds, "leader", "start")]
    return sorted(moments)


class _Run:
    """One run's moving parts, so the timeline can act on them."""

    def __init__(self, system: System, plan: ChaosPlan, broker: Broker, token: str, report: ChaosReport):
        self.system, self.plan, self.broker, self.report = system, plan, broker, report
        self.api = Http(system.command_url, token)
        self.prefix = system.env["BROKER_PREFIX"]
        self.poison_ids: list[str] = []
        self.oversized_ids: list[int] = []
        self.oversized_template: int | None = None
        self.killed_leader = None
        self.outage_active = self.errors_active = False  # what the fake does; an outage outranks errors

    def act(self, action: str, target: str) -> None:
        report = self.report
        if action == "kill":
            self.system.kill(target)
            report.kills += 1
            self.system.start(target)
        elif action == "restart" and target == "rabbitmq":
            services.stop_rabbitmq()
            time.sleep(1.0)
            services.start_rabbitmq()
            report.restarts += 1
        elif action == "restart":
            services.restart_postgres()
            report.restarts += 1
        elif action == "provider":
            if target == "outage":
                report.outages += 1
            self.outage_active = target == "outage" or (self.outage_active and target != "outage-end")
            self.errors_active = target == "errors" or (self.errors_active and target != "errors-end")
            self._apply_provider()
        elif action == "cut":
            self.system.cut(target)
            report.partitions += 1
        elif action == "heal":
            self.system.heal(target)
        elif action == "churn":
            self.broker.close_all_connections()
            report.churns += 1
        elif action == "poison":
            self._poison()
        elif action == "oversized":
            self._oversized()
        elif action == "leader" and target == "kill":
            cluster, queue = self.broker.cluster, f"{self.prefix}.sender"
            self.killed_leader = cluster.leader_of(queue)
            report.details.setdefault("leaders", []).append(
                (self.killed_leader.name, len(cluster.members_of(queue)), len(cluster.running()))
            )
            cluster.kill(self.killed_leader)
            report.leader_kills += 1
            deadline = time.monotonic() + 30  # a new leader among the others, elected by the quorum
            while time.monotonic() < deadline:
                try:
                    if cluster.leader_of(queue) != self.killed_leader:
                        report.leaders_moved += 1
                        break
                except LookupError:
                    pass
                time.sleep(0.5)
        elif action == "leader":
            self.broker.cluster.start(self.killed_leader)

    def _apply_provider(self) -> None:
        if self.outage_active:
            faults = {"rate_429": 0, "rate_500": 1.0, "rate_timeout": 0}
        elif self.errors_active:
            # 429s and 500s, and timeouts: the fake takes the mail but answers after the client gave
            # up, so the sender is in doubt and must learn from the provider's events.
            faults = {
                "rate_429": 0.2,
                "rate_500": 0.2,
                "rate_timeout": 0.05,
                "retry_after": 1,
                "timeout_seconds": self.plan.provider_timeout_seconds,
            }
        else:
            faults = {"rate_429": 0, "rate_500": 0, "rate_timeout": 0}
        self.system.fake().call("PUT", "/_faults", faults)

    def _poison(self) -> None:
        from core.broker import Topology
        from tests.broker import publish

        message_id = f"poison-{uuid.uuid4().hex[:12]}"
        raw = b"{not json" if len(self.poison_ids) % 2 == 0 else b'{"type": "email.requested", "schema_version": 99}'
        try:
            publish(
                Topology(prefix=self.prefix),
                {},
                message_id=message_id,
                raw=raw,
                url=self.system.env.get("RABBITMQ_URL"),
            )
        except Exception as exc:  # the broker is restarting: that is the run's business, not ours
            self.report.events.append((time.time(), "poison not published", repr(exc)[:80]))
            return
        self.poison_ids.append(message_id)

    def _oversized(self) -> None:
        if self.oversized_template is None:
            status, template = self.api.call(
                "POST",
                "/api/v1/emails/email-template/",
                {"name": f"oversized-{uuid.uuid4().hex[:8]}", "subject": "Big", "body": "<p>{{ text }}</p>"},
            )
            assert status == 201, template
            self.oversized_template = template["id"]
        status, body = self.api.call(
            "POST",
            "/api/v1/emails/sent-email/",
            {
                "recipients": ["big-a@example.com", "big-b@example.com"],
                "template": self.oversized_template,
                "context": {"text": "x" * (OVERSIZED_LIMIT + 64 * 1024)},
            },
            timeout=30,
        )
        if status == 202:
            self.oversized_ids.append(body["id"])
        else:
            self.report.refused += 1


# The broker's message size limit during a run with oversized emails: above any ordinary email,
# below what the command API accepts (RENDER_MAX_BYTES, 1 MiB by default).
OVERSIZED_LIMIT = 256 * 1024


def _chaos(run: _Run, rng: random.Random) -> None:
    if run.plan.provider_latency_ms:
        run.system.fake().call("PUT", "/_faults", {"latency_ms": run.plan.provider_latency_ms})
    started = time.monotonic()
    for at, action, target in _moments(run.plan, rng):
        time.sleep(max(0.0, started + at - time.monotonic()))
        run.report.events.append((time.time(), action, target))
        run.act(action, target)
    # Whatever is still on ends with the load: the rest of the run is recovery.
    if run.outage_active or run.errors_active or run.plan.provider_latency_ms:
        run.outage_active = run.errors_active = False
        run._apply_provider()
        run.system.fake().call("PUT", "/_faults", {"latency_ms": 0})


def _write_side(ids) -> dict[tuple[int, str], str]:
    """(email id, recipient) → its terminal state if any delivery of it has one, else the latest."""
    connection.close()  # Postgres may have restarted under us
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.email_id, r.address, coalesce("
            "  max(d.state) FILTER (WHERE d.state IN ('sent', 'failed')), max(d.state), 'none') "
            "FROM emails_sentemailrecipient r LEFT JOIN sender_delivery d "
            "  ON d.email_id = r.email_id AND lower(d.recipient) = lower(r.address) "
            "WHERE r.email_id = ANY(%s) GROUP BY 1, 2",
            [list(ids)],
        )
        return {(email_id, email): state for email_id, email, state in cursor.fetchall()}


def _unanswered(known: dict) -> dict[int, list[str]]:
    """The load user's emails the database has and the client was not told of."""
    deadline = time.monotonic() + 60
    while True:
        try:
            connection.close()
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT e.id, array_agg(r.address) FROM emails_sentemail e "
                    "JOIN emails_sentemailrecipient r ON r.email_id = e.id "
                    "WHERE e.sender_id IN (SELECT sender_id FROM emails_sentemail WHERE id = ANY(%s)) "
                    "AND NOT e.id = ANY(%s) GROUP BY e.id",
                    [list(known), list(known)],
                )
                return dict(cursor.fetchall())
        except Exception:  # the database is still coming back
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _read_statuses(ids) -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, status FROM read_sent_email WHERE id = ANY(%s)", [list(ids)])
        return dict(cursor.fetchall())


def run_chaos(
    system: System, plan: ChaosPlan, *, token: str, template_id: int, cluster=None, progress=None
) -> ChaosReport:
    """Run the plan against a started `system` (on `cluster` when given); returns the accounting.
    A plan with `oversized` emails needs the broker's limit lowered before the system started:
    a cluster's config, or `lowered_message_size_limit`. `progress(text)` hears what happens, for long runs."""
    rng = random.Random(plan.seed)
    report, accepted, stop = ChaosReport(), {}, threading.Event()
    run = _Run(system, plan, Broker(cluster), token, report)
    say = progress or (lambda text: None)
    load = threading.Thread(
        target=_load, args=(Http(system.command_url, token), template_id, plan, accepted, report, stop)
    )
    load.start()
    try:
        _chaos(run, rng)
    finally:
        load.join()
    say(f"load done: {len(accepted)} accepted; waiting for every email to finish")

    all_ids = {**accepted, **{i: ["big-a@example.com", "big-b@example.com"] for i in run.oversized_ids}}
    # A send whose answer the client never got (the connection broke at the commit) may still
    # have been written: it is the system's to finish like any other.
    unanswered = _unanswered(all_ids)
    report.unanswered = len(unanswered)
    all_ids |= unanswered
    load_ended = time.monotonic()
    deadline = load_ended + plan.converge_timeout
    states, statuses, last_said = {}, {}, 0.0
    while time.monotonic() < deadline:
        try:
            states = _write_side(all_ids)
            statuses = _read_statuses(all_ids)
        except Exception:  # the database is still coming back
            time.sleep(1)
            continue
        unfinished = sum(1 for state in states.values() if state not in ("sent", "failed"))
        unread = sum(1 for email_id in all_ids if statuses.get(email_id) not in TERMINAL)
        if not unfinished and not unread and len(states) == sum(len(r) for r in all_ids.values()):
            break
        if time.monotonic() - last_said >= 30:
            say(
                f"{time.monotonic() - load_ended:.0f}s after the load: {unfinished} recipients unfinished, "
                f"{unread} emails not terminal in the read model"
            )
            last_said = time.monotonic()
        time.sleep(1)
    report.converged_after = time.monotonic() - load_ended
    # Every process must still be running: a worker that exits on a fault is a bug, whatever
    # a supervisor would do about it.
    report.exited = sorted(name for name, process in system.processes.items() if process.poll() is not None)
    time.sleep(2)  # a late duplicate call would land now

    calls = collections.defaultdict(int)
    for message in system.accepted_calls():
        for recipient in message["recipients"]:
            calls[(int(recipient["custom_args"]["email_id"]), recipient["email"])] += 1
    oversized = set(run.oversized_ids)
    report.accepted = len(accepted)
    report.sent = sum(1 for state in states.values() if state == "sent")
    report.failed = sum(1 for state in states.values() if state == "failed")
    report.oversized_failed = sum(1 for (e, _), state in states.items() if e in oversized and state == "failed")
    report.unexpected_failures = sum(1 for (e, _), state in states.items() if e not in oversized and state == "failed")
    unfinished_emails = {e for (e, _), state in states.items() if state not in ("sent", "failed")}
    report.stuck = len(unfinished_emails | {e for e in all_ids if statuses.get(e) not in TERMINAL})
    wanted = {(email_id, r) for email_id, recipients in all_ids.items() for r in recipients}
    report.lost = sum(1 for key in wanted if not calls.get(key) and states.get(key) != "failed")
    report.duplicates = sum(n - 1 for n in calls.values() if n > 1)

    with connection.cursor() as cursor:
        cursor.execute("SELECT message_id FROM outbox_dead_letter WHERE queue LIKE %s", [f"{run.prefix}.%"])
        dead = [row[0] for row in cursor.fetchall()]
    # A poison message dies in the sender's queue, where it was published.
    report.poison_parked = len({message_id for message_id in dead if message_id in run.poison_ids})
    report.details["dead_letters"] = [m for m in dead if m not in run.poison_ids][:20]
    report.details["poison"] = (run.poison_ids, [m for m in dead if m in run.poison_ids])
    report.details["stuck"] = sorted(unfinished_emails)[:20]
    report.details["lost"] = sorted(k for k in wanted if not calls.get(k) and states.get(k) != "failed")[:20]
    report.details["duplicates"] = sorted(k for k, n in calls.items() if n > 1)[:20]
    report.dead_letters = sum(1 for message_id in dead if message_id not in run.poison_ids)

    from query_api.rebuild import read_model_reconcile

    connection.close()
    reconciled = read_model_reconcile(limit=len(all_ids) + 10)
    report.read_model_missing, report.read_model_behind = len(reconciled.missing), len(reconciled.behind)
    report.details["read_model"] = (reconciled.missing[:20], reconciled.behind[:20])
    report.poison_published, report.oversized_accepted = len(run.poison_ids), len(run.oversized_ids)
    return report


class lowered_message_size_limit:
    """The machine broker's message size limit at OVERSIZED_LIMIT for a run (a cluster takes it
    from its nodes' config instead), and back to what it was after."""

    def __init__(self, broker: Broker):
        self.broker, self.before = broker, BROKER_DEFAULT_MAX_MESSAGE_SIZE

    def __enter__(self):
        answer = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "application:get_env(rabbit, max_message_size)."],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"\{ok,\s*(\d+)\}", answer.stdout)
        if found:
            self.before = int(found.group(1))
        self.broker.set_max_message_size(OVERSIZED_LIMIT)
        return self

    def __exit__(self, *exc):
        self.broker.set_max_message_size(self.before)
