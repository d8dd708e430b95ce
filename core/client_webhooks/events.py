"""Which recipient statuses reach clients' webhooks, under which event type: one table.

A status of the read model (query_api.projection.RANK) that is not here sends nothing (the
provider's processed, deferred, opened, clicked …). A status added to the read model becomes a
webhook event by one line here.
"""

from __future__ import annotations

EVENT_TYPE_BY_STATUS: dict[str, str] = {
    "queued": "email.queued",
    "scheduled": "email.scheduled",
    "sent": "email.sent",
    "delivered": "email.delivered",
    "bounced": "email.bounced",
    "dropped": "email.failed",  # the provider refused to send it: a failure, its status says which
    "failed": "email.failed",
    "suppressed": "email.suppressed",
    "cancelled": "email.cancelled",
}

# What an endpoint may subscribe to, in the order a client reads them.
EVENT_TYPES: tuple[str, ...] = tuple(dict.fromkeys(EVENT_TYPE_BY_STATUS.values()))


def event_type_for(status: str) -> str | None:
    """The webhook event type of a recipient status, or None when clients are not told of it."""
    return EVENT_TYPE_BY_STATUS.get(status)
