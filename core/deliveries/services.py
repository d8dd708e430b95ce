"""Re-drive: send failed and held deliveries again, for ops (the CLI, the staff API, the admin).

A held delivery (its outcome was in doubt past the grace) is first checked against the provider's
own reports: one SendGrid reported on is marked sent, with `email.sent`, and never resent. Every
other selected delivery goes back to `retry` with a fresh schedule, and its request's outbox row
is armed to go out now: the sender claims it as it claims any retry. Recorded (who, when, why,
how many) as a `Redrive`; idempotent, because only failed and held deliveries are selected.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import structlog
from django.db import connection, transaction
from django.db.models import Q

from core.contracts import EmailRequested, EmailSent
from core.deliveries.models import Delivery, Redrive
from core.errors import ApplicationError
from core.outbox.models import DeadLetter, OutboxEvent
from core.outbox.services import new_event_id, notify_relay, outbox_events_add
from core.outbox.sql import outbox_row

log = structlog.get_logger(__name__)

REDRIVABLE = ("failed", "held")


@dataclass(frozen=True)
class RedriveSelection:
    """Failed or held deliveries to send again. Empty fields select everything of `states`."""

    email_ids: tuple[int, ...] = ()
    event_ids: tuple[str, ...] = ()
    states: tuple[str, ...] = REDRIVABLE
    since: datetime | None = None  # last changed at or after
    until: datetime | None = None  # last changed at or before

    def is_empty(self) -> bool:
        return not (self.email_ids or self.event_ids or self.since or self.until)

    def describe(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        for key in ("since", "until"):
            if key in data:
                data[key] = data[key].isoformat()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class RedriveResult:
    retried: int  # set to go again
    settled: int  # held, and the provider had reported on them: sent
    unavailable: int  # their request is gone (purged, no dead-letter copy): left as they are
    dry_run: bool
    redrive: Redrive | None
    sample: list[Delivery]


def deliveries_select(selection: RedriveSelection):
    if bad := set(selection.states) - set(REDRIVABLE):
        raise ApplicationError(
            "Only failed and held deliveries can be re-driven.",
            errors={"states": [f"Not re-drivable: {', '.join(sorted(bad))}."]},
        )
    rows = Delivery.objects.filter(state__in=selection.states)
    if selection.email_ids:
        rows = rows.filter(email_id__in=selection.email_ids)
    if selection.event_ids:
        rows = rows.filter(event_id__in=selection.event_ids)
    if selection.since:
        rows = rows.filter(updated_at__gte=selection.since)
    if selection.until:
        rows = rows.filter(updated_at__lte=selection.until)
    return rows.order_by("email_id", "recipient")


def _request_available(event_ids: set[str]) -> set[str]:
    """The requests whose outbox row is still there, or that a dead letter kept a copy of (the
    row is written again from it)."""
    present = {str(i) for i in OutboxEvent.objects.filter(id__in=event_ids).values_list("id", flat=True)}
    copies = DeadLetter.objects.filter(message_id__in=event_ids - present, type="email.requested")
    for copy in copies:
        try:
            request = EmailRequested.from_dict(json.loads(copy.body))
        except ValueError:
            continue
        row = outbox_row(request, aggregatetype=EmailRequested.AGGREGATE, aggregateid=str(request.email_id))
        OutboxEvent.objects.get_or_create(id=row.pop("id"), defaults=row | {"published_at": copy.received_at})
        present.add(request.event_id)
    return present


def deliveries_redrive(
    *,
    selection: RedriveSelection,
    actor: str,
    via: str,
    reason: str = "",
    dry_run: bool = False,
    progress: Callable[[int], object] | None = None,
) -> RedriveResult:
    """Send the selected failed and held deliveries again (see the module). `dry_run` only
    counts. Raises ApplicationError for an empty selection or a state that cannot be re-driven."""
    if selection.is_empty():
        raise ApplicationError(
            "Name what to re-drive: email ids, event ids or a time range.",
            errors={"selection": ["At least one of email_ids, event_ids, since, until."]},
        )
    rows = deliveries_select(selection)
    sample = list(rows[:20])
    if dry_run:
        count = rows.count()
        settled = rows.filter(state="held", provider_seen_at__isnull=False).count()
        return RedriveResult(
            retried=count - settled, settled=settled, unavailable=0, dry_run=True, redrive=None, sample=sample
        )

    with transaction.atomic():
        selected = list(rows.select_for_update())
        available = _request_available({str(d.event_id) for d in selected})
        redrive = Redrive.objects.create(actor=actor, via=via, filters=selection.describe(), reason=reason)
        seen = [d for d in selected if d.state == "held" and d.provider_seen_at and str(d.event_id) in available]
        again = [d for d in selected if d not in seen and str(d.event_id) in available]
        unavailable = len(selected) - len(seen) - len(again)

        if seen:
            Delivery.objects.filter(pk__in=[d.pk for d in seen]).update(state="sent", last_redrive=redrive)
            by_request = defaultdict(list)
            for delivery in seen:
                by_request[str(delivery.event_id)].append(delivery)
            outbox_events_add(
                events=[
                    (
                        EmailSent(
                            event_id=new_event_id(),
                            correlation_id=f"redrive-{redrive.pk}",
                            occurred_at=redrive.created_at.isoformat(),
                            email_id=found[0].email_id,
                            request_event_id=event_id,
                            recipients=tuple(d.recipient for d in found),
                            provider="sendgrid",
                            provider_message_id=found[0].provider_message_id,
                            attempt=max(d.attempts for d in found),
                        ),
                        str(found[0].email_id),
                    )
                    for event_id, found in by_request.items()
                ],
                aggregatetype=EmailRequested.AGGREGATE,
            )
        for start in range(0, len(again), 1000):
            chunk = again[start : start + 1000]
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    UPDATE sender_delivery
                       SET state = 'retry', attempts = 0, next_attempt_at = now(), lease_until = NULL,
                           claim_token = NULL, updated_at = now(), last_redrive_id = %s,
                           last_error = left('re-driven: ' || last_error, 1000)
                     WHERE id = ANY(%s)
                    """,
                    [redrive.pk, [d.pk for d in chunk]],
                )
            if progress:
                progress(len(chunk))
        armed = {str(d.event_id) for d in again}
        OutboxEvent.objects.filter(id__in=armed).filter(
            Q(published_at__isnull=False) | Q(failed_at__isnull=False) | Q(not_before__gt=redrive.created_at)
        ).update(published_at=None, failed_at=None, not_before=redrive.created_at, last_error=f"re-drive #{redrive.pk}")
        redrive.retried, redrive.settled = len(again), len(seen)
        redrive.save(update_fields=["retried", "settled"])
        notify_relay()
    log.info(
        "deliveries_redriven",
        redrive_id=redrive.pk,
        retried=len(again),
        settled=len(seen),
        unavailable=unavailable,
        actor=actor,
        via=via,
    )
    return RedriveResult(
        retried=len(again), settled=len(seen), unavailable=unavailable, dry_run=False, redrive=redrive, sample=sample
    )


