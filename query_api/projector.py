"""The projector process: consume every email event from its own queue and apply them in
batches (up to `batch_size` events, `batch_wait` seconds or PREFETCH_MESSAGES messages per
transaction, then one multiple-ack). The relay packs the events of each of its batches into one
message (core.broker.EVENTS_BATCH); a message of one event (an earlier release's relay's) is read
too. A batch that fails is retried one event at a time, so one bad event is dead-lettered without
holding the others: a single event's message is rejected to the dead-letter queue, an event of a
packed message is parked alone in Postgres, as the dead-letter keeper parks a message. A message
that cannot be parsed goes to the dead-letter queue at once. Reconnects with capped backoff;
SIGTERM applies the batch in hand and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pika
import psycopg2
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from prometheus_client import Counter, Gauge, Histogram
from psycopg2.extensions import connection as PgConnection

from core.broker import EVENTS_BATCH, Topology, connection_parameters, declare_topology, last_delivery, refresh
from core.contracts import ContractError, EmailEvent, Event, event_from_dict
from core.db import connect_postgres
from core.outbox.deadletters import DeadLetterKeeper, DeadLetterMessage, park, parked_already
from core.workers import ReconnectingWorker
from query_api.apply import apply_batch, unbatched

log = structlog.get_logger(__name__)


DEAD = Counter("projector_events_dead_lettered_total", "Events sent to the dead-letter queue")
BATCH_SECONDS = Histogram(
    "projector_batch_seconds", "One batch transaction", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
)
REFRESHED = Counter(
    "projector_messages_refreshed_total", "Messages published afresh on their last delivery before the queue's limit"
)
UNFINISHED = Gauge(
    "emails_unfinished",
    "Emails not finished (a recipient neither sent nor failed) "
    "EMAIL_STUCK_AFTER_SECONDS after they were accepted (or were due, when scheduled), as the read model sees them",
)
LAG = Gauge(
    "projector_lag_seconds",
    "How far the read model trails the events: the age of the newest event of the last batch applied, "
    "0 while the queue has nothing waiting",
)
UNFINISHED_SQL = """
    SELECT count(*) FROM read_sent_email
     WHERE status IN ('queued', 'sending') AND coalesce(send_at, created) < now() - %s * interval '1 second'
