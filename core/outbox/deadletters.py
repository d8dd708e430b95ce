"""Dead letters: what a consumer's dead-letter queue received, recorded so that nothing is parked
silently, and what ops do with it.

Each consumer keeps its own dead-letter queues (`DeadLetterKeeper` polls them on its connection):
it records every message in `outbox_dead_letter` with RabbitMQ's reason (rejected: poison, an
unknown schema version; delivery_limit: it broke its consumer again and again; expired), acts on
it where it can (the sender fails the recipients of a request that died, with the reason, so no
email waits forever), and acks. Ops list the records, re-drive them (the same event id goes out
again through the outbox) or dismiss them; `dead_letters_parked` counts what waits for them and
`dead_letter_queue_depth` what no keeper has taken yet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from prometheus_client import Gauge

from core.broker import EVENTS_BATCH

log = structlog.get_logger(__name__)

QUEUE_DEPTH = Gauge("dead_letter_queue_depth", "Messages waiting in a dead-letter queue", ["queue"])
PARKED = Gauge("dead_letters_parked", "Dead letters recorded and waiting for ops (re-drive or dismiss)")

PARK_SQL = """
    INSERT INTO outbox_dead_letter (received_at, queue, reason, deaths, died_at, message_id, type, email_id, body,
                                    headers, detail, resolution, resolved_by)
    VALUES (now(), %(queue)s, %(reason)s, %(deaths)s, %(died_at)s, %(message_id)s, %(type)s, %(email_id)s,
            %(body)s, %(headers)s::jsonb, %(detail)s, %(resolution)s, %(resolved_by)s)
    ON CONFLICT (queue, message_id, died_at, deaths) DO NOTHING
    RETURNING id
"""
PARKED_SQL = "SELECT count(*) FROM outbox_dead_letter WHERE resolution = 'parked'"


def _plain(value):
    """A header value as JSON can hold it."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _when(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    return datetime.now(UTC)


def _storable(text: str) -> str:
    return text.replace("\x00", "\\x00")  # Postgres text holds no NUL


@dataclass(frozen=True)
class DeadLetterMessage:
    """A message as a dead-letter queue delivers it, with what RabbitMQ says of its death."""

    queue: str  # the work queue it died in
    reason: str
    deaths: int
    died_at: datetime
    message_id: str
    type: str
    body: bytes
    headers: dict

    @classmethod
    def from_amqp(cls, method, properties, body: bytes) -> DeadLetterMessage:
        headers = dict(properties.headers or {})
        death: dict = next(iter(headers.get("x-death") or []), {}) or {}
        keys = death.get("routing-keys") or [getattr(method, "routing_key", "")]
        return cls(
            queue=str(death.get("queue") or headers.get("x-first-death-queue") or ""),
            reason=str(death.get("reason") or headers.get("x-first-death-reason") or "unknown"),
            deaths=int(death.get("count") or 1),
            died_at=_when(death.get("time")),
            message_id=str(properties.message_id or "")[:200],
            type=str(properties.type or (keys[0] if keys else "") or "")[:64],
            body=body or b"",
            headers=_plain(headers),
        )

    def json(self) -> dict | None:
        """The body as a JSON object, or None."""
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def record(self, *, resolution: str = "parked", detail: str = "", resolved_by: str = "") -> dict:
        """The parameters of PARK_SQL."""
        data = self.json() or {}
        email_id = data.get("email_id") or (self.headers.get("aggregateid") if self.type.startswith("email.") else None)
        try:
            email_id = int(email_id) if email_id is not None and 0 < int(email_id) < 2**63 else None
        except (TypeError, ValueError):
            email_id = None
        return {
            "queue": self.queue[:200],
            "reason": self.reason[:32],
            "deaths": self.deaths,
            "died_at": self.died_at,
            "message_id": self.message_id,
            "type": self.type,
            "email_id": email_id,
            "body": _storable(self.body.decode("utf-8", "backslashreplace")),
            "headers": _storable(json.dumps(self.headers)),
            "detail": _storable(detail[:2000]),
            "resolution": resolution,
            "resolved_by": resolved_by,
        }


