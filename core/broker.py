"""The RabbitMQ topology every service declares at start, and how to connect.

One topic exchange carries every event: packed, several to a message (EVENTS_BATCH), for the
projector, which takes them all; and alone, routed by its type, for a consumer that binds it
(the sender: `email.requested`).
Each consumer owns a durable quorum queue bound to the types it needs, with an explicit delivery
limit (RabbitMQ 3.10 has no default) and at-least-once dead-lettering into its own dead-letter
queue, which that consumer's dead-letter keeper reads (core/outbox/deadletters.py). A consumer
that retries later gets delay queues: a message parked there expires after the tier's TTL and
is dead-lettered back to the work queue.

Declaring is idempotent. A queue that already exists with other arguments makes the broker refuse
the declaration (PRECONDITION_FAILED); `declare_topology` turns that into TopologyMismatch so a
service stops at start instead of running against a topology it does not expect.

Every name starts with BROKER_PREFIX, so tests (and several environments on one broker) never see
each other's messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import pika
from pika.exceptions import ChannelClosedByBroker


class TopologyMismatch(RuntimeError):
    """The broker holds an exchange or queue of the same name with other arguments."""


@dataclass(frozen=True)
class ConsumerQueue:
    role: str  # "sender", "projector"
    routing_keys: tuple[str, ...]
    delivery_limit: int
    retry_delays_ms: tuple[int, ...] = ()
    # Bindings an earlier release made: declaring removes them (unbinding one that is not there
    # is a no-op), so the queue gets nothing new and drains.
    retired_routing_keys: tuple[str, ...] = ()
    # Bound for the relays of the release before, which publish these types alone, during a
    # rolling upgrade; this release's relay publishes them packed only (`routed_alone` ignores
    # them). The next release retires them.
    upgrade_routing_keys: tuple[str, ...] = ()


# A packed message holds at most this many events and bytes (unless one event alone is larger: it
# then goes alone, as it would unpacked). Small enough for a broker whose max_message_size is far
# below RabbitMQ's default (128 MiB): a packed message the broker refused would cost its batch a
# retry one row at a time.
EVENTS_PER_MESSAGE = 100
BYTES_PER_MESSAGE = 128 * 1024

# The routing key and type of a message that carries several events: a JSON array of them, each
# as its outbox row holds it. The relay publishes every batch of rows it claims so, and each
# row alone as well when a consumer binds its type (`routed_alone`).
EVENTS_BATCH = "events.batch"


@lru_cache(maxsize=256)
def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes `key` through a binding of `pattern` (`*` one word, `#`
    zero or more)."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


# Who consumes what. A release that binds a consumer to a type no consumer took alone before
# rolls out its relays before that consumer: an earlier relay publishes that type packed only.
# The relay declares every queue too, so an event published before its
# consumer first started is kept, not returned as unroutable.
CONSUMERS: tuple[ConsumerQueue, ...] = (
    ConsumerQueue(
        role="sender",
        routing_keys=("email.requested",),
        delivery_limit=5,
        retry_delays_ms=(1_000, 10_000, 60_000, 300_000),
    ),
    # Retired: the provider's reports, which earlier releases routed here for the sender to note
    # on its deliveries. The webhook now notes them itself, in the transaction that stores them
    # (core.deliveries.store.note_provider_reports): a copy of each statuses message fewer, with
    # its delivery, its ack and the sender's work on it.
    # The queue stays, unbound, so the sender drains what an earlier release left in it.
    ConsumerQueue(
        role="sender-receipts",
        routing_keys=(),
        delivery_limit=5,
        retry_delays_ms=(5_000,),
        retired_routing_keys=("email.delivery_statuses", "email.delivery_status"),
    ),
    # The projector takes every event, packed: one message per relay batch (EVENTS_BATCH), where
    # it once took one per event (`email.#`, retired). A message costs the broker, and a consumer
    # on pika, about the same whatever it carries. While an earlier release's relays still run,
    # the events they publish alone reach it by their types; their requests reach the sender
    # only (this release's relay packs those too), which reconcile mends.
    ConsumerQueue(
        role="projector",
        routing_keys=(EVENTS_BATCH,),
        delivery_limit=5,
        retired_routing_keys=("email.#",),
        upgrade_routing_keys=(
            "email.scheduled",
            "email.cancelled",
            "email.sent",
            "email.failed",
            "email.suppressed",
            "email.delivery_status",
            "email.delivery_statuses",
        ),
    ),
)


@dataclass(frozen=True)
class Topology:
    prefix: str
    consumers: tuple[ConsumerQueue, ...] = field(default=CONSUMERS)

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letter"

    def queue(self, role: str) -> str:
        return f"{self.prefix}.{role}"

    def dead_letter_queue(self, role: str) -> str:
        return f"{self.prefix}.{role}.dlq"

    def delay_queue(self, role: str, delay_ms: int) -> str:
        return f"{self.prefix}.{role}.retry.{delay_ms}ms"

    def consumer(self, role: str) -> ConsumerQueue:
        return next(c for c in self.consumers if c.role == role)

    def routed_alone(self, event_type: str) -> bool:
        """Whether a consumer binds events of this type one by one (the sender, `email.requested`),
        so the relay publishes each alone too, and not only in its batch."""
        return any(topic_matches(key, event_type) for c in self.consumers for key in c.routing_keys)

    def all_queues(self) -> list[str]:
        names = []
        for consumer in self.consumers:
            names += [self.queue(consumer.role), self.dead_letter_queue(consumer.role)]
            names += [self.delay_queue(consumer.role, d) for d in consumer.retry_delays_ms]
        return names


def _quorum_arguments(**extra) -> dict:
    return {"x-queue-type": "quorum", **extra}


def declarations(topology: Topology) -> list[tuple[str, dict]]:
    """Every exchange, queue and binding, as (method, kwargs) pairs for a pika channel."""
    steps: list[tuple[str, dict]] = [
        ("exchange_declare", {"exchange": topology.exchange, "exchange_type": "topic", "durable": True}),
        (
            "exchange_declare",
            {"exchange": topology.dead_letter_exchange, "exchange_type": "direct", "durable": True},
        ),
    ]
    for consumer in topology.consumers:
        work = topology.queue(consumer.role)
        dead = topology.dead_letter_queue(consumer.role)
        steps.append(("queue_declare", {"queue": dead, "durable": True, "arguments": _quorum_arguments()}))
        steps.append(("queue_bind", {"queue": dead, "exchange": topology.dead_letter_exchange, "routing_key": work}))
        steps.append(
            (
                "queue_declare",
                {
                    "queue": work,
                    "durable": True,
                    "arguments": _quorum_arguments(
                        **{
                            "x-delivery-limit": consumer.delivery_limit,
                            "x-dead-letter-exchange": topology.dead_letter_exchange,
                            "x-dead-letter-routing-key": work,
                            # at-least-once dead-lettering needs reject-publish overflow
                            "x-dead-letter-strategy": "at-least-once",
                            "x-overflow": "reject-publish",
                        }
                    ),
                },
            )
        )
        for key in consumer.routing_keys + consumer.upgrade_routing_keys:
            steps.append(("queue_bind", {"queue": work, "exchange": topology.exchange, "routing_key": key}))
        for key in consumer.retired_routing_keys:
            steps.append(("queue_unbind", {"queue": work, "exchange": topology.exchange, "routing_key": key}))
        for delay in consumer.retry_delays_ms:
            steps.append(
                (
                    "queue_declare",
                    {
                        "queue": topology.delay_queue(consumer.role, delay),
                        "durable": True,
                        "arguments": _quorum_arguments(
                            **{
                                "x-message-ttl": delay,
                                "x-dead-letter-exchange": "",  # the default exchange: by queue name
                                "x-dead-letter-routing-key": work,
                                "x-dead-letter-strategy": "at-least-once",
                                "x-overflow": "reject-publish",
                            }
                        ),
                    },
                )
            )
    return steps


def declare_topology(channel, topology: Topology) -> None:
    """Declare everything on a blocking channel. Raises TopologyMismatch when the broker has an
    incompatible declaration of the same name (the channel is closed then)."""
    for method, kwargs in declarations(topology):
        try:
            getattr(channel, method)(**kwargs)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                raise TopologyMismatch(
                    f"{method} {kwargs.get('queue') or kwargs.get('exchange')}: {exc.reply_text}"
                ) from exc
            raise


# A message goes back to its queue whenever the connection it was delivered on closes, and on
# RabbitMQ before 4.0 every return counts toward the queue's delivery limit, as a failure would:
# a quorum queue delivers a message `x-delivery-limit` + 1 times (x-delivery-count 0 to the
# limit) and dead-letters it at the next return. So a consumer handed a message with two
# deliveries or fewer left, this one included, publishes a fresh copy (its count back at 0,
# `x-refreshes` one up) and acks the original as it arrives, and connection churn never
# dead-letters a healthy message. Two, not one: a message also counts when the connection closes
# after the broker sent it and before the consumer read it from the socket. A message that really
# breaks its consumer is refreshed at most REFRESH_MAX times (that many more rounds of the limit);
# then the limit applies. Should an ack be lost after a confirmed copy, both go round: consumers
# are idempotent by event id, and each copy's refreshes are bounded alike.
REFRESH_MAX = 5


def last_delivery(properties, delivery_limit: int) -> bool:
    """Whether this delivery leaves the message one more at most, and it may be refreshed."""
    headers = properties.headers or {}
    return (
        int(headers.get("x-delivery-count") or 0) >= max(1, delivery_limit - 1)
        and int(headers.get("x-refreshes") or 0) < REFRESH_MAX
    )


def fresh_properties(
    properties: pika.BasicProperties, headers: dict, expiration: str | None = None
) -> pika.BasicProperties:
    """The properties of a new, persistent message carrying a delivered one's identity and
    headers, `headers` added. The broker's delivery count is left behind: the broker counts the
    new message's deliveries afresh (a copied count would make it look near the delivery limit)."""
    kept = {k: v for k, v in (properties.headers or {}).items() if k != "x-delivery-count"}
    return pika.BasicProperties(
        message_id=properties.message_id,
        type=properties.type,
        correlation_id=properties.correlation_id,
        content_type=properties.content_type,
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=kept | headers,
        expiration=expiration,
    )


