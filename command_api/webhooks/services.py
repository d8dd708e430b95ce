"""SendGrid's Event Webhook: verify, map to our events, write them to the outbox."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog
from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import connection, transaction
from rest_framework import status
from sendgrid.helpers.eventwebhook import EventWebhook

from command_api.webhooks.models import ProviderEvent
from core.contracts import EmailDeliveryStatus, EmailDeliveryStatuses
from core.errors import ApplicationError
from core.outbox.services import new_event_id, outbox_events_add

log = structlog.get_logger(__name__)

# SendGrid's event names -> our recipient statuses.
STATUS_OF = {
    "processed": "processed",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounce": "bounced",
    "blocked": "bounced",
    "dropped": "dropped",
    "open": "opened",
    "click": "clicked",
    "spamreport": "spam_reported",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


# SendGrid posts up to a few thousand events at once; messages stay well under 1 MB.
STATUSES_PER_EVENT = 500


@dataclass(frozen=True)
class WebhookResult:
    accepted: int
    duplicates: int
    ignored: int


def _forbidden(message: str) -> ApplicationError:
    return ApplicationError(message, status_code=status.HTTP_403_FORBIDDEN)


def verify_signature(*, body: str, signature: str | None, timestamp: str | None) -> None:
    """Raises a 403 ApplicationError unless SendGrid signed `body` recently."""
    key = settings.SENDGRID_WEBHOOK_PUBLIC_KEY
    if not key:
        raise ApplicationError("The webhook verification key is not configured.",
                               status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    if not signature or not timestamp:
        raise _forbidden("Missing webhook signature.")
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        raise _forbidden("Bad webhook timestamp.") from None
    if age > settings.SENDGRID_WEBHOOK_MAX_AGE_SECONDS:
        raise _forbidden("Stale webhook timestamp.")
    try:
        valid = EventWebhook(key).verify_signature(body, signature, timestamp)
    except (ValueError, TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise _forbidden("Bad webhook signature.")


def _reported_at(item: dict) -> datetime:
    try:
        return datetime.fromtimestamp(int(item.get("timestamp")), tz=timezone.utc)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)


def _insert_new(rows: list[ProviderEvent]) -> set[str]:
    if not rows:
        return set()
    now = datetime.now(timezone.utc).isoformat()
    data = [
        {"provider_event_id": r.provider_event_id, "email_id": r.email_id, "request_event_id": str(r.request_event_id),
         "recipient": r.recipient, "status": r.status, "provider_message_id": r.provider_message_id,
         "reason": r.reason, "reported_at": r.reported_at.isoformat(), "received_at": now, "payload": r.payload}
        for r in rows
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO webhook_provider_event
            SELECT * FROM json_populate_recordset(NULL::webhook_provider_event, %s)
            ON CONFLICT DO NOTHING
            RETURNING provider_event_id
            """,
            [json.dumps(data)],
        )
        return {row[0] for row in cursor.fetchall()}


def sendgrid_events_receive(*, body: str, signature: str | None, timestamp: str | None,
                            correlation_id: str) -> WebhookResult:
    """Verify SendGrid's signature, then in one transaction store each new event (SendGrid's
    repeated posts are dropped by sg_event_id) and write the new ones to the outbox as
    `email.delivery_statuses` events (STATUSES_PER_EVENT each). Events without our custom_args, or of kinds we do not track, are ignored.
    Raises ApplicationError: 403 (signature), 400 (not a JSON list)."""
    verify_signature(body=body, signature=signature, timestamp=timestamp)
    try:
        items = json.loads(body)
    except ValueError:
        raise ApplicationError("The body is not JSON.", errors={"body": ["Expected a JSON list of events."]}) from None
    if not isinstance(items, list):
        raise ApplicationError("Expected a JSON list of events.", errors={"body": ["Expected a JSON list of events."]})

    candidates: dict[str, tuple[dict, str]] = {}
    ignored = 0
    for item in items:
        kind = STATUS_OF.get(item.get("event")) if isinstance(item, dict) else None
        if kind is None or not item.get("sg_event_id") or not str(item.get("email_id", "")).isdigit() \
                or not item.get("event_id"):
            ignored += 1
            continue
        candidates[str(item["sg_event_id"])] = (item, kind)

    with transaction.atomic():
        rows = [
            ProviderEvent(provider_event_id=pk, email_id=int(item["email_id"]), request_event_id=item["event_id"],
                          recipient=item.get("recipient") or item.get("email", ""), status=kind,
                          provider_message_id=item.get("sg_message_id", ""),
                          reason=str(item.get("reason") or item.get("response") or "")[:1000],
                          reported_at=_reported_at(item), payload=item)
            for pk, (item, kind) in candidates.items()
        ]
        # RETURNING names exactly the rows this transaction inserted: events stored before, by an
        # earlier or a concurrent post of SendGrid's, write no second outbox event.
        inserted = _insert_new(rows)
        received_at = datetime.now(timezone.utc).isoformat()
        statuses = [
            EmailDeliveryStatus(
                event_id=new_event_id(), correlation_id=correlation_id, occurred_at=received_at,
                email_id=row.email_id, request_event_id=str(row.request_event_id), recipient=row.recipient,
                status=row.status, provider="sendgrid", provider_event_id=row.provider_event_id,
                provider_message_id=row.provider_message_id, reason=row.reason,
                reported_at=row.reported_at.isoformat(),
            ).to_dict()
            for row in rows if row.provider_event_id in inserted
        ]
        # One event per post (per STATUSES_PER_EVENT): one message through the relay and the
        # broker for a whole batch of statuses, not one per status.
        outbox_events_add(
            events=[
                (EmailDeliveryStatuses(event_id=new_event_id(), correlation_id=correlation_id, occurred_at=received_at,
                                       statuses=tuple(statuses[start:start + STATUSES_PER_EVENT])), correlation_id)
                for start in range(0, len(statuses), STATUSES_PER_EVENT)
            ],
            aggregatetype=EmailDeliveryStatuses.AGGREGATE,
        )
    result = WebhookResult(accepted=len(inserted), duplicates=len(candidates) - len(inserted), ignored=ignored)
    log.info("sendgrid_webhook_received", accepted=result.accepted, duplicates=result.duplicates,
             ignored=result.ignored)
    return result
