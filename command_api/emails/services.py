"""Writes of the emails app: templates, and sending an email with its outbox event."""

import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import status

from command_api.emails import rendering
from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from command_api.emails.writes import EmailWrite, sent_email_write, template_cached, template_fresh
from core.accounts.models import User
from core.deliveries.store import cancel_request
from core.errors import ApplicationError, field_error
from core.outbox import sql as outbox_sql
from core.outbox.services import new_event_id
from core.text import text_problem

log = structlog.get_logger(__name__)

SEND_ACCEPTED_MESSAGE = "Email sent. It might take a while to deliver."
_LINE_BREAK = re.compile(r"[\r\n\u0085\u2028\u2029]")


# Templates ------------------------------------------------------------------------------------


def _check_template_fields(*, subject: str | None, body: str | None) -> None:
    errors: dict[str, list[str]] = {}
    if subject is not None:
        if _LINE_BREAK.search(subject):
            errors["subject"] = ["The subject may not contain a line break."]
        elif error := rendering.check_compiles(subject, html=False):
            errors["subject"] = [f"The template does not compile: {error}"]
    if body is not None and (error := rendering.check_compiles(body, html=True)):
        errors["body"] = [f"The template does not compile: {error}"]
    if errors:
        raise ApplicationError(f"Invalid template: {', '.join(errors)}.", errors=errors)


def _check_name_free(name: str, *, instance: EmailTemplate | None = None) -> None:
    taken = EmailTemplate.objects.filter(name=name)
    if instance is not None:
        taken = taken.exclude(pk=instance.pk)
    if taken.exists():
        raise field_error("name", f"A template named {name!r} already exists.")


def email_template_create(*, name: str, subject: str, body: str) -> EmailTemplate:
    """Create a template; raises ApplicationError for a taken name or a template that does not
    compile (the message carries the compiler's error)."""
    _check_template_fields(subject=subject, body=body)
    _check_name_free(name)
    try:
        with transaction.atomic():
            template = EmailTemplate.objects.create(name=name, subject=subject, body=body)
    except IntegrityError:
        raise field_error("name", f"A template named {name!r} already exists.") from None
    log.info("email_template_created", template_id=template.pk)
    return template


def email_template_update(*, template: EmailTemplate, data: dict) -> EmailTemplate:
    """Change the given fields (`name`, `subject`, `body`) of `template`, checked as on create."""
    _check_template_fields(subject=data.get("subject"), body=data.get("body"))
    if "name" in data:
        _check_name_free(data["name"], instance=template)
    for field, value in data.items():
        setattr(template, field, value)
    try:
        with transaction.atomic():
            template.save()
    except IntegrityError:
        raise field_error("name", f"A template named {data.get('name')!r} already exists.") from None
    log.info("email_template_updated", template_id=template.pk, fields=sorted(data))
    return template


def email_template_delete(*, template: EmailTemplate) -> None:
    """Delete the template; emails already sent with it keep their rendered copy and its name."""
    template_id = template.pk
    template.delete()
    log.info("email_template_deleted", template_id=template_id)


# Sending --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendAccepted:
    """What `sent_email_create` accepted: the email, and whether this request wrote it."""

    email: SentEmail
    created: bool  # False when an Idempotency-Key matched an earlier request


def _max_length(model: type[models.Model], name: str) -> int:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field) and field.max_length is not None, f"{model.__name__}.{name}"
    return field.max_length


ADDRESS_MAX_LENGTH = _max_length(SentEmailRecipient, "address")


def clean_recipients(raw: list[str]) -> list[str]:
    """Strip, validate and de-duplicate (case-insensitively, first spelling wins) the addresses.
    Raises ApplicationError naming `recipients` and every bad value."""
    invalid: list[str] = []
    seen: set[str] = set()
    cleaned: list[str] = []
    for item in raw:
        address = item.strip() if isinstance(item, str) else item
        if isinstance(address, str) and len(address) > ADDRESS_MAX_LENGTH:
            invalid.append(
                f"{address[:40]!r}… is {len(address)} characters long; an address has at most {ADDRESS_MAX_LENGTH}."
            )
            continue
        try:
            if not isinstance(address, str) or text_problem(address, single_line=True):
                raise DjangoValidationError("not a single line of text")
            validate_email(address)
        except DjangoValidationError:
            invalid.append(f"{item!r} is not a valid email address.")
            continue
        if address.lower() not in seen:
            seen.add(address.lower())
            cleaned.append(address)
    if invalid:
        raise ApplicationError("Invalid recipients.", errors={"recipients": invalid})
    if not cleaned:
        raise field_error("recipients", "At least one recipient is required.")
    limit = settings.SEND_MAX_RECIPIENTS
    if len(cleaned) > limit:
        raise field_error("recipients", f"At most {limit} recipients per email, got {len(cleaned)}.")
    return cleaned


# SendGrid's own limit for a scheduled send (`send_at` in mail/send): 72 hours ahead.
SEND_AT_MAX_AHEAD = timedelta(hours=72)
# A `send_at` this little in the past is a clock a little behind ours, or "now": sent at once.
SEND_AT_PAST_TOLERANCE = timedelta(seconds=5)


