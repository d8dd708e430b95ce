import time

import pika
import pytest

from core.broker import ConsumerQueue, TopologyMismatch, declare_topology
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


def _publish(channel, topology, routing_key, message_id):
    channel.basic_publish(
        topology.exchange,
        routing_key,
        b"{}",
        pika.BasicProperties(message_id=message_id, delivery_mode=2),
        mandatory=True,
    )


def test_events_route_to_the_consumers_that_need_them(topology):
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    _publish(channel, topology, "email.requested", "r1")
    _publish(channel, topology, "email.sent", "s1")
    conn.close()
    assert broker.collect(topology.queue("sender"), expect_ids={"r1"}).ids == ["r1"]
    assert sorted(broker.collect(topology.queue("projector"), expect_ids=2).ids) == ["r1", "s1"]


def test_declaring_removes_the_bindings_an_earlier_release_made_for_a_retired_queue(topology):
    conn = broker.blocking_connection()
    channel = conn.channel()
    # An earlier release routed the webhook's statuses to the sender too.
    for key in ("email.delivery_statuses", "email.delivery_status"):
        channel.queue_bind(topology.queue("sender-receipts"), topology.exchange, routing_key=key)
    conn.close()
    broker.declare(topology)  # the new release starts
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    _publish(channel, topology, "email.delivery_statuses", "d1")
    _publish(channel, topology, "email.delivery_status", "d2")
    conn.close()
    assert sorted(broker.collect(topology.queue("projector"), expect_ids={"d1", "d2"}).ids) == ["d1", "d2"]
    assert broker.queue_depth(topology.queue("sender-receipts")) == 0


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
