import json
import time

import pika
import pytest

from core.broker import EVENTS_BATCH, ConsumerQueue, TopologyMismatch, declare_topology, topic_matches
from tests import broker


def test_declaring_twice_is_idempotent(topology):
    broker.declare(topology)  # the fixture declared it once already
    for queue in topology.all_queues():
        assert broker.queue_depth(queue) == 0


def test_an_incompatible_queue_stops_the_service_at_start():
    topology = broker.new_topology()
    conn = broker.blocking_connection()
    try:
        # Someone created the sender queue as a classic queue without our arguments.
        conn.channel().queue_declare(topology.queue("sender"), durable=True)
        with pytest.raises(TopologyMismatch, match=topology.queue("sender")):
            declare_topology(conn.channel(), topology)
    finally:
        if conn.is_open:
            conn.channel().queue_delete(topology.queue("sender"))
            conn.close()
        broker.delete(topology)


def _publish(channel, topology, routing_key, message_id, body=b"{}"):
    channel.basic_publish(
        topology.exchange,
        routing_key,
        body,
        pika.BasicProperties(message_id=message_id, type=routing_key, delivery_mode=2),
        mandatory=True,
    )


def test_events_route_to_the_consumers_that_need_them(topology):
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    _publish(channel, topology, "email.requested", "r1")
    packed = json.dumps([{"event_id": "r1", "type": "email.requested"}, {"event_id": "s1", "type": "email.sent"}])
    _publish(channel, topology, EVENTS_BATCH, "packed", packed.encode())
    # A type nobody binds: the broker returns it.
    with pytest.raises(pika.exceptions.UnroutableError):
        _publish(channel, topology, "nobody.listens", "n1")
    conn.close()
    assert broker.collect(topology.queue("sender"), expect_ids={"r1"}).ids == ["r1"]
    got = broker.collect(topology.queue("projector"), expect_ids=2)
    assert sorted(got.ids) == ["r1", "s1"]
    assert {p.headers["packed_in"] for p, _ in got.messages} == {"packed"}  # one message, both events
    # The relay publishes alone only what a consumer binds by type; the projector's bindings for
    # an earlier release's relays (upgrade_routing_keys) do not count.
    assert topology.routed_alone("email.requested")
    assert not any(topology.routed_alone(t) for t in ("email.sent", "email.delivery_statuses", "email.scheduled"))


def test_during_an_upgrade_an_earlier_relays_events_still_reach_the_projector_alone(topology):
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    kinds = ("email.scheduled", "email.cancelled", "email.sent", "email.failed", "email.suppressed")
    for n, key in enumerate((*kinds, "email.delivery_status", "email.delivery_statuses")):
        _publish(channel, topology, key, f"old-{n}")
    _publish(channel, topology, "email.requested", "old-request")  # the sender's alone
    conn.close()
    assert len(broker.collect(topology.queue("projector"), expect_ids=7).ids) == 7
    assert broker.collect(topology.queue("sender"), expect_ids={"old-request"}).ids == ["old-request"]


@pytest.mark.parametrize(
    "pattern, key, routed",
    [
        ("email.#", "email.sent", True),
        ("email.#", "email", True),
        ("email.*", "email.sent", True),
        ("email.*", "email.sent.again", False),
        ("#", "anything.at.all", True),
        ("email.requested", "email.requested", True),
        ("email.requested", "email.sent", False),
        ("*.sent", "email.sent", True),
        ("email.#.sent", "email.a.b.sent", True),
        ("email.#.sent", "email.a.b.failed", False),
    ],
)
def test_topic_matching_follows_the_exchange(pattern, key, routed):
    """`topic_matches`, which decides what the relay publishes alone, against the broker's own
    routing of the same pattern and key, on a topic exchange with that one binding."""
    topology = broker.new_topology()
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    channel.exchange_declare(topology.exchange, exchange_type="topic", auto_delete=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, topology.exchange, routing_key=pattern)
    try:
        _publish(channel, topology, key, "m")
        broker_routed = True
    except pika.exceptions.UnroutableError:
        broker_routed = False
    conn.close()
    assert topic_matches(pattern, key) is routed is broker_routed


def test_declaring_removes_the_bindings_an_earlier_release_made(topology):
    conn = broker.blocking_connection()
    channel = conn.channel()
    # Earlier releases routed the webhook's statuses to the sender too, and every event to the
    # projector one by one.
    for key in ("email.delivery_statuses", "email.delivery_status"):
        channel.queue_bind(topology.queue("sender-receipts"), topology.exchange, routing_key=key)
    channel.queue_bind(topology.queue("projector"), topology.exchange, routing_key="email.#")
    conn.close()
    broker.declare(topology)  # the new release starts
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    _publish(channel, topology, "email.delivery_statuses", "d1")
    _publish(channel, topology, "email.delivery_status", "d2")
    _publish(channel, topology, "email.requested", "r1")
    with pytest.raises(pika.exceptions.UnroutableError):  # what email.# took, and nothing binds now
        _publish(channel, topology, "email.unknown", "u1")
    conn.close()
    assert broker.collect(topology.queue("sender"), expect_ids={"r1"}).ids == ["r1"]
    assert broker.queue_depth(topology.queue("sender-receipts")) == 0
    # The statuses by their own bindings (for an earlier release's relays); no request: email.#
    # is gone.
    assert sorted(broker.collect(topology.queue("projector"), expect_ids=2).ids) == ["d1", "d2"]


def test_a_message_redelivered_past_the_limit_is_dead_lettered(topology):
    limit = topology.consumer("sender").delivery_limit
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    _publish(channel, topology, "email.requested", "poison")
    rejected = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(topology.queue("sender"))
        if method is None:
            if broker.queue_depth(topology.dead_letter_queue("sender")):
                break
            time.sleep(0.05)
            continue
        channel.basic_nack(method.delivery_tag, requeue=True)
        rejected += 1
    conn.close()
    assert rejected == limit + 1
    dead = broker.collect(topology.dead_letter_queue("sender"), expect_ids={"poison"})
    assert dead.ids == ["poison"]
    assert broker.queue_depth(topology.queue("sender")) == 0


def test_a_delay_queue_returns_the_message_to_its_work_queue_after_its_ttl():
    topology = broker.new_topology(
        consumers=(
            ConsumerQueue(role="sender", routing_keys=("email.requested",), delivery_limit=3, retry_delays_ms=(300,)),
        )
    )
    broker.declare(topology)
    try:
        conn = broker.blocking_connection()
        channel = conn.channel()
        channel.confirm_delivery()
        started = time.monotonic()
        channel.basic_publish(
            "", topology.delay_queue("sender", 300), b"{}", pika.BasicProperties(message_id="later", delivery_mode=2)
        )
        conn.close()
        assert broker.collect(topology.queue("sender"), expect_ids={"later"}, timeout=10).ids == ["later"]
        assert time.monotonic() - started >= 0.3
    finally:
        broker.delete(topology)
