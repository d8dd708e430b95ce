"""What a consumer does with a message near its queue's delivery limit, and how the broker's
nodes are read from RABBITMQ_URL."""

from types import SimpleNamespace

import pika
import pytest

from core.broker import REFRESH_MAX, connection_parameters, last_delivery, refresh


def props(**headers):
    return pika.BasicProperties(
        message_id="m-1",
        type="email.requested",
        correlation_id="c",
        content_type="application/json",
        headers=headers or None,
    )


def test_a_message_is_refreshed_with_two_deliveries_left_at_most_refresh_max_times():
    # A limit of 5 allows deliveries with x-delivery-count 0 to 5; the next return dead-letters.
    assert not last_delivery(props(), 5)
    assert not last_delivery(props(**{"x-delivery-count": 3}), 5)
    assert last_delivery(props(**{"x-delivery-count": 4}), 5)  # this one, and one spare
    assert last_delivery(props(**{"x-delivery-count": 5}), 5)
    assert last_delivery(props(**{"x-delivery-count": 4, "x-refreshes": REFRESH_MAX - 1}), 5)
    assert not last_delivery(props(**{"x-delivery-count": 4, "x-refreshes": REFRESH_MAX}), 5)  # the limit applies
    assert not last_delivery(props(), 1)  # a limit of 1 still delivers a fresh message first


def test_the_fresh_copy_keeps_the_message_and_counts_the_refresh():
    published = []
    channel = SimpleNamespace(basic_publish=lambda *args, **kwargs: published.append((args, kwargs)))
    refresh(channel, "emails.sender", props(**{"x-delivery-count": 4, "x-refreshes": 1, "x-retries": 2}), b"{}")
    (((exchange, queue, body, copy), kwargs),) = published
    assert (exchange, queue, body, kwargs) == ("", "emails.sender", b"{}", {"mandatory": True})
    assert (copy.message_id, copy.type, copy.correlation_id, copy.delivery_mode) == ("m-1", "email.requested", "c", 2)
    assert copy.headers == {"x-refreshes": 2, "x-retries": 2}  # the count is the broker's to start again


def test_rabbitmq_url_names_every_node_of_a_cluster_in_order():
    nodes = connection_parameters("amqp://u:p@a:5672/%2F, amqp://u:p@b:5673/%2F,", heartbeat=7, name="sender")
    assert [(n.host, n.port, n.heartbeat) for n in nodes] == [("a", 5672, 7), ("b", 5673, 7)]
    assert nodes[0].client_properties == {"connection_name": "sender"}
    with pytest.raises(ValueError, match="names no broker"):
        connection_parameters(" , ", heartbeat=7)