"""


# Messages in hand at most. A packed message carries up to core.broker.EVENTS_PER_MESSAGE events
# and BYTES_PER_MESSAGE bytes: a bound on the memory the prefetch takes. A full window is applied
# at once, without waiting for PROJECTOR_BATCH_SIZE events or PROJECTOR_BATCH_WAIT_MS.
PREFETCH_MESSAGES = 20


@dataclass(frozen=True)
class Pending:
    """A message in hand: its delivery tag, its id, whether it was packed, its events, and what
    they stand for (a batch of statuses as its items, read once, on arrival)."""

    tag: int
    message_id: str
    packed: bool
    events: list[Event]
    items: list[EmailEvent]


class ProjectorWorker(ReconnectingWorker):
    name = "projector"

    def __init__(
        self,
        *,
        broker_url: str,
        topology: Topology,
        database: dict,
        health,
        batch_size: int = 100,
        batch_wait: float = 0.05,
        stuck_after: float = 900,
        stats_interval: float = 5.0,
        webhooks_channel: str | None = None,
    ):
        super().__init__(health)
        self.broker_url, self.topology, self.database = broker_url, topology, database
        self.batch_size, self.batch_wait = batch_size, batch_wait
        self.stuck_after, self.stats_interval = stuck_after, stats_interval
        self.webhooks_channel = webhooks_channel  # NOTIFYed when a batch queued client webhooks
        self._next_stats = 0.0
        self._conn: PgConnection | None = None
        self._amqp: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    # Lifecycle (the hooks of core.workers.ReconnectingWorker) ----------------------------------

    def started_fields(self) -> dict:
        return {"batch_size": self.batch_size}

    def open_postgres(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect_postgres(self.database, application_name="projector", idle_in_transaction_ms=60_000)

    def open_broker(self) -> None:
        self._amqp = amqp = pika.BlockingConnection(connection_parameters(self.broker_url, name="projector"))
        self._channel = channel = amqp.channel()
        declare_topology(channel, self.topology)

    def work(self) -> None:
        assert self._amqp is not None and self._channel is not None, "the loop opens the broker first"
        self._consume(self._amqp, self._channel)

    @property
    def _db(self) -> PgConnection:
        assert self._conn is not None, "the loop opens Postgres first"
        return self._conn

    def disconnect(self, lost: str | None) -> None:
        if lost == "postgres" and self._conn is not None:
            self._conn.close()
        self._close_amqp()

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    def _close_amqp(self) -> None:
        amqp, self._amqp, self._channel = self._amqp, None, None
        if amqp is not None and amqp.is_open:
            with contextlib.suppress(AMQPError):
                amqp.close()

    def _keep_dead_letter(self, message: DeadLetterMessage) -> None:
        """An event the projector could not apply (or read): kept for ops; the read model may lag
        for its email until reconcile mends it from the write side."""
        with self._db.cursor() as cursor:
            park(
                cursor,
                message,
                detail="the projector could not apply it; reconcile mends the read model",
                resolved_by="projector",
            )
        self._db.commit()

    def _consume(self, amqp: pika.BlockingConnection, channel: BlockingChannel) -> None:
        keeper = DeadLetterKeeper(queues=[self.topology.dead_letter_queue("projector")], keep=self._keep_dead_letter)
        dead_letters = amqp.channel()
        channel.basic_qos(prefetch_count=PREFETCH_MESSAGES)
        pending: list[Pending] = []
        size = 0  # events in `pending`, the items of a batch of statuses counted one by one
        deadline = 0.0
        refresher = amqp.channel()
        refresher.confirm_delivery()
        queue, limit = self.topology.queue("projector"), self.topology.consumer("projector").delivery_limit
        for method, properties, body in channel.consume(queue, inactivity_timeout=0.02):
            self.health.tick()
            keeper.poll(dead_letters, time.monotonic())
            if method is None and not pending:
                LAG.set(0)  # nothing delivered within the wait and nothing in hand: caught up
            if method is not None:
                # A delivery has its tag, properties and body; the stubs type them all optional.
                tag = method.delivery_tag
                assert tag is not None and properties is not None and body is not None
                if last_delivery(properties, limit):
                    self._refresh(channel, refresher, queue, tag, properties, body)
                else:
                    try:
                        events, items = self._events_of(properties, body)
                        size += len(items)
                        pending.append(
                            Pending(tag, properties.message_id or "", properties.type == EVENTS_BATCH, events, items)
                        )
                        if len(pending) == 1:  # the first in hand: the batch waits this long at most
                            deadline = time.monotonic() + self.batch_wait
                    except (ValueError, TypeError, KeyError, ContractError, RecursionError) as exc:
                        DEAD.inc()
                        log.error("poison_event_dead_lettered", event_id=properties.message_id, error=str(exc)[:300])
                        channel.basic_reject(tag, requeue=False)
            if pending and (
                size >= self.batch_size
                or len(pending) >= PREFETCH_MESSAGES  # the broker sends no more until these are acked
                or time.monotonic() >= deadline
                or self._stop.stopping
            ):
                self._flush(channel, pending)
                pending, size = [], 0
            if not pending:
                self._refresh_stats()
            if self._stop.stopping and not pending:
                break
        channel.cancel()

    def _events_of(self, properties, body: bytes) -> tuple[list[Event], list[EmailEvent]]:
        """The events a message carries: one, or a packed message's (EVENTS_BATCH) array of them;
        and what they stand for (a batch of statuses as its items, read and checked once here).
        Raises for a message that cannot be read, or a single event that breaks its contract
        (the message is poison). A packed event that breaks its contract is parked on its own
        (`_park_event`): the others are applied."""
        data = json.loads(body)
        if properties.type != EVENTS_BATCH:
            event = event_from_dict(data)
            return [event], list(unbatched(event))  # a batch's bad item makes it poison
        if not isinstance(data, list):
            raise ValueError(f"{EVENTS_BATCH}: not a JSON array")
        events: list[Event] = []
        items: list[EmailEvent] = []
        for item in data:
            try:
                event = event_from_dict(item)
                items += unbatched(event)
            except (ValueError, TypeError, KeyError, AttributeError, ContractError) as exc:
                self._park_event(properties.message_id or "", item, str(exc))
                continue
            events.append(event)
        return events, items

    def _park_event(self, packed_in: str, item, error: str) -> None:
        """Record one event of a packed message as a dead letter of the projector's queue, as the
        dead-letter keeper records a whole message, so ops see it and can re-drive it; once (a
        projector that dies before its ack finds it recorded when the message comes again)."""
        data = item if isinstance(item, dict) else {}
        event_id = str(data.get("event_id") or "")[:200] or f"{packed_in}:{json.dumps(item)[:100]}"
        queue = self.topology.queue("projector")
        with self._db.cursor() as cursor:
            if parked_already(cursor, queue=queue, message_id=event_id):
                self._db.rollback()
                return
        DEAD.inc()
        log.error("packed_event_dead_lettered", event_id=event_id, packed_in=packed_in, error=error[:300])
        self._keep_dead_letter(
            DeadLetterMessage(
                queue=queue,
                reason="rejected",
                deaths=1,
                died_at=datetime.now(UTC),
                message_id=event_id,
                type=str(data.get("type") or "")[:64],
                body=json.dumps(item).encode(),
                headers={"packed_in": packed_in, "error": error[:300]},
            )
        )

    def _refresh(self, channel, refresher, queue: str, tag: int, properties, body: bytes) -> None:
        """Near the queue's delivery limit (churn counts, core.broker): a fresh copy, confirmed,
        then ack this one. A copy the broker does not take leaves this one to come back alone,
        instead of a reconnect that would return the whole prefetch one delivery nearer."""
        try:
            refresh(refresher, queue, properties, body)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            log.warning("refresh_publish_failed", event_id=properties.message_id, error=str(exc)[:300])
            channel.basic_nack(tag, requeue=True)
            return
        channel.basic_ack(tag)
        REFRESHED.inc()
        log.warning("message_refreshed_before_delivery_limit", event_id=properties.message_id)

    def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.stats_interval
        with self._db.cursor() as cursor:
            cursor.execute(UNFINISHED_SQL, [self.stuck_after])
            row = cursor.fetchone()
            assert row is not None  # count(*) answers one row
            UNFINISHED.set(row[0])
        self._db.rollback()

    def _flush(self, channel, pending: list[Pending]) -> None:
        started = time.perf_counter()
        events = [event for message in pending for event in message.events]
        try:
            if events:
                items = [item for message in pending for item in message.items]
                apply_batch(self._db, items, webhooks_channel=self.webhooks_channel)
            channel.basic_ack(pending[-1].tag, multiple=True)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise  # an outage: the unacked messages return when the connection closes
        except psycopg2.Error as exc:
            log.warning("projector_batch_failed_retrying_singly", events=len(events), error=str(exc)[:300])
            for message in pending:
                self._apply_singly(channel, message)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if events:
            LAG.set(event_age(events[-1]))

    def _apply_singly(self, channel, message: Pending) -> None:
        """Apply a message's events one by one: one that fails is dead-lettered alone, a packed
        message's event parked on its own, a single event's message rejected to the dead-letter
        queue."""
        for event in message.events:
            try:
                apply_batch(self._db, [event], webhooks_channel=self.webhooks_channel)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except psycopg2.Error as single:
                if not message.packed:
                    DEAD.inc()
                    log.error("event_dead_lettered", event_id=event.event_id, type=event.TYPE, error=str(single)[:300])
                    channel.basic_reject(message.tag, requeue=False)
                    return
                self._park_event(message.message_id, event.to_dict(), str(single))
        channel.basic_ack(message.tag)


def event_age(event: Event) -> float:
    """Seconds since `event` occurred (0 for a time that cannot be read or lies ahead)."""
    try:
        occurred = datetime.fromisoformat(event.occurred_at)
    except ValueError:
        return 0.0
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - occurred).total_seconds())
