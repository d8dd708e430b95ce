"""Reads of the sent-email log. Only the read tables: never the write side's."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from query_api.models import SentEmailLog, SentEmailLogEvent


def sent_email_log_list(
    *,
    owner_id: int,
    recipients: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    statuses: list[str] | None = None,
    template_ids: list[int] | None = None,
) -> QuerySet[SentEmailLog]:
    """The owner's emails, newest first. `recipients`: any of them (case-insensitive);
    `start` inclusive, `end` exclusive."""
    rows = SentEmailLog.objects.filter(owner_id=owner_id)
    if recipients:
        rows = rows.filter(recipients__overlap=[r.lower() for r in recipients])
    if start is not None:
        rows = rows.filter(created__gte=start)
    if end is not None:
        rows = rows.filter(created__lt=end)
    if statuses:
        rows = rows.filter(status__in=statuses)
    if template_ids:
        rows = rows.filter(template_id__in=template_ids)
    return rows.order_by("-created", "-id")


def sent_email_log_get(*, owner_id: int, email_id: int) -> tuple[SentEmailLog, list[SentEmailLogEvent]]:
    """One of the owner's emails with its status history; Http404 for anyone else's."""
    row = get_object_or_404(SentEmailLog, pk=email_id, owner_id=owner_id)
    history = list(SentEmailLogEvent.objects.filter(email_id=email_id).order_by("id"))  # as applied
    return row, history