def refresh(channel, queue: str, properties, body: bytes) -> None:
    """Publish a fresh copy of a delivered message to `queue`, persistent and mandatory, on a
    channel in confirm mode (pika raises if the broker does not take it). The caller acks the
    original only after this returns."""
    refreshes = int((properties.headers or {}).get("x-refreshes") or 0) + 1
    channel.basic_publish("", queue, body, fresh_properties(properties, {"x-refreshes": refreshes}), mandatory=True)


def topology_from_settings() -> Topology:
    from django.conf import settings

    return Topology(prefix=settings.BROKER_PREFIX)


def connection_parameters(url: str, *, heartbeat: int | None = None, name: str = "") -> list[pika.URLParameters]:
    """How to reach the broker: one set of parameters per node of `url` (RABBITMQ_URL may name
    several nodes of a cluster, comma-separated), in order. pika's BlockingConnection tries them
    in turn; the heartbeat is BROKER_HEARTBEAT_SECONDS unless given."""
    if heartbeat is None:
        from django.conf import settings

        heartbeat = settings.BROKER_HEARTBEAT_SECONDS
    found = []
    for one in (part.strip() for part in url.split(",")):
        if not one:
            continue
        params = pika.URLParameters(one)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = None  # we pause while blocked instead of timing out
        params.connection_attempts = 1
        params.socket_timeout = 5
        if name:
            params.client_properties = {"connection_name": name}
        found.append(params)
    if not found:
        raise ValueError("RABBITMQ_URL names no broker")
    return found