def parked_already(cursor, *, queue: str, message_id: str) -> bool:
    """Whether a message of `queue` with this id waits for ops already: a consumer that records
    one itself (not through the keeper, whose messages dedupe on their death) checks first."""
    cursor.execute(
        "SELECT 1 FROM outbox_dead_letter WHERE queue = %s AND message_id = %s AND resolution = 'parked'",
        [queue, message_id],
    )
    return cursor.fetchone() is not None


def park(
    cursor, message: DeadLetterMessage, *, resolution: str = "parked", detail: str = "", resolved_by: str = ""
) -> bool:
    """Record `message` (once: a keeper that dies before its ack records it again as a no-op).
    True when it was new."""
    cursor.execute(PARK_SQL, message.record(resolution=resolution, detail=detail, resolved_by=resolved_by))
    return cursor.fetchone() is not None


class DeadLetterKeeper:
    """Polls dead-letter queues on a pika BlockingChannel, hands each message to `keep` (which
    records it and acts on it; a database outage raises and the message goes back), and acks.
    Call `poll` from the connection's own thread; it does nothing more often than `interval`."""

    def __init__(
        self, *, queues: list[str], keep: Callable[[DeadLetterMessage], None], interval: float = 1.0, batch: int = 100
    ):
        self.queues, self.keep, self.interval, self.batch = queues, keep, interval, batch
        self._next = 0.0

    def poll(self, channel, now: float) -> int:
        if now < self._next:
            return 0
        self._next = now + self.interval
        kept = 0
        for queue in self.queues:
            for _ in range(self.batch):
                method, properties, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    QUEUE_DEPTH.labels(queue=queue).set(0)
                    break
                QUEUE_DEPTH.labels(queue=queue).set(method.message_count + 1)
                message = DeadLetterMessage.from_amqp(method, properties, body)
                try:
                    self.keep(message)
                except Exception:
                    channel.basic_nack(method.delivery_tag, requeue=True)
                    raise
                channel.basic_ack(method.delivery_tag)
                kept += 1
                log.error(
                    "dead_letter_recorded",
                    queue=message.queue,
                    reason=message.reason,
                    deaths=message.deaths,
                    event_id=message.message_id,
                    type=message.type,
                )
        return kept


# Ops: list, re-drive, dismiss (Django) -------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterAction:
    count: int  # records acted on
    skipped: list[str]  # why the others were left alone
    dry_run: bool


