"""The projector process: consume every email event from its own queue and apply them in
batches (up to `batch_size` events or `batch_wait` seconds per transaction, then one
multiple-ack). A batch that fails is retried one event at a time, so one bad event goes to the
dead-letter queue without holding the others. A message that cannot be parsed goes there at once.
Reconnects with capped backoff; SIGTERM applies the batch in hand and exits 0.
"""

from __future__ import annotations

import json
import time

import pika
import psycopg2
import structlog
from pika.exceptions import AMQPError

from core.broker import Topology, connection_parameters, declare_topology
from core.contracts import ContractError, event_from_dict
from core.workers import Backoff, Outages, StoppableWorker
from outbox_relay.relay import connect_postgres
from query_api.projector import BATCH_SECONDS, DEAD, apply_batch, unbatched

log = structlog.get_logger(__name__)


class ProjectorWorker(StoppableWorker):
    def __init__(self, *, broker_url: str, topology: Topology, database: dict, health,
                 batch_size: int = 100, batch_wait: float = 0.05):
        self.broker_url, self.topology, self.database, self.health = broker_url, topology, database, health
        self.batch_size, self.batch_wait = batch_size, batch_wait
        self.outages = Outages(health)
        super().__init__()
        self._conn = None
        self._amqp = None


    def run(self) -> int:
        backoff = Backoff()
        log.info("projector_started", batch_size=self.batch_size)
        while not self._stop.stopping:
            self.health.tick()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect_postgres(self.database, application_name="projector",
                                                  idle_in_transaction_ms=60_000)
                self.outages.up("postgres")
                self._amqp = pika.BlockingConnection(connection_parameters(self.broker_url, name="projector"))
                channel = self._amqp.channel()
                declare_topology(channel, self.topology)
                self.outages.up("rabbitmq")
                backoff.reset()
                self._consume(channel)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self.outages.down("postgres", exc)
                if self._conn is not None:
                    self._conn.close()
            except AMQPError as exc:
                self.outages.down("rabbitmq", exc)
            self._close_amqp()
            if not self._stop.stopping:
                self._stop.sleep(backoff.next())
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        log.info("projector_stopped")
        return 0

    def _close_amqp(self) -> None:
        amqp, self._amqp = self._amqp, None
        if amqp is not None and amqp.is_open:
            try:
                amqp.close()
            except AMQPError:
                pass

    def _consume(self, channel) -> None:
        channel.basic_qos(prefetch_count=self.batch_size * 2)
        pending: list[tuple[int, object]] = []
        size = 0  # events in `pending`, the items of a batch of statuses counted one by one
        deadline = 0.0
        for method, properties, body in channel.consume(self.topology.queue("projector"), inactivity_timeout=0.02):
            self.health.tick()
            if method is not None:
                try:
                    event = event_from_dict(json.loads(body))
                    size += len(unbatched(event))  # checks a batch's items: a bad one makes it poison
                    pending.append((method.delivery_tag, event))
                except (ValueError, TypeError, KeyError, ContractError) as exc:
                    DEAD.inc()
                    log.error("poison_event_dead_lettered", event_id=properties.message_id, error=str(exc)[:300])
                    channel.basic_reject(method.delivery_tag, requeue=False)
                if len(pending) == 1:
                    deadline = time.monotonic() + self.batch_wait
            if pending and (size >= self.batch_size or time.monotonic() >= deadline or self._stop.stopping):
                self._flush(channel, pending)
                pending, size = [], 0
            if self._stop.stopping and not pending:
                break
        channel.cancel()

    def _flush(self, channel, pending) -> None:
        started = time.perf_counter()
        try:
            apply_batch(self._conn, [event for _, event in pending])
            channel.basic_ack(pending[-1][0], multiple=True)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise  # an outage: the unacked messages return when the connection closes
        except psycopg2.Error as exc:
            log.warning("projector_batch_failed_retrying_singly", events=len(pending), error=str(exc)[:300])
            for tag, event in pending:
                try:
                    apply_batch(self._conn, [event])
                    channel.basic_ack(tag)
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    raise
                except psycopg2.Error as single:
                    DEAD.inc()
                    log.error("event_dead_lettered", event_id=event.event_id, type=event.TYPE,
                              error=str(single)[:300])
                    channel.basic_reject(tag, requeue=False)
        BATCH_SECONDS.observe(time.perf_counter() - started)
