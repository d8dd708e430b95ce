"""Writes of the client webhooks for their owners (the command API): endpoints and replays.

An endpoint's URL is checked when it is registered or changed (core.client_webhooks.addresses)
and again at each delivery. The secret is generated here, never chosen by the client: it is
shown when the endpoint is created and when it is rotated, and after a rotation the previous
one keeps signing alongside for CLIENT_WEBHOOKS_SECRET_OVERLAP_SECONDS.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.client_webhooks.addresses import AddressRefused, resolve_deliverable
from core.client_webhooks.events import EVENT_TYPES
from core.client_webhooks.models import WebhookEndpoint, WebhookMessage
from core.client_webhooks.signing import new_secret
from core.client_webhooks.sql import DELETE_ENDPOINT_SQL, NOTIFY_SQL, PARK_SQL, PARKED_UNTIL, UNPARK_SQL
from core.errors import field_error

log = structlog.get_logger(__name__)

MAX_ENDPOINTS_PER_USER = 20


def webhook_url_check(url: str) -> None:
    """Refuse (400 naming `url`) a URL webhooks may not be posted to."""
    try:
        resolve_deliverable(
            url,
            allow_http=settings.CLIENT_WEBHOOKS_ALLOW_HTTP,
            allow_private=settings.CLIENT_WEBHOOKS_ALLOW_PRIVATE,
        )
    except AddressRefused as exc:
        raise field_error("url", str(exc)) from None


def _event_types_check(event_types: list[str]) -> list[str]:
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        raise field_error("event_types", f"Unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}.")
    return list(dict.fromkeys(event_types))


def webhook_endpoint_create(*, owner, url: str, description: str = "", event_types: list[str]) -> WebhookEndpoint:
    """Register an endpoint (enabled) with a fresh secret. Raises ApplicationError (400) for a
    URL webhooks may not reach, an unknown event type, or an owner at MAX_ENDPOINTS_PER_USER."""
    types = _event_types_check(event_types)
    webhook_url_check(url)
    if WebhookEndpoint.objects.filter(owner=owner).count() >= MAX_ENDPOINTS_PER_USER:
        raise field_error("url", f"A user has at most {MAX_ENDPOINTS_PER_USER} webhook endpoints.")
    endpoint = WebhookEndpoint.objects.create(
        owner=owner, url=url, description=description, event_types=types, secret=new_secret()
    )
    log.info("client_webhook_endpoint_created", endpoint_id=endpoint.pk)
    return endpoint


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, data: dict) -> WebhookEndpoint:
    """Change what `data` names (url, description, event_types, enabled). Enabling an endpoint
    clears why it was disabled and its failing streak: its pending messages are delivered again.

    The row is read again under a lock and only the changed columns are written, so a change the
    notifier made meanwhile (it disables an endpoint that keeps failing) is never written over."""
    event_types = _event_types_check(data["event_types"]) if "event_types" in data else None
    if "url" in data:
        webhook_url_check(data["url"])
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        changed: list[str] = []
        if event_types is not None:
            endpoint.event_types, changed = event_types, [*changed, "event_types"]
        for name in ("url", "description"):
            if name in data:
                setattr(endpoint, name, data[name])
                changed.append(name)
        if "enabled" in data and data["enabled"] != endpoint.enabled:
            endpoint.enabled = data["enabled"]
            changed += ["enabled", "disabled_reason", "disabled_at", "failing_since"]
            with connection.cursor() as cursor:
                if endpoint.enabled:
                    endpoint.disabled_reason, endpoint.disabled_at, endpoint.failing_since = "", None, None
                    cursor.execute(UNPARK_SQL, [endpoint.pk])
                    _wake_notifier(cursor)
                else:
                    endpoint.disabled_reason, endpoint.disabled_at = "Disabled by its owner.", timezone.now()
                    cursor.execute(PARK_SQL, [[endpoint.pk]])
        if changed:
            endpoint.save(update_fields=[*changed, "modified_at"])
    return endpoint


def _wake_notifier(cursor) -> None:
    if settings.CLIENT_WEBHOOKS_NOTIFY:
        cursor.execute(NOTIFY_SQL, [settings.CLIENT_WEBHOOKS_NOTIFY_CHANNEL])


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its messages and their log: one statement, the database cascading
    (messages the projector queues meanwhile wait for it, and go too)."""
    with connection.cursor() as cursor:
        cursor.execute(DELETE_ENDPOINT_SQL, [endpoint.pk])


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """A new secret; the old one keeps signing deliveries for CLIENT_WEBHOOKS_SECRET_OVERLAP_SECONDS."""
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = timezone.now() + timedelta(
        seconds=settings.CLIENT_WEBHOOKS_SECRET_OVERLAP_SECONDS
    )
    endpoint.secret = new_secret()
    endpoint.save(update_fields=["previous_secret", "previous_secret_expires_at", "secret", "modified_at"])
    return endpoint


def webhook_messages_replay(
    *, endpoint: WebhookEndpoint, message_ids: list[str] | None = None, since: datetime | None = None, state=None
) -> int:
    """Deliver again, from the start of the retry schedule and with the same webhook-id, the
    endpoint's messages named by `message_ids`, or created since `since` (in `state` if given:
    e.g. only the failed ones). Returns how many were queued; wakes the notifier."""
    messages = WebhookMessage.objects.filter(endpoint=endpoint)
    if message_ids is not None:
        messages = messages.filter(pk__in=message_ids)
    if since is not None:
        messages = messages.filter(created_at__gte=since)
    if state:
        messages = messages.filter(state=state)
    # A disabled endpoint's replayed messages wait with its others until it is enabled.
    due = timezone.now() if endpoint.enabled else datetime.fromisoformat(PARKED_UNTIL)
    with transaction.atomic():
        count = messages.update(state=WebhookMessage.PENDING, attempts=0, next_attempt_at=due, finished_at=None)
        if count:
            with connection.cursor() as cursor:
                _wake_notifier(cursor)
    log.info("client_webhook_messages_replayed", endpoint_id=endpoint.pk, messages=count)
    return count
