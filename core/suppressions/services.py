"""Writes of the suppression list: add (the Event Webhook's hard bounces, spam reports and
unsubscribes; the API; the admin) and remove.

The list is read by the sender inside its claim (core.deliveries.store): a suppression committed
before the claim of an email's recipient stops that recipient, one committed after it is too
late for that send. Nothing here needs to tell the sender anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import structlog
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from rest_framework import status

from core.errors import ApplicationError, field_error
from core.suppressions.models import Suppression
from core.suppressions.sql import REASONS, UPSERT_SQL
from core.text import text_problem

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SuppressionItem:
    """One suppression to add from a provider's event: the owner is the email's sender."""

    owner_id: int
    address: str
    reason: str
    detail: str = ""
    email_id: int | None = None
    at: str | None = None  # ISO 8601: when the provider reported it


def suppressions_add_many(*, items: Sequence[SuppressionItem], source: str) -> int:
    """Add `items` in one statement; an address already on its owner's list keeps its first
    reason and time. Idempotent. Runs in the caller's transaction (the webhook's, which stores
    the events that caused them). Returns how many were new."""
    if not items:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(UPSERT_SQL, [source, json.dumps([asdict(item) for item in items])])
        added = len(cursor.fetchall())
    if added:
        log.info("suppressions_added", count=added, source=source)
    return added


def normalize_address(address: str, *, field: str = "address") -> str:
    """The address as the list keeps it (trimmed, lower-cased), or a 400 naming `field`."""
    value = address.strip() if isinstance(address, str) else ""
    problem = text_problem(value, single_line=True) if value else "This field may not be blank."
    if problem is None:
        if len(value) > 254:
            problem = "Ensure this field has no more than 254 characters."
        else:
            try:
                validate_email(value)
            except DjangoValidationError:
                problem = "Enter a valid email address."
    if problem:
        raise field_error(field, problem)
    return value.lower()


def suppression_add(
    *, owner_id: int, address: str, reason: str = "manual", detail: str = "", source: str = "api"
) -> tuple[Suppression, bool]:
    """Put `address` on the list of `owner_id`. Returns (the entry, whether it is new): an address
    already there keeps its first reason, detail and time. Raises ApplicationError (400) naming
    the field for a bad address or an unknown reason."""
    address = normalize_address(address)
    if reason not in REASONS:
        raise field_error("reason", f"{reason!r} is not one of {', '.join(REASONS)}.")
    try:
        with transaction.atomic():
            entry, created = Suppression.objects.get_or_create(
                owner_id=owner_id,
                address=address,
                defaults={"reason": reason, "detail": detail[:1000], "source": source},
            )
    except IntegrityError:  # added by a concurrent writer between the look-up and the insert
        entry, created = Suppression.objects.get(owner_id=owner_id, address=address), False
    if created:
        log.info("suppression_added", owner_id=owner_id, suppression_id=entry.pk, reason=reason, source=source)
    return entry, created


def suppression_remove(*, owner_id: int, address: str, actor: str) -> Suppression:
    """Take `address` off the list of `owner_id`: later sends to it go out again (an email already
    claimed with it suppressed stays so). Raises ApplicationError: 400 for a bad address, 404 when
    it is not on the list."""
    address = normalize_address(address)
    entry = Suppression.objects.filter(owner_id=owner_id, address=address).first()
    if entry is None:
        raise ApplicationError("That address is not on the suppression list.", status_code=status.HTTP_404_NOT_FOUND)
    suppression_id = entry.pk
    entry.delete()
    log.info("suppression_removed", owner_id=owner_id, suppression_id=suppression_id, reason=entry.reason, actor=actor)
    return entry
