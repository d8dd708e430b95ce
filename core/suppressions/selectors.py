"""Reads of the suppression list, for the API and the admin."""

from __future__ import annotations

from django.db.models import QuerySet

from core.suppressions.models import Suppression


def suppression_list(*, owner_id: int | None, address: str | None = None, reason: str | None = None) -> QuerySet:
    """The entries of `owner_id` (None: every account's, for staff), newest first, optionally
    only `address` (already normalized) or `reason`."""
    rows = Suppression.objects.all()
    if owner_id is not None:
        rows = rows.filter(owner_id=owner_id)
    if address:
        rows = rows.filter(address=address)
    if reason:
        rows = rows.filter(reason=reason)
    return rows.order_by("-created_at", "-id")
