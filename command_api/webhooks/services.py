"""SendGrid's Event Webhook: verify, map to our events, write them to the outbox."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import OperationalError, connection, transaction
from prometheus_client import Counter
from rest_framework import status
from sendgrid.helpers.eventwebhook import EventWebhook

from command_api.emails.models import SentEmail
from core.contracts import EmailDeliveryStatus, EmailDeliveryStatuses
from core.deliveries.store import note_provider_reports
from core.errors import ApplicationError
from core.outbox.services import new_event_id, outbox_events_add
from core.suppressions.services import SuppressionItem, suppressions_add_many
from core.text import OutOfRange, array_items, first_problem, parse_id, suspect_json, text_problem, uuid_text

log = structlog.get_logger(__name__)

SIGNATURE_FAILURES = Counter(
    "webhook_signature_failures_total",
    "Event Webhook posts refused: signature or timestamp missing, stale or wrong",
    ["reason"],
)
DELIVERIES_NOTED = Counter(
    "webhook_deliveries_noted_total",
    "Sender deliveries that learnt from an Event Webhook post that the provider has the mail",
)

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


# SendGrid's events that put the recipient on the email owner's suppression list, with the reason.
# Only hard bounces: SendGrid's `bounce` of type `bounce`, not `blocked` (the receiving server
# refused this message, say for its content or our IP's reputation, not the address). A group
# unsubscribe counts as an unsubscribe: the account is the finest grain the list has.
SUPPRESSION_REASON_OF = {"spamreport": "spam_report", "unsubscribe": "unsubscribe", "group_unsubscribe": "unsubscribe"}


def suppression_reason(item: dict) -> str | None:
    """The suppression reason of a SendGrid event, or None when it suppresses nothing."""
    event = item.get("event")
    if event == "bounce":
        return "bounce" if item.get("type", "bounce") == "bounce" else None
    return SUPPRESSION_REASON_OF.get(event) if isinstance(event, str) else None


@dataclass(frozen=True, slots=True)
class Report:
    """One event of ours from a post, as `webhook_provider_event` stores it. Its model,
    ProviderEvent, is not built on this path, which never saves through the ORM."""

    provider_event_id: str
    email_id: int
    request_event_id: str
    recipient: str
    status: str
    provider_message_id: str
    reason: str
    reported_at: str  # ISO 8601
    payload: dict


def _suppressions_add(rows: list[Report]) -> int:
    """Put the recipients of these new events that suppress (hard bounces, spam reports,
    unsubscribes) on their email owner's list, in the caller's transaction. Events of emails we
    do not know (a forged custom_arg) add nothing."""
    wanted = [(row, reason) for row in rows if (reason := suppression_reason(row.payload))]
    if not wanted:
        return 0
    owners = dict(SentEmail.objects.filter(pk__in={row.email_id for row, _ in wanted}).values_list("pk", "sender_id"))
    return suppressions_add_many(
        items=[
            SuppressionItem(
                owner_id=owners[row.email_id],
                address=row.recipient,
                reason=reason,
                detail=row.reason,
                email_id=row.email_id,
                at=row.reported_at,
            )
            for row, reason in wanted
            if row.email_id in owners
        ],
        source="webhook",
    )


# A post whose transaction deadlocked (with a sender writing the deliveries it notes) runs again:
# at most this many runs in all.
DEADLOCK_DETECTED = "40P01"
DEADLOCK_ATTEMPTS = 3

# SendGrid posts up to a few thousand events at once; messages stay well under 1 MB.
STATUSES_PER_EVENT = 500


@dataclass(frozen=True)
class WebhookResult:
    accepted: int
    duplicates: int
    ignored: int  # not about an email of ours, or a kind of event we do not track
    rejected: int  # malformed: counted, logged and dropped; the rest of the post is kept


def _forbidden(message: str, *, reason: str) -> ApplicationError:
    SIGNATURE_FAILURES.labels(reason=reason).inc()
    return ApplicationError(message, status_code=status.HTTP_403_FORBIDDEN)


def verify_signature(*, body: str, signature: str | None, timestamp: str | None) -> None:
    """Raises a 403 ApplicationError unless SendGrid signed `body` recently."""
    key = settings.SENDGRID_WEBHOOK_PUBLIC_KEY
    if not key:
        raise ApplicationError(
            "The webhook verification key is not configured.", status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )
    if not signature or not timestamp:
        raise _forbidden("Missing webhook signature.", reason="missing")
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        raise _forbidden("Bad webhook timestamp.", reason="bad_timestamp") from None
    if age > settings.SENDGRID_WEBHOOK_MAX_AGE_SECONDS:
        raise _forbidden("Stale webhook timestamp.", reason="stale")
    try:
        valid = EventWebhook(key).verify_signature(body, signature, timestamp)
    except (ValueError, TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise _forbidden("Bad webhook signature.", reason="bad_signature")


_LATEST_TIMESTAMP = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


class _Malformed(Exception):
    pass


def _line(item: dict, key: str, *, max_length: int, required: bool = True) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_length or text_problem(value, single_line=True):
        raise _Malformed(f"{key} is not a line of 1 to {max_length} characters")
    return value


def _email_id(item: dict) -> int:
    if (value := parse_id(item.get("email_id"))) is None:
        raise _Malformed("email_id is not a plain integer in range")
    return value


def _request_event_id(item: dict) -> str:
    if (value := uuid_text(item.get("event_id"))) is None:
        raise _Malformed("event_id is not a UUID")
    return value


def _reported_at(item: dict) -> str:
    """When the provider saw it, in ISO 8601 (now, when the item does not say)."""
    value = item.get("timestamp")
    if value is None:
        return datetime.now(UTC).isoformat()
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _LATEST_TIMESTAMP:
        raise _Malformed("timestamp is not a Unix time in range")
    return datetime.fromtimestamp(value, tz=UTC).isoformat()


def _provider_event(item: dict, kind: str, *, suspect: bool) -> Report:
    """The record of one event of ours, or _Malformed naming what is wrong with it. `suspect`:
    whether the post's body may hold a forbidden character (else no string of it is searched)."""
    if found := first_problem(item, max_depth=_ITEM_MAX_DEPTH, suspect=suspect):
        raise _Malformed(f"{found[0]}: {found[1]}")
    reason = item.get("reason") or item.get("response") or ""
    return Report(
        provider_event_id=_line(item, "sg_event_id", max_length=100),
        email_id=_email_id(item),
        request_event_id=_request_event_id(item),
        recipient=_line(item, "recipient" if "recipient" in item else "email", max_length=254),
        status=kind,
        provider_message_id=_line(item, "sg_message_id", max_length=200, required=False),
        reason=str(reason)[:1000],
        reported_at=_reported_at(item),
        payload=item,
    )


