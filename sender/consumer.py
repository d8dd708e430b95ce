"""The sender process: consume email.requested, deliver on a thread pool, ack from the
connection's thread.

pika channels are not thread-safe: the connection thread only dispatches messages to the pool
and runs the acks, rejects and retry publishes that the worker threads hand back through
`add_callback_threadsafe`. So one process keeps SENDER_CONCURRENCY provider calls in flight
while its connection stays single-threaded.

Attempts are scheduled in the data (see handlers.py): the event's outbox row is armed again for
its next attempt and the message is acked. Only waits that spend no attempt go through the
broker: a retry there is the same message (same message_id and body) published, confirmed, to
the delay queue whose TTL fits the wanted delay (a provider pause, a database outage, a rejected
key, a sender stopping), then the original is acked.

RabbitMQ before 4.0 counts every return of a message towards the queue's delivery limit, a
closed connection's included, so connection churn alone could dead-letter a healthy message.
A message that arrives with two deliveries or fewer left (this one included) is therefore not
handled but refreshed, on the connection thread as it arrives: a fresh copy (the same message id and body,
its count back at 0) is published, confirmed, and this one acked (core.broker.refresh). Only a
message that breaks the sender round after round (core.broker.REFRESH_MAX) reaches the
dead-letter queue, and one that cannot be parsed goes there at once.

The provider's reports, which settle the deliveries in doubt, are noted on the deliveries by the
webhook that stores them. Earlier releases routed them here, through the sender-receipts queue:
the same connection still drains that queue (unbound now, core.broker), so reports an earlier
release left there are noted too.

A rejected key stops consuming requests (readiness says why) and the key is probed until it
works again. SIGTERM stops taking messages, gives the ones not started back through the
shortest delay queue (so they do not burn the queue's delivery limit), lets the started ones
finish, and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pika
import psycopg2
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPConnectionError, AMQPError
from prometheus_client import Counter, Gauge, Histogram

from core.broker import Topology, connection_parameters, declare_topology, fresh_properties, last_delivery, refresh
from core.contracts import ContractError, EmailDeliveryStatus, EmailDeliveryStatuses, EmailRequested, event_from_dict
from core.deliveries.batching import outage
from core.outbox.deadletters import DeadLetterKeeper, DeadLetterMessage
from core.workers import ReconnectingWorker
from sender.handlers import ACK, BAD_KEY_PAUSE, RETRY, Decision, Policy, handle_email_requested

log = structlog.get_logger(__name__)

IN_FLIGHT = Gauge("sender_in_flight", "Messages being handled")
QUEUE_LAG = Histogram(
    "sender_queue_lag_seconds",
    "From the email's acceptance to a sender starting on it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PROVIDER_KEY_OK = Gauge("sender_provider_key_ok", "1 while the provider accepts our key")
REFRESHED = Counter(
    "sender_messages_refreshed_total",
    "Messages published afresh near the queue's delivery limit, before disconnects could dead-letter them",
)
RECEIPTS = Counter(
    "sender_provider_receipts_total", "Provider reports noted on deliveries, from the retired sender-receipts queue"
)


@dataclass(frozen=True)
class SenderWorkerConfig:
    broker_url: str
    prefetch: int = 100
    concurrency: int = 64
    key_probe_seconds: float = 30.0
    shutdown_grace_seconds: float = 25.0


def delay_route(topology: Topology, delay_seconds: float, role: str = "sender") -> tuple[str, int]:
    """The delay queue of `role` for `delay_seconds` and the per-message TTL (ms) to set: the
    smallest tier that is long enough (or the longest), the TTL capped by the tier."""
    tiers = sorted(topology.consumer(role).retry_delays_ms)
    wanted = max(1, int(delay_seconds * 1000))
    tier = next((t for t in tiers if t >= wanted), tiers[-1])
    return topology.delay_queue(role, tier), min(wanted, tier)


class SenderWorker(ReconnectingWorker):
    name = "sender"

    def __init__(self, *, config: SenderWorkerConfig, topology: Topology, provider, store, policy: Policy, health):
        super().__init__(health)
        self.config, self.topology, self.provider, self.store, self.policy = config, topology, provider, store, policy
        self.key_rejected = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer_tag: str | None = None
        self._receipts_tag: str | None = None
        self._keeper = DeadLetterKeeper(
            queues=[topology.dead_letter_queue("sender"), topology.dead_letter_queue("sender-receipts")],
            keep=self._keep_dead_letter,
        )
        self._executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="send")
        self._work: dict[int, tuple[Future, object, pika.BasicProperties, bytes, str]] = {}
        self._work_lock = threading.Lock()
        # Acks and retries the pool threads hand to the connection's thread (see _later).
        self._later_lock = threading.Lock()
        self._actions: list[tuple[BlockingChannel, int, Callable[[], object]]] = []
        # The connection a wake-up is asked of: one asked of a lost connection never comes, and
        # the next action asks the new connection for its own.
        self._waking: pika.BlockingConnection | None = None
        self._next_probe = 0.0
        health.set("provider_key", True)
        PROVIDER_KEY_OK.set(1)

    # Lifecycle (the hooks of core.workers.ReconnectingWorker) ----------------------------------

    def started_fields(self) -> dict:
        return {"concurrency": self.config.concurrency, "prefetch": self.config.prefetch}

    def open_postgres(self) -> None:
        self.store.ping()

    def open_broker(self) -> None:
        self._connection = pika.BlockingConnection(connection_parameters(self.config.broker_url, name="sender"))
        channel = self._connection.channel()
        declare_topology(channel, self.topology)
        channel.basic_qos(prefetch_count=self.config.prefetch)
        channel.confirm_delivery()  # retry publishes are confirmed before the original is acked
        self._channel = channel

    def disconnect(self, lost: str | None) -> None:
        self._close_connection()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    def _close_connection(self) -> None:
        with self._later_lock:
            self._actions, self._waking = [], None  # for the lost channel: nothing to run
        connection, self._connection, self._channel = self._connection, None, None
        self._consumer_tag = self._receipts_tag = None
        if connection is not None and connection.is_open:
            with contextlib.suppress(AMQPError):
                connection.close()

    def _broker(self) -> tuple[pika.BlockingConnection, BlockingChannel]:
        """The connection and channel of open_broker(), which the loop calls before work()."""
        assert self._connection is not None and self._channel is not None, "the loop opens the broker first"
        return self._connection, self._channel

    # Consuming -------------------------------------------------------------------------------

    def work(self) -> None:
        connection, channel = self._broker()
        self._receipts_tag = channel.basic_consume(self.topology.queue("sender-receipts"), self._on_receipts)
        if not self.key_rejected.is_set():
            self._start_consuming()
        while not self._stopping:
            self.health.tick()
            if not connection.is_open:  # closed inside a callback, whose error was handled there
                raise AMQPConnectionError("the broker connection closed")
            connection.process_data_events(time_limit=0.25)
            self._keeper.poll(channel, time.monotonic())
            if self.key_rejected.is_set():
                self._while_key_rejected()
        self._drain()

    def _start_consuming(self) -> None:
        self._consumer_tag = self._broker()[1].basic_consume(self.topology.queue("sender"), self._on_message)

    def _stop_consuming(self) -> None:
        if self._consumer_tag is not None and self._channel is not None and self._channel.is_open:
            self._channel.basic_cancel(self._consumer_tag)
        self._consumer_tag = None

    def _while_key_rejected(self) -> None:
        if self._consumer_tag is not None:
            self._stop_consuming()
            self.health.set("provider_key", False)
            PROVIDER_KEY_OK.set(0)
            log.error("sending_paused_bad_key", probe_seconds=self.config.key_probe_seconds)
            self._next_probe = time.monotonic() + self.config.key_probe_seconds
        if time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + self.config.key_probe_seconds
            if self.provider.check_key():
                self.key_rejected.clear()
                self.health.set("provider_key", True)
                PROVIDER_KEY_OK.set(1)
                log.info("sending_resumed_key_accepted")
                self._start_consuming()

    def _on_message(self, channel, method, properties, body) -> None:
        if not self._refreshed(channel, method.delivery_tag, properties, body, "sender"):
            self._submit(self._handle, "sender", channel, method.delivery_tag, properties, body)

    def _on_receipts(self, channel, method, properties, body) -> None:
        if not self._refreshed(channel, method.delivery_tag, properties, body, "sender-receipts"):
            self._submit(self._handle_receipts, "sender-receipts", channel, method.delivery_tag, properties, body)

    def _refreshed(self, channel, tag: int, properties, body: bytes, role: str) -> bool:
        """On arrival, on the connection thread: a message near its queue's delivery limit (closed
        connections count on RabbitMQ 3.x) goes back as a fresh copy, confirmed, and this one is
        acked, before it can wait in the pool while another disconnect kills it."""
        if not last_delivery(properties, self.topology.consumer(role).delivery_limit):
            return False
        queue = self.topology.queue(role)
        try:
            refresh(channel, queue, properties, body)
        except AMQPError as exc:
            log.warning("refresh_publish_failed", queue=queue, error=str(exc))
            if channel.is_open:
                channel.basic_nack(tag, requeue=True)
            return True
        channel.basic_ack(tag)
        REFRESHED.inc()
        log.warning("message_refreshed_before_delivery_limit", queue=queue, event_id=properties.message_id)
        return True

    def _submit(self, handler, role: str, channel, tag: int, properties, body: bytes) -> None:
        with self._work_lock:
            future = self._executor.submit(handler, channel, tag, properties, body)
            self._work[tag] = (future, channel, properties, body, role)

    def _drain(self) -> None:
        """SIGTERM: take nothing new, give back what has not started, finish the rest."""
        self._stop_consuming()
        if self._receipts_tag is not None and self._channel is not None and self._channel.is_open:
            self._channel.basic_cancel(self._receipts_tag)
        self._receipts_tag = None
        with self._work_lock:
            waiting = [(tag, item) for tag, item in self._work.items() if item[0].cancel()]
        for tag, (_, channel, properties, body, role) in waiting:
            self._retry_now(
                channel, tag, properties, body, Decision(RETRY, delay=0, reason="sender stopping"), role=role
            )
        connection, _ = self._broker()
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        while time.monotonic() < deadline:
            with self._work_lock:
                busy = [item[0] for item in self._work.values() if not item[0].done()]
            if not busy or not connection.is_open:  # closed: the broker redelivers the rest
                break
            connection.process_data_events(time_limit=0.1)
        if connection.is_open:
            connection.process_data_events(time_limit=0.2)  # flush the last acks
        log.info("sender_drained", returned=len(waiting))

    # Work (pool threads) -----------------------------------------------------------------------

    def _handle(self, channel, tag: int, properties, body: bytes) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=properties.correlation_id, event_id=properties.message_id)
        IN_FLIGHT.inc()
        try:
            try:
                event = EmailRequested.from_dict(json.loads(body))
            except (ValueError, TypeError, ContractError) as exc:
                log.error("poison_message_dead_lettered", error=str(exc)[:300])
                self._later(channel, tag, lambda: channel.basic_reject(tag, requeue=False))
                return
            QUEUE_LAG.observe(max(0.0, time.time() - datetime.fromisoformat(event.occurred_at).timestamp()))
            try:
                decision = handle_email_requested(
                    event,
                    provider=self.provider,
                    store=self.store,
                    policy=self.policy,
                    key_rejected=self.key_rejected.is_set(),
                )
                self.outages.up("postgres")
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self.outages.down("postgres", exc)
                decision = Decision(RETRY, delay=1, reason="database unavailable")
            if decision.action == ACK:
                self._later(channel, tag, lambda: channel.basic_ack(tag))
            else:
                if decision.action == BAD_KEY_PAUSE:
                    self.key_rejected.set()
                    decision = Decision(RETRY, delay=self.config.key_probe_seconds, reason=decision.reason)
                self._later(channel, tag, lambda: self._retry_now(channel, tag, properties, body, decision))
        except Exception:
            # A bug, not an outage: return the message; the queue's delivery limit ends the loop.
            log.exception("message_handling_failed")
            self._later(channel, tag, lambda: channel.basic_nack(tag, requeue=True))
        finally:
            IN_FLIGHT.dec()
            structlog.contextvars.clear_contextvars()

    def _keep_dead_letter(self, message: DeadLetterMessage) -> None:
        """A request that died in the sender's queue broke the sender again and again (or could
        not be read): its unfinished recipients fail with the reason, so no email waits forever,
        and the message is kept for ops to re-drive. Anything else is kept, parked."""
        request = None
        if message.queue == self.topology.queue("sender"):
            try:
                request = EmailRequested.from_dict(message.json() or {})
            except (ContractError, TypeError):
                request = None
        if request is None:
            self.store.park_dead_letter(message, resolution="parked", detail="kept for ops: re-drive or dismiss it")
            return
        reason = f"dead-lettered ({message.reason}, {message.deaths} deliveries): it broke the sender every time"
        failed = self.store.fail_dead_request(request, reason=reason, provider=self.provider.name)
        self.store.park_dead_letter(
            message, resolution="failed", detail=f"{failed} recipients failed: {reason}; re-drive to send them again"
        )

    def _handle_receipts(self, channel, tag: int, properties, body: bytes) -> None:
        """Note the provider's reports on the deliveries they name; ack. A report that cannot be
        read goes to the dead-letter queue; a database outage returns it later."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=properties.correlation_id, event_id=properties.message_id)
        try:
            event = event_from_dict(json.loads(body))
            items: list[EmailDeliveryStatus] = []
            for item in event.items() if isinstance(event, EmailDeliveryStatuses) else [event]:
                if not isinstance(item, EmailDeliveryStatus):
                    raise ContractError(f"not a delivery status: {event.TYPE}")
                items.append(item)
        except (ValueError, TypeError, KeyError, ContractError) as exc:
            log.error("poison_message_dead_lettered", error=str(exc)[:300])
            self._later(channel, tag, lambda: channel.basic_reject(tag, requeue=False))
            return
        try:
            noted = self.store.record_receipts(
                [
                    {
                        "event_id": item.request_event_id,
                        "recipient": item.recipient,
                        "message_id": item.provider_message_id,
                        "reported_at": item.reported_at,
                    }
                    for item in items
                ]
            )
            self.outages.up("postgres")
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if outage(exc):
                self.outages.down("postgres", exc)
                self._later(
                    channel,
                    tag,
                    lambda: self._retry_now(
                        channel,
                        tag,
                        properties,
                        body,
                        Decision(RETRY, delay=5, reason="database unavailable"),
                        role="sender-receipts",
                    ),
                )
                return
            # A deadlock with another batch, a timeout: not an outage; the message comes back.
            log.warning("receipts_statement_failed", error=str(exc)[:300], pgcode=exc.pgcode)
            self._later(channel, tag, lambda: channel.basic_nack(tag, requeue=True))
            return
        except Exception:
            log.exception("receipts_handling_failed")
            self._later(channel, tag, lambda: channel.basic_nack(tag, requeue=True))
            return
        finally:
            structlog.contextvars.clear_contextvars()
        RECEIPTS.inc(noted)
        self._later(channel, tag, lambda: channel.basic_ack(tag))

    def _later(self, channel, tag: int, action) -> None:
        """Run `action` on the connection's thread, if the channel it came from is still open
        (after a reconnect the broker has requeued the message anyway). Actions queue up and one
        wake-up of the connection's thread runs all that are waiting, not one wake-up each."""
        with self._later_lock:
            self._actions.append((channel, tag, action))
            connection = self._connection
            if connection is None or self._waking is connection:
                return
            self._waking = connection
        try:
            connection.add_callback_threadsafe(self._run_actions)
        except AMQPError:
            with self._later_lock:
                self._waking = None

    def _run_actions(self) -> None:
        with self._later_lock:
            self._waking = None
            actions, self._actions = self._actions, []
        for channel, tag, action in actions:
            # One of a lost channel: the broker has requeued its message, and its tag may now be
            # another message's on the new channel (tags restart at 1), whose entry stays.
            if channel is not self._channel or not channel.is_open:
                continue
            with self._work_lock:
                self._work.pop(tag, None)
            action()

    def _retry_now(self, channel, tag: int, properties, body: bytes, decision: Decision, role: str = "sender") -> None:
        """On the connection thread: publish the message to its delay queue, confirmed, then ack."""
        queue, ttl_ms = delay_route(self.topology, decision.delay, role)
        retries = int((properties.headers or {}).get("x-retries", 0)) + 1
        retry = fresh_properties(
            properties, {"x-retries": retries, "x-retry-reason": decision.reason[:200]}, expiration=str(ttl_ms)
        )
        try:
            channel.basic_publish("", queue, body, retry, mandatory=True)
        except AMQPError as exc:
            log.warning("retry_publish_failed", error=str(exc))
            if channel.is_open:
                channel.basic_nack(tag, requeue=True)
            return
        channel.basic_ack(tag)
        with self._work_lock:
            self._work.pop(tag, None)
