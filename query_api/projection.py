"""How events change a sent-email log row: pure functions, no database.

Statuses only move forward (django-post_office's status priority): an event that arrives late,
twice or out of order can never lower a recipient's status, so applying the same events in any
order gives the same row. A `delivered` that overtakes its `sent` still ends as delivered.
Between the sender's own two outcomes, `sent` and `failed`, the later one stands (a re-drive sends
a failed recipient again), which is as independent of the order of arrival.

`suppressed` (the recipient was on the owner's suppression list when the sender claimed it: the
provider never had it) is terminal for the recipient and counts as a failure in the overall
status: an email with some recipients suppressed and the others sent is `partially_failed`, one
with all of them suppressed is `suppressed`, one with the rest failed is `failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.contracts import (
    EmailCancelled,
    EmailDeliveryStatus,
    EmailFailed,
    EmailRequested,
    EmailScheduled,
    EmailSent,
    EmailSuppressed,
    Event,
)
from core.scheduling import handoff_at

RANK = {
    "scheduled": -10,  # waiting for its hand-off; its request, published then, makes it queued
    "queued": 0,
    "processed": 10,
    "deferred": 20,
    "sent": 30,
    "failed": 40,  # our failure; a later delivered (an unknown outcome resolved) overrides it
    "suppressed": 45,  # never sent: nothing of the provider's can follow it
    "delivered": 50,
    "bounced": 60,
    "dropped": 60,
    "opened": 70,
    "clicked": 80,
    "spam_reported": 90,
    "unsubscribed": 90,
    "cancelled": 100,  # terminal: taken only before any sender claimed the email, so nothing follows
}
PENDING = {"queued", "processed", "deferred"}
FAILED = {"failed", "bounced", "dropped", "suppressed"}
DELIVERED = {"delivered", "opened", "clicked", "spam_reported", "unsubscribed"}
OVERALL = (
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "partially_failed",
    "failed",
    "suppressed",
    "cancelled",
)


def overall_status(statuses: list[str]) -> str:
    if statuses and all(s == "scheduled" for s in statuses):
        return "scheduled"
    if statuses and all(s == "cancelled" for s in statuses):
        return "cancelled"
    if not statuses or all(s in ("queued", "scheduled") for s in statuses):
        return "queued"
    if any(s in PENDING for s in statuses):
        return "sending"
    if all(s == "suppressed" for s in statuses):
        return "suppressed"
    if all(s in FAILED for s in statuses):
        return "failed"
    if any(s in FAILED for s in statuses):
        return "partially_failed"
    if all(s in DELIVERED for s in statuses):
        return "delivered"
    return "sent"


@dataclass
class Row:
    id: int
    owner_id: int | None = None
    from_email: str = ""
    template_id: int | None = None
    template_name: str = ""
    subject: str = ""
    created: str | None = None
    recipients: list[str] = field(default_factory=list)
    recipient_status: dict[str, dict] = field(default_factory=dict)
    status: str = "queued"
    last_event_at: str | None = None
    # One more for every status change applied to the email: a later change has a higher number,
    # which clients' webhooks carry so that a stale delivery can be told apart.
    status_seq: int = 0
    send_at: str | None = None  # a scheduled send's time


@dataclass(frozen=True)
class Change:
    event_id: str
    type: str
    recipient: str
    status: str
    at: str
    detail: str = ""
    sequence: int = 0  # the row's status_seq once this change was applied


# The sender's own outcomes: between two of them the later one stands, whatever their ranks, so
# an email re-driven after it failed shows as sent (and a failure recorded after a timeout that
# the provider's events later settled as sent is overridden by that sent).
OUTCOMES = {"sent", "failed"}


def queued_at(event: EmailRequested) -> str:
    """When the request queued its email: its publication, which for a scheduled send is its
    hand-off, SCHEDULED_HANDOFF_SECONDS before `send_at` (never before the request itself)."""
    if not event.send_at:
        return event.occurred_at
    return max(handoff_at(datetime.fromisoformat(event.send_at)), datetime.fromisoformat(event.occurred_at)).isoformat()


def _advance(row: Row, recipient: str, status: str, at: str, **extra) -> bool:
    """Move `recipient` of `row` to `status` if that is forward (or the later of the sender's
    two outcomes); returns whether it moved. Never raises: a step back is simply not taken."""
    current = row.recipient_status.get(recipient)
    if current is not None:
        if current["status"] in OUTCOMES and status in OUTCOMES:
            if (current.get("at") or "") >= at:
                return False
        elif RANK[current["status"]] >= RANK[status]:
            return False
    row.recipient_status[recipient] = {"status": status, "at": at, **{k: v for k, v in extra.items() if v}}
    return True


def apply(row: Row, event: Event) -> list[Change]:
    """Apply `event` to `row` in place; returns the recipient changes it made (for the history)."""
    changes: list[Change] = []

    def record(recipient, status, at, detail=""):
        row.status_seq += 1
        changes.append(Change(event.event_id, event.TYPE, recipient, status, at, detail, row.status_seq))

    if isinstance(event, EmailRequested | EmailScheduled):
        row.owner_id = event.owner_id
        row.from_email = event.from_email
        row.template_id = event.template_id
        row.template_name = event.template_name
        row.subject = event.subject
        row.recipients = [r.lower() for r in event.recipients]
        row.send_at = event.send_at or row.send_at
        row.created = event.requested_at if isinstance(event, EmailScheduled) else event.occurred_at
        if isinstance(event, EmailScheduled):
            status, at, detail = (
                "scheduled",
                event.occurred_at,
                f"{len(row.recipients)} recipients, for {event.send_at}",
            )
        else:
            # A scheduled request is published for its hand-off: it queues the email then.
            status, at, detail = "queued", queued_at(event), f"{len(row.recipients)} recipients"
        # The request moves a scheduled recipient on; the schedule never moves one back. Only a
        # move is a change: a request published after its email was cancelled (or after the
        # sender's outcome overtook it) records nothing, so no later sequence number says queued.
        moved = [_advance(row, recipient, status, at) for recipient in row.recipients]
        if any(moved):
            record("", status, at, detail)
    elif isinstance(event, EmailCancelled):
        for recipient in (r.lower() for r in event.recipients):
            if _advance(row, recipient, "cancelled", event.occurred_at):
                record(recipient, "cancelled", event.occurred_at, "cancelled by its owner")
    elif isinstance(event, EmailSent):
        for recipient in (r.lower() for r in event.recipients):
            if _advance(row, recipient, "sent", event.occurred_at, provider_message_id=event.provider_message_id):
                record(recipient, "sent", event.occurred_at, event.provider_message_id)
    elif isinstance(event, EmailFailed):
        if event.owner_id is not None and row.owner_id is None:
            # The request never reached the broker (refused): this event says what it was.
            row.owner_id, row.from_email, row.subject = event.owner_id, event.from_email, event.subject
            row.template_id, row.template_name = event.template_id, event.template_name
            row.created = event.requested_at or event.occurred_at
            row.recipients = sorted({*row.recipients, *(r.lower() for r in event.recipients)})
            record("", "queued", row.created, f"{len(row.recipients)} recipients")
        for recipient in (r.lower() for r in event.recipients):
            if _advance(row, recipient, "failed", event.occurred_at, reason=event.reason):
                record(recipient, "failed", event.occurred_at, event.reason)
    elif isinstance(event, EmailSuppressed):
        for recipient, reason in event.reason_of().items():
            if _advance(row, recipient.lower(), "suppressed", event.occurred_at, reason=reason):
                record(recipient.lower(), "suppressed", event.occurred_at, reason)
    elif isinstance(event, EmailDeliveryStatus):
        recipient = event.recipient.lower()
        if event.status in RANK and _advance(
            row,
            recipient,
            event.status,
            event.reported_at,
            provider_message_id=event.provider_message_id,
            reason=event.reason,
        ):
            record(recipient, event.status, event.reported_at, event.reason)
    else:
        return changes
    known = row.recipients or list(row.recipient_status)
    row.status = overall_status([row.recipient_status.get(r, {"status": "queued"})["status"] for r in known])
    if row.last_event_at is None or event.occurred_at > row.last_event_at:
        row.last_event_at = event.occurred_at
    return changes