_ITEM_MAX_DEPTH = 8


def _insert_new(rows: list[Report]) -> set[str]:
    if not rows:
        return set()
    now = datetime.now(UTC).isoformat()
    data = [
        {
            "provider_event_id": r.provider_event_id,
            "email_id": r.email_id,
            "request_event_id": r.request_event_id,
            "recipient": r.recipient,
            "status": r.status,
            "provider_message_id": r.provider_message_id,
            "reason": r.reason,
            "reported_at": r.reported_at,
            "received_at": now,
            "payload": r.payload,
        }
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


def _loads(text: str):
    # A number no column can hold stays in place as OutOfRange, so only its item is rejected.
    return json.loads(text, parse_int=OutOfRange.parse_int, parse_float=OutOfRange.parse_float)


class _TooDeep:
    """An item nested too deep for the JSON parser: rejected on its own."""


def _parse_items(body: str) -> list:
    """The post's items. An item too deep to parse does not cost the others: the array is then
    split at its top-level commas and each item parsed alone. Raises a 400 ApplicationError
    unless the body is a JSON list."""
    message = "Expected a JSON list of events."
    not_a_list = ApplicationError(message, errors={"body": [message]})
    try:
        items = _loads(body)
    except ValueError:
        raise not_a_list from None
    except RecursionError:
        texts = array_items(body)
        if texts is None:
            raise not_a_list from None
        items = []
        for text in texts:
            try:
                items.append(_loads(text))
            except RecursionError:
                items.append(_TooDeep())
            except ValueError:
                raise not_a_list from None
    if not isinstance(items, list):
        raise not_a_list
    return items


def sendgrid_events_receive(
    *, body: str, signature: str | None, timestamp: str | None, correlation_id: str
) -> WebhookResult:
    """Verify SendGrid's signature, then in one transaction store each new event (SendGrid's
    repeated posts are dropped by sg_event_id), note on the sender's deliveries that the provider
    has their mail, and write the new ones to the outbox as
    `email.delivery_statuses` events, one per email (of at most STATUSES_PER_EVENT statuses), the
    email's id their aggregate id. Hard bounces, spam reports and unsubscribes also put the
    recipient on the email owner's suppression list, in the same transaction. Events without our custom_args,
    or of kinds we do not track, are ignored; malformed ones (a bad id, an oversized field, a
    control character) are counted as rejected and logged, and the others are still stored.
    Raises ApplicationError: 403 (signature), 400 (not a JSON list)."""
    verify_signature(body=body, signature=signature, timestamp=timestamp)
    items = _parse_items(body)
    # One search of the body, at C speed: with no forbidden character in it, raw or escaped, no
    # item's strings need searching one by one.
    suspect = suspect_json(body)

    candidates: dict[str, Report] = {}
    ignored, rejected = 0, []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            rejected.append((index, "nested too deep to parse" if isinstance(item, _TooDeep) else "not an object"))
            continue
        kind = STATUS_OF.get(item["event"]) if isinstance(item.get("event"), str) else None
        if kind is None or ("email_id" not in item and "event_id" not in item):
            ignored += 1  # another kind of event, or mail not sent by us (no custom_args of ours)
            continue
        try:
            event = _provider_event(item, kind, suspect=suspect)
        except _Malformed as exc:
            rejected.append((index, str(exc)))
            continue
        candidates[event.provider_event_id] = event
    if rejected:
        # A bad item must not cost the good ones: SendGrid would retry the whole post, then drop it.
        log.warning(
            "sendgrid_webhook_items_rejected",
            count=len(rejected),
            first=[f"item {index}: {why}" for index, why in rejected[:5]],
        )

    rows = list(candidates.values())
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            inserted, noted = _store(rows, correlation_id)
            break
        except OperationalError as exc:
            # Noting the reports locks the delivery rows, which a sender's statement may be
            # writing: a deadlock with it costs the attempt, not the post (SendGrid would post it
            # again, whole, later: the answer after the last attempt, a 503).
            if getattr(exc.__cause__, "pgcode", None) != DEADLOCK_DETECTED:
                raise
            if attempt == DEADLOCK_ATTEMPTS:
                log.error("sendgrid_webhook_deadlocked", attempts=attempt)
                raise
            log.warning("sendgrid_webhook_deadlock_retried", attempt=attempt)
    DELIVERIES_NOTED.inc(noted)
    result = WebhookResult(
        accepted=len(inserted), duplicates=len(candidates) - len(inserted), ignored=ignored, rejected=len(rejected)
    )
    log.info(
        "sendgrid_webhook_received",
        accepted=result.accepted,
        deliveries_noted=noted,
        duplicates=result.duplicates,
        ignored=result.ignored,
        rejected=result.rejected,
    )
    return result


def _store(rows: list[Report], correlation_id: str) -> tuple[set[str], int]:
    """In one transaction: store the new events, put the recipients they suppress on the list, note
    on the sender's deliveries that the provider has the mail, and write the statuses to the
    outbox. Returns the provider event ids stored now and how many deliveries learnt of them."""
    with transaction.atomic():
        # RETURNING names exactly the rows this transaction inserted: events stored before, by an
        # earlier or a concurrent post of SendGrid's, write no second outbox event.
        inserted = _insert_new(rows)
        new = [row for row in rows if row.provider_event_id in inserted]
        # In the same transaction: the events and the suppressions they cause commit together.
        _suppressions_add(new)
        # And the sender learns the provider has these mails as they are stored: a delivery in
        # doubt is settled as sent from them, never resent (core.deliveries.store).
        with connection.cursor() as cursor:
            noted = note_provider_reports(
                cursor,
                [
                    {
                        "event_id": row.request_event_id,
                        "recipient": row.recipient,
                        "message_id": row.provider_message_id,
                        "reported_at": row.reported_at,
                    }
                    for row in new
                ],
            )
        received_at = datetime.now(UTC).isoformat()
        statuses = [
            EmailDeliveryStatus(
                event_id=new_event_id(),
                correlation_id=correlation_id,
                occurred_at=received_at,
                email_id=row.email_id,
                request_event_id=row.request_event_id,
                recipient=row.recipient,
                status=row.status,
                provider="sendgrid",
                provider_event_id=row.provider_event_id,
                provider_message_id=row.provider_message_id,
                reason=row.reason,
                reported_at=row.reported_at,
            ).to_dict()
            for row in new
        ]
        # One event per email of the post (per STATUSES_PER_EVENT of its statuses): one message
        # through the relay and the broker for all of an email's statuses, not one per status;
        # the email is its aggregate, so ops who filter the outbox by an email find them.
        by_email: dict[int, list[dict]] = {}
        for item in statuses:
            by_email.setdefault(item["email_id"], []).append(item)
        outbox_events_add(
            events=[
                (
                    EmailDeliveryStatuses(
                        event_id=new_event_id(),
                        correlation_id=correlation_id,
                        occurred_at=received_at,
                        statuses=tuple(items[start : start + STATUSES_PER_EVENT]),
                    ),
                    str(email_id),
                )
                for email_id, items in by_email.items()
                for start in range(0, len(items), STATUSES_PER_EVENT)
            ],
            aggregatetype=EmailDeliveryStatuses.AGGREGATE,
        )
        return inserted, noted


# Retention -------------------------------------------------------------------------------------

# SendGrid retries a post for up to 24 hours: its events dedupe those retries that long. They are
# also the write side's record of what the provider reported, which a rebuild of the read model
# reads: past PROVIDER_EVENT_RETENTION_DAYS a rebuilt email shows what the sender recorded (sent,
# failed), not the provider's later statuses (delivered, opened …).
_PRUNABLE_PROVIDER_EVENTS = """
    SELECT provider_event_id FROM webhook_provider_event
     WHERE received_at < now() - greatest(%(days)s, 2) * interval '1 day'
"""


def provider_events_prune(*, older_than_days: int | None = None, dry_run: bool = False, progress=None) -> int:
    """Delete provider events older than PROVIDER_EVENT_RETENTION_DAYS (never younger than two
    days: SendGrid's retries). Returns how many."""
    from core.retention import prune

    days = settings.PROVIDER_EVENT_RETENTION_DAYS if older_than_days is None else older_than_days
    return prune(
        name="provider_events",
        table="webhook_provider_event",
        key="provider_event_id",
        select_sql=_PRUNABLE_PROVIDER_EVENTS,
        params={"days": days},
        dry_run=dry_run,
        progress=progress,
    )
