"""Short forms of the fault run (bench/chaos.py runs the long one, with the sender's defaults).

The suite shortens the sender's waits (lease, retry schedule, in-doubt grace, the provider's
timeout) and the AMQP heartbeat so that a run fits in a minute; docs/BENCHMARKS.md reports the
full-length run with the defaults."""

import pytest
from django.db import connection
from django.test import override_settings

from tests.broker import declare
from tests.chaos import OVERSIZED_LIMIT, ChaosPlan, run_chaos
from tests.system import ROOT, System

pytestmark = pytest.mark.django_db(transaction=True)

# The fake takes a timed-out call's mail 8 s after it came (provider_timeout_seconds=8): after the
# sender's client gave up (5 s), well before the grace for the provider's word ends (15 s).
SHORT = {
    "SENDER_LEASE_SECONDS": 5,
    "SENDER_RETRY_SCHEDULE": "1s,2s,2s,5s,5s,10s,10s,10s",
    "SENDER_IN_DOUBT_GRACE_SECONDS": 15,
    "SENDGRID_TIMEOUT_SECONDS": 5,
    "BROKER_HEARTBEAT_SECONDS": 4,
}


def _system(topology, name, **env):
    return System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"{name}-{topology.prefix}",
        **(SHORT | env),
    )


def _assert_accounted(report):
    assert report.exited == [], report.summary()
    assert report.lost == 0, report.summary()
    assert report.duplicates == 0, report.summary()
    assert report.stuck == 0, report.summary()
    assert report.unexpected_failures == 0, report.summary()
    assert report.dead_letters == 0, report.summary()  # no healthy message died of the delivery limit
    assert report.read_model_missing == 0 and report.read_model_behind == 0, report.summary()


@override_settings(RECONCILE_GRACE_SECONDS=0)
def test_nothing_is_lost_stuck_or_sent_twice_under_every_fault(topology):
    # One sender, in a network namespace of its own so that it can be cut off. Kills of every
    # worker, a broker and a database restart, connection churn, a partition longer than two
    # heartbeats, provider errors and timeouts (in doubt), a provider outage and poison messages.
    # (An email the broker refuses as too large is the cluster test's: it lowers the limit in its
    # own nodes' config, not in the machine's broker.)
    system = _system(topology, "chaos", isolate=("sender",))
    try:
        system.start_all()
        token, template_id = system.staff_with_template("load")
        plan = ChaosPlan(
            duration=30,
            rate=8,
            seed=7,
            churn=4,
            partition_seconds=12,
            outage_seconds=8,
            poison=2,
            provider_timeout_seconds=8,
        )
        report = run_chaos(system, plan, token=token, template_id=template_id)
    finally:
        system.stop_all()
    print(f"\n[chaos] {report.summary()}\n{report.timeline()}")
    assert report.accepted > 150
    assert (report.kills, report.restarts, report.churns, report.partitions, report.outages) == (6, 2, 4, 1, 1)
    _assert_accounted(report)
    assert report.poison_published == 2 and report.poison_parked == 2  # kept for ops
    assert {status for _, status, _ in report.details.get("refused", [])} <= {503}  # the database restart


@override_settings(RECONCILE_GRACE_SECONDS=0)
def test_connection_churn_dead_letters_no_healthy_message(topology):
    # A slow provider and a small pool: a backlog waits in the sender's prefetch, and every
    # `close_all_connections` returns all of it, one delivery nearer the queues' limit each time.
    # Ten closes are twice the limit: without the refresh, the backlog would be dead-lettered.
    system = _system(topology, "churn", SENDER_CONCURRENCY=4)
    try:
        system.start_all()
        token, template_id = system.staff_with_template("churn")
        plan = ChaosPlan(
            duration=16,
            rate=8,
            seed=5,
            kills={},
            restart_rabbitmq=False,
            restart_postgres=False,
            provider_errors_seconds=0,
            churn=10,
            provider_latency_ms=1500,
        )
        report = run_chaos(system, plan, token=token, template_id=template_id)
    finally:
        system.stop_all()
    print(f"\n[churn] {report.summary()}")
    assert report.churns == 10 and report.accepted > 100
    _assert_accounted(report)
    refreshed = (system.log_dir / "sender.log").read_text().count("message_refreshed_before_delivery_limit")
    assert refreshed > 0  # the closes did push messages to the limit, and they were kept


