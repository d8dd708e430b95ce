"""Reads of the client webhooks for their owners (the command API): each sees only their own."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Prefetch, QuerySet

from core.client_webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from core.errors import ApplicationError


def not_found(what: str) -> ApplicationError:
    return ApplicationError(f"No such {what}.", status_code=404)


def webhook_endpoint_list(*, owner) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(owner=owner).order_by("-created_at", "-id")


def webhook_endpoint_get(*, owner, endpoint_id: int) -> WebhookEndpoint:
    """The owner's endpoint; another user's is as absent as one that does not exist (404)."""
    endpoint = WebhookEndpoint.objects.filter(owner=owner, pk=endpoint_id).first()
    if endpoint is None:
        raise not_found("webhook endpoint")
    return endpoint


def webhook_message_list(
    *,
    endpoint: WebhookEndpoint,
    state: str | None = None,
    email_id: int | None = None,
    since: datetime | None = None,
) -> QuerySet[WebhookMessage]:
    """The endpoint's delivery log, newest first, each message with its attempts (oldest first)."""
    messages = WebhookMessage.objects.filter(endpoint=endpoint)
    if state:
        messages = messages.filter(state=state)
    if email_id is not None:
        messages = messages.filter(email_id=email_id)
    if since is not None:
        messages = messages.filter(created_at__gte=since)
    return messages.order_by("-created_at", "-sequence").prefetch_related(
        Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("attempted_at", "id"))
    )


def webhook_message_get(*, endpoint: WebhookEndpoint, message_id: str) -> WebhookMessage:
    message = WebhookMessage.objects.filter(endpoint=endpoint, pk=message_id).first()
    if message is None:
        raise not_found("webhook message")
    return message
