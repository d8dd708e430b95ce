"""The relay under real faults: SIGKILL, a crash between confirm and commit, two relays at once,
RabbitMQ and Postgres restarts. Every test counts by event id: nothing may be lost; duplicates
are counted and explained."""

import time

import pytest

from tests import broker, services

pytestmark = pytest.mark.django_db(transaction=True)


def report(name: str, **figures) -> None:
    print(f"\n[{name}] " + " ".join(f"{key}={value}" for key, value in figures.items()))


def test_sigkill_mid_batch_loses_nothing(topology, relays):
    ids = broker.fill_outbox(10_000)
    relay = relays(topology, OUTBOX_BATCH_SIZE=1000)
    # Kill once the first batches are committed, while later ones are in flight.
    broker.wait_for(lambda: broker.published_count(ids) >= 1000, timeout=30, interval=0.005, message="a first batch")
    relay.kill()
    published_at_kill = broker.published_count(ids)
    assert published_at_kill < len(ids), "the relay finished before the kill; the test proves nothing"

    relays(topology, OUTBOX_BATCH_SIZE=1000)
    received = broker.collect(topology.queue("sender"), expect_ids=set(ids), timeout=60)
    assert set(received.ids) == set(ids), f"lost {len(set(ids) - set(received.ids))}"
    assert broker.published_count(ids) == len(ids)
    # A duplicate is an event published by the killed relay's open batch: confirmed or in flight
    # at the kill, never committed. So there are at most one batch of them.
    assert received.duplicates <= 1000
    report("sigkill", rows=len(ids), published_before_kill=published_at_kill, duplicates=received.duplicates)


def test_crash_after_confirm_before_commit_republishes_the_same_ids(topology, relays):
    ids = broker.fill_outbox(300)
    crashing = relays(topology, OUTBOX_BATCH_SIZE=100, OUTBOX_RELAY_TEST_CRASH_AFTER_CONFIRM=1)
    assert crashing.wait_exit() == 70
    assert broker.published_count(ids) == 0  # the broker confirmed 100, Postgres never heard

    relays(topology, OUTBOX_BATCH_SIZE=100)
    received = broker.collect(topology.queue("sender"), expect_ids=set(ids), timeout=30)
    assert set(received.ids) == set(ids)
    twice = {event_id for event_id, n in broker.counter(received.ids).items() if n > 1}
    assert twice == set(ids[:100])  # exactly the first batch, again, with the same event ids
    report("crash-after-confirm", rows=len(ids), duplicates=received.duplicates)


def test_two_relays_publish_every_row_once(topology, relays):
    ids = broker.fill_outbox(5000)
    for _ in range(2):
        relays(topology, OUTBOX_BATCH_SIZE=200)
    received = broker.collect(topology.queue("sender"), expect_ids=set(ids), timeout=60)
    assert set(received.ids) == set(ids)
    assert broker.published_count(ids) == len(ids)
    report("two-relays", rows=len(ids), duplicates=received.duplicates)
    assert received.duplicates == 0  # SKIP LOCKED plus the re-check of published_at


def test_relay_recovers_from_a_rabbitmq_restart_without_being_restarted(topology, relays):
    relay = relays(topology, OUTBOX_BATCH_SIZE=100)
    relay.wait_ready()
    before = broker.fill_outbox(200)
    broker.wait_for(lambda: broker.published_count(before) == 200, timeout=20, message="first rows")
    services.stop_rabbitmq()
    try:
        during = broker.fill_outbox(300)  # rows keep coming while the broker is away
        time.sleep(1.0)
        assert broker.published_count(during) == 0
        assert relay.get("/readyz")[0] == 503
    finally:
        services.start_rabbitmq()
    after = broker.fill_outbox(200)
    wanted = set(before + during + after)
    broker.wait_for(lambda: broker.published_count(wanted) == len(wanted), timeout=60, message="backlog")
    received = broker.collect(topology.queue("sender"), expect_ids=wanted, timeout=30)
    assert set(received.ids) == wanted
    assert relay.process.poll() is None  # the same process, never restarted
    events = relay.events()
    assert events.count("rabbitmq_unavailable") == 1 and "rabbitmq_recovered" in events
    report("rabbitmq-restart", rows=len(wanted), duplicates=received.duplicates)


def test_relay_recovers_from_a_postgres_restart_without_being_restarted(topology, relays):
    relay = relays(topology, OUTBOX_BATCH_SIZE=100)
    relay.wait_ready()
    before = broker.fill_outbox(100)
    broker.wait_for(lambda: broker.published_count(before) == 100, timeout=20, message="first rows")
    services.restart_postgres()
    after = broker.fill_outbox(100)
    wanted = set(before + after)
    broker.wait_for(lambda: broker.published_count(wanted) == len(wanted), timeout=60, message="backlog")
    received = broker.collect(topology.queue("sender"), expect_ids=wanted, timeout=30)
    assert set(received.ids) == wanted
    assert relay.process.poll() is None
    events = relay.events()
    assert events.count("postgres_unavailable") == 1 and "postgres_recovered" in events


def test_relay_pauses_while_the_broker_blocks_publishers_and_loses_nothing(topology, relays):
    relay = relays(topology, OUTBOX_BATCH_SIZE=50, OUTBOX_CONFIRM_TIMEOUT_MS=2000)
    relay.wait_ready()
    first = broker.fill_outbox(50)
    broker.wait_for(lambda: broker.published_count(first) == 50, timeout=20, message="first rows")
    services.set_memory_alarm(True)  # the broker now blocks every publishing connection
    try:
        during = broker.fill_outbox(200)
        broker.wait_for(
            lambda: "broker_blocked_connection" in relay.events(),
            timeout=30,
            message="the relay to hear connection.blocked",
        )
        published = broker.published_count(during)
        time.sleep(3)
        assert broker.published_count(during) == published  # paused: nothing more is claimed
    finally:
        services.set_memory_alarm(False)
    broker.wait_for(lambda: broker.published_count(during) == 200, timeout=60, message="backlog after unblock")
    received = broker.collect(topology.queue("sender"), expect_ids=set(first + during), timeout=30)
    assert set(received.ids) == set(first + during)
    assert "broker_unblocked_connection" in relay.events()
    report("memory-alarm", rows=250, published_while_blocked=published, duplicates=received.duplicates)