@override_settings(RECONCILE_GRACE_SECONDS=0)
def test_a_partitioned_sender_hands_its_messages_to_the_other_and_sends_nothing_twice(topology):
    # Two senders; one is cut off from the broker, the database and the provider for longer than
    # two heartbeats. The broker gives its unacknowledged messages to the other, which goes on
    # sending; when the partition heals, the cut-off one's late outcome writes are fenced and
    # its calls in doubt are settled from the provider's events.
    system = _system(topology, "partition", also=("sender.2",), isolate=("sender",))
    try:
        system.start_all()
        token, template_id = system.staff_with_template("partition")
        # Each call takes a second: the cut-off sender always has calls in flight when it is cut.
        plan = ChaosPlan(
            duration=25,
            rate=8,
            seed=3,
            kills={},
            restart_rabbitmq=False,
            restart_postgres=False,
            provider_errors_seconds=0,
            partition_seconds=16,
            provider_latency_ms=1000,
        )
        report = run_chaos(system, plan, token=token, template_id=template_id)
        cut_at, healed_at = (at for at, action, _ in report.events if action in ("cut", "heal"))
        during = [m for m in system.accepted_calls() if cut_at + 10 < m["received_at"] < healed_at]
    finally:
        system.stop_all()
    print(f"\n[partition] {report.summary()}")
    assert report.partitions == 1 and report.accepted > 150
    _assert_accounted(report)
    assert len(during) > 10  # the other sender went on
    cut_off, other = ((system.log_dir / f"{name}.log").read_text() for name in ("sender", "sender.2"))
    # The calls the cut-off sender had in flight went to the provider, their answers did not come
    # back: in doubt. The other sender got their messages when the broker gave up on the cut-off
    # one, and settled them from the provider's events, without a call; the cut-off sender's late
    # writes, once the partition healed, were refused by the fence.
    assert '"delivery_in_doubt"' in cut_off and '"in_doubt_resolved_as_sent"' in other
    assert '"outcome_fenced"' in cut_off
    assert '"rabbitmq_unavailable"' in cut_off  # it noticed, and came back


def test_a_leader_kill_in_a_three_node_cluster_loses_nothing():
    # A cluster of three nodes beside the machine's broker (left alone); every queue a quorum
    # queue with a replica on each. The node leading the sender's queue is SIGKILLed under load
    # and started again; the queue elects a leader among the other two and the clients move to
    # the other nodes of RABBITMQ_URL. The nodes refuse messages over OVERSIZED_LIMIT: an email
    # rendered larger is isolated by the relay and failed, and the rest flows.
    from tests.broker import new_topology
    from tests.rabbit_cluster import RabbitCluster

    topology = new_topology()
    config = f"max_message_size = {OVERSIZED_LIMIT}\n"
    with (
        RabbitCluster(base_port=5681, prefix="chaostest", config=config) as cluster,
        override_settings(RABBITMQ_URL=cluster.url, RECONCILE_GRACE_SECONDS=0),
    ):
        declare(topology, url=cluster.url)
        system = _system(topology, "cluster", RABBITMQ_URL=cluster.url)
        try:
            system.start_all()
            token, template_id = system.staff_with_template("cluster")
            plan = ChaosPlan(
                duration=25,
                rate=8,
                seed=11,
                kills={"outbox_relay": 1, "sender": 1, "projector": 1},
                restart_rabbitmq=False,
                restart_postgres=False,
                churn=2,
                leader_kills=1,
                leader_down_seconds=8,
                provider_timeout_seconds=8,
                oversized=1,
                poison=1,
            )
            report = run_chaos(system, plan, token=token, template_id=template_id, cluster=cluster)
        finally:
            system.stop_all()
    print(f"\n[cluster] {report.summary()}\n{report.details.get('leaders')}\n{report.timeline()}")
    assert report.leader_kills == 1 and report.accepted > 150
    ((_, members, running),) = report.details["leaders"]
    assert members == 3 and running == 3  # a replica on every node when the leader died
    assert report.leaders_moved == 1  # another node led the queue while it was down
    _assert_accounted(report)
    assert report.oversized_accepted == 1 and report.oversized_failed == 2  # refused, isolated, failed
    assert report.poison_parked == report.poison_published == 1