def dead_letters_redrive(
    *, ids: list[int], actor: str, via: str, reason: str = "", dry_run: bool = False
) -> DeadLetterAction:
    """Send the recorded messages `ids` again, through the outbox, with their own event ids:
    a request's failed or held recipients are re-driven (see core.deliveries.services), any other
    event is published again (the provider's reports are also noted on the deliveries they name).
    A packed message's events (core.broker.EVENTS_BATCH) are each sent again alone. Records that
    are not a JSON event (or array of them) are skipped, with the reason. Idempotent: a record is
    re-driven once."""
    from django.db import transaction
    from django.utils import timezone as dj_timezone

    from core.outbox.models import DeadLetter
    from core.outbox.services import notify_relay

    records = list(DeadLetter.objects.filter(pk__in=ids).exclude(resolution__in=["redriven", "dismissed"]))
    skipped, ready = [], []
    for record in records:
        try:
            data = json.loads(record.body)
        except ValueError:
            data = None
        # A packed message (core.broker.EVENTS_BATCH) is its events, each sent again alone.
        packed = isinstance(data, list) and record.type == EVENTS_BATCH
        events = data if packed else [data]
        if not events or not all(isinstance(item, dict) and isinstance(item.get("type"), str) for item in events):
            skipped.append(f"#{record.pk}: the body is not a JSON event" + (" array" if packed else ""))
            continue
        # A packed message's events name themselves; a message is its own event, by its id.
        named = [e.get("event_id") for e in events] if packed else [record.message_id or events[0].get("event_id")]
        try:
            event_ids = [str(uuid.UUID(str(event_id))) for event_id in named]
        except ValueError:
            skipped.append(f"#{record.pk}: " + ("an event has no event id" if packed else "it has no event id"))
            continue
        # A packed message, or one event of one (the projector kept it alone): the projector's.
        of_packed = packed or "packed_in" in record.headers
        ready.append((record, of_packed, list(zip(event_ids, events, strict=True))))
    if dry_run:
        return DeadLetterAction(count=len(ready), skipped=skipped, dry_run=True)
    with transaction.atomic():
        for record, of_packed, events in ready:
            for event_id, data in events:
                _redrive_event(record, event_id, data, packed=of_packed, actor=actor, via=via, reason=reason)
            record.resolution, record.resolved_at, record.resolved_by = "redriven", dj_timezone.now(), actor
            record.save(update_fields=["resolution", "resolved_at", "resolved_by"])
        notify_relay()
    log.info("dead_letters_redriven", count=len(ready), skipped=len(skipped), actor=actor, via=via)
    return DeadLetterAction(count=len(ready), skipped=skipped, dry_run=False)


def _redrive_event(record, event_id: str, data: dict, *, packed: bool, actor: str, via: str, reason: str) -> None:
    """One event of dead letter `record` back into the outbox, in the caller's transaction. An
    event of a packed message (the projector's) is only published again, for the read model: the
    sender had the request from a message of its own, and its failed recipients must not go
    again. Its headers are rebuilt from the payload, as the relay's message had none."""
    from django.db import connection
    from django.utils import timezone as dj_timezone

    from core.deliveries.services import RedriveSelection, deliveries_redrive
    from core.deliveries.store import note_provider_reports, provider_reports
    from core.outbox.models import OutboxEvent

    if packed:
        headers = {
            "schema_version": data.get("schema_version", 1),
            "correlation_id": data.get("correlation_id", ""),
            "aggregateid": str(data.get("email_id", record.pk)),
        }
    else:
        headers = {k: v for k, v in record.headers.items() if k in ("schema_version", "correlation_id", "aggregateid")}
    OutboxEvent.objects.update_or_create(
        id=event_id,
        defaults={
            "type": data["type"],
            "payload": data,
            "headers": headers,
            "published_at": None,
            "failed_at": None,
            "not_before": dj_timezone.now(),
            "last_error": f"re-driven from dead letter #{record.pk}",
            "aggregatetype": "sent_email" if "email_id" in data else "dead_letter",
            "aggregateid": str(data.get("email_id", record.pk)),
        },
    )
    if packed:
        return
    if data["type"] in ("email.delivery_statuses", "email.delivery_status"):
        # Reports an earlier release queued for the sender (sender-receipts) reach only the
        # projector now: noted here, as the webhook notes new ones.
        with connection.cursor() as cursor:
            note_provider_reports(cursor, provider_reports(data))
    if data["type"] == "email.requested":
        deliveries_redrive(
            selection=RedriveSelection(event_ids=(event_id,)),
            actor=actor,
            via=via,
            reason=reason or f"dead letter #{record.pk}",
        )


def dead_letters_dismiss(*, ids: list[int], actor: str) -> int:
    """Mark the records `ids` dealt with, without sending anything. Returns how many."""
    from django.utils import timezone as dj_timezone

    from core.outbox.models import DeadLetter

    count = DeadLetter.objects.filter(pk__in=ids, resolution__in=["parked", "failed"]).update(
        resolution="dismissed", resolved_at=dj_timezone.now(), resolved_by=actor
    )
    log.info("dead_letters_dismissed", count=count, actor=actor)
    return count