def parse_send_at(raw: str | None) -> datetime | None:
    """The time a send is scheduled for, in UTC: an ISO 8601 date-time with a UTC offset (or Z).
    None is None (send at once). Raises a 400 ApplicationError naming `send_at`."""
    if raw is None:
        return None
    try:
        moment = parse_datetime(raw)
        if moment is not None and moment.tzinfo is not None:
            moment = moment.astimezone(UTC)  # an offset that takes it past the calendar raises here
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise field_error("send_at", f"{raw!r} is not an ISO 8601 date-time, such as 2026-12-01T09:00:00Z.")
    if moment.tzinfo is None:
        raise field_error("send_at", f"{raw!r} has no UTC offset: add one, such as Z or +01:00.")
    return moment


def check_send_at(send_at: datetime, *, now: datetime) -> None:
    """Raises a 400 ApplicationError naming `send_at` unless it is at most SEND_AT_MAX_AHEAD after
    `now` and not before `now` less SEND_AT_PAST_TOLERANCE."""
    if send_at < now - SEND_AT_PAST_TOLERANCE:
        raise field_error("send_at", f"{send_at.isoformat()!r} is in the past.")
    if send_at > now + SEND_AT_MAX_AHEAD:
        hours = int(SEND_AT_MAX_AHEAD.total_seconds() // 3600)
        raise field_error(
            "send_at",
            f"{send_at.isoformat()!r} is more than {hours} hours ahead; "
            f"a send may be scheduled at most {hours} hours ahead.",
        )


def _fingerprint(*, template_id: int, recipients: list[str], context: dict, send_at: datetime | None = None) -> str:
    request = {"template": template_id, "recipients": recipients, "context": context}
    if send_at is not None:  # absent for a send at once, so the fingerprints stored before stay valid
        request["send_at"] = send_at.isoformat()
    canonical = json.dumps(
        request,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotent_replay(*, sender: User, key: str, fingerprint: str) -> SendAccepted | None:
    earlier = SentEmail.objects.filter(sender=sender, idempotency_key=key).first()
    if earlier is None:
        return None
    if earlier.request_fingerprint != fingerprint:
        raise ApplicationError(
            "Invalid Idempotency-Key: it was already used for a different request.",
            errors={"Idempotency-Key": [f"The key {key!r} was used for a different request."]},
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    log.info("sent_email_idempotent_replay", email_id=earlier.pk)
    return SendAccepted(email=earlier, created=False)


def _check_rate_limit(*, sender: User) -> None:
    rate = settings.SEND_RATE_LIMIT  # validated when the settings loaded (core.env.Rate)
    if rate is None:
        return
    limit, period = rate.count, rate.seconds
    now = timezone.now()
    # The limit-th most recent email inside the window, if any: one index range scan of at most
    # `limit` rows. Requests racing each other may overshoot by the number in flight.
    oldest_counted = (
        SentEmail.objects.filter(sender=sender, created__gt=now - timedelta(seconds=period))
        .order_by("-created")
        .values_list("created", flat=True)[limit - 1 : limit]
    )
    oldest = next(iter(oldest_counted), None)
    if oldest is not None:
        retry_after = max(1, int((oldest + timedelta(seconds=period) - now).total_seconds()) + 1)
        raise ApplicationError(
            f"Send limit reached: at most {settings.SEND_RATE_LIMIT} emails.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(retry_after)},
        )


SUBJECT_MAX_LENGTH = _max_length(SentEmail, "subject")


def _render(template: EmailTemplate, context: dict) -> tuple[str, str]:
    budget = rendering.new_budget()  # the subject's and the body's rendering share it
    try:
        subject = rendering.render(template.subject, context, html=False, budget=budget)
        body = rendering.render(template.body, context, html=True, budget=budget)
    except rendering.RenderTooLarge as exc:
        raise field_error("context", f"Template {template.pk} with this context is too large to send: {exc}") from None
    except rendering.RenderUnstorable as exc:
        raise field_error("context", f"Template {template.pk} with this context cannot be sent: {exc}") from None
    except rendering.RenderError as exc:
        raise field_error("template", f"Template {template.pk} cannot be rendered: {exc}") from None
    if _LINE_BREAK.search(subject):
        raise field_error("context", f"The subject would contain a line break: {subject!r}. Remove it from the values.")
    subject = subject.strip()
    if len(subject) > SUBJECT_MAX_LENGTH:
        raise field_error(
            "context", f"The subject would be {len(subject)} characters long; at most {SUBJECT_MAX_LENGTH} are allowed."
        )
    return subject, body


def sent_email_create(
    *,
    sender: User,
    template_id: int,
    recipients: list[str],
    context: dict,
    correlation_id: str,
    idempotency_key: str | None = None,
    send_at: str | None = None,
) -> SendAccepted:
    """Accept an email for delivery.

    In one transaction: the rendered email, one row per (de-duplicated) recipient and its
    `email.requested` outbox event; the relay is notified on commit. Nothing else is contacted.
    Either everything is written or nothing is. With an `idempotency_key` already used by this
    sender for the same request, returns the earlier email and writes nothing (a different
    request under the same key is a 422). Raises ApplicationError (400 naming the field, 429 over
    the per-user rate limit).

    With `send_at` (ISO 8601 with an offset, at most 72 hours ahead), the email is scheduled: its
    `email.requested` event is not published before its hand-off (SCHEDULED_HANDOFF_SECONDS
    before `send_at`, when the sender gives it to SendGrid to hold until then), and an
    `email.scheduled` event tells the read model about it at once. It can be cancelled until a
    sender claims it (`sent_email_cancel`).
    """
    recipients = clean_recipients(recipients)
    when = parse_send_at(send_at)
    fingerprint = _fingerprint(template_id=template_id, recipients=recipients, context=context, send_at=when)
    if idempotency_key is not None and (
        replay := _idempotent_replay(sender=sender, key=idempotency_key, fingerprint=fingerprint)
    ):
        return replay  # the first answer, even once its send_at has passed
    if when is not None:
        check_send_at(when, now=timezone.now())
    template = template_cached(template_id)
    subject, body = _render(template, context)
    _check_rate_limit(sender=sender)
    write = EmailWrite(
        sender=sender,
        template=template,
        subject=subject,
        body=body,
        context=context,
        recipients=recipients,
        from_email=settings.DEFAULT_FROM_EMAIL,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        created=timezone.now(),
        event_id=new_event_id(),
        send_at=when,
        scheduled_event_id=new_event_id() if when is not None else "",
    )
    for _attempt in range(3):
        try:
            email_id = sent_email_write(write)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key committed first; its row is
            # visible now that our insert waited for it.
            if idempotency_key is not None and (
                replay := _idempotent_replay(sender=sender, key=idempotency_key, fingerprint=fingerprint)
            ):
                return replay
            raise
        if email_id is not None:
            log.info(
                "sent_email_accepted",
                email_id=email_id,
                recipients=len(recipients),
                event_id=write.event_id,
                send_at=when.isoformat() if when else None,
            )
            return SendAccepted(email=write.email(email_id), created=True)
        # The template changed (or went) since this process read it: render the current one.
        template = template_fresh(template_id)
        subject, body = _render(template, context)
        write = replace(write, template=template, subject=subject, body=body, event_id=new_event_id())
        if write.send_at is not None:
            write = replace(write, scheduled_event_id=new_event_id())
    raise ApplicationError(
        "The template kept changing while the email was written; send it again.",
        errors={"template": [f"Template {template_id} changed during the request."]},
        status_code=status.HTTP_409_CONFLICT,
    )


# Cancelling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelResult:
    email: SentEmail
    cancelled_now: bool  # False: it was cancelled already (the call changed nothing)


def sent_email_cancel(*, email: SentEmail, user: User, correlation_id: str) -> CancelResult:
    """Cancel `email` (the caller checked that `user` owns it) unless a sender claimed it.

    In one transaction: a `cancelled` delivery for every recipient and an `email.cancelled`
    outbox event, or nothing. Race-safe against the sender's claim (core.deliveries.store,
    CANCEL_SQL): exactly one of them wins. Idempotent: cancelling a cancelled email changes
    nothing (`cancelled_now` False). Raises a 409 ApplicationError once a sender claimed the
    email (sending, sent, failed or waiting for a retry)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(outbox_sql.REQUEST_OF_EMAIL_SQL, [str(email.pk)])
        request = cursor.fetchone()
        if request is not None:
            event_id, recipients = request
            outcome = cancel_request(
                cursor,
                email_id=email.pk,
                request_event_id=event_id,
                recipients=recipients,
                cancelled_by=user.pk,
                correlation_id=correlation_id,
                notify_channel=settings.OUTBOX_NOTIFY_CHANNEL if settings.OUTBOX_NOTIFY else None,
            )
            if outcome.cancelled:
                log.info("sent_email_cancelled", email_id=email.pk, event_id=event_id, recipients=len(recipients))
                return CancelResult(email=email, cancelled_now=True)
            transaction.set_rollback(True)  # never a partial cancel: the rows it made go
    if request is not None and set(outcome.states) == {"cancelled"}:
        return CancelResult(email=email, cancelled_now=False)
    if request is not None and outcome.states.get("cancelled"):
        # Impossible by construction (the claim and the cancel insert in the same order); said
        # loudly if it ever happens, and nothing of this cancel was kept.
        log.error("sent_email_cancel_mixed", email_id=email.pk, states=outcome.states)
    states = ", ".join(sorted(outcome.states)) if request is not None else "finished"
    raise ApplicationError(
        "The email can no longer be cancelled: a sender has already taken it.",
        errors={"id": [f"Email {email.pk} is past cancelling ({states})."]},
        status_code=status.HTTP_409_CONFLICT,
    )