# Retention -------------------------------------------------------------------------------------

# Finished deliveries past the retention, and only once nothing can bring their request back: its
# outbox row is gone (the purge takes it only when every recipient is finished, after
# OUTBOX_RETENTION_DAYS) and no dead letter holds a copy ops could re-drive. A replay of the
# request would otherwise find no record of what was sent, and send it again.
_PRUNABLE_DELIVERIES = """
    SELECT d.id FROM sender_delivery d
     WHERE d.state IN ('sent', 'failed', 'cancelled') AND d.updated_at < now() - %(days)s * interval '1 day'
       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = d.event_id)
       AND NOT EXISTS (SELECT 1 FROM outbox_dead_letter l
                        WHERE l.message_id = d.event_id::text AND l.resolution IN ('parked', 'failed'))
"""


def deliveries_prune(
    *, older_than_days: int | None = None, dry_run: bool = False, progress: Callable[[int], object] | None = None
) -> int:
    """Delete finished deliveries older than DELIVERY_RETENTION_DAYS that nothing can send again
    (scheduled daily). Returns how many."""
    from django.conf import settings

    from core.retention import prune

    days = settings.DELIVERY_RETENTION_DAYS if older_than_days is None else older_than_days
    return prune(
        name="deliveries",
        table="sender_delivery",
        key="id",
        select_sql=_PRUNABLE_DELIVERIES,
        params={"days": days},
        dry_run=dry_run,
        progress=progress,
    )
