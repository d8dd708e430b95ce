"""Writes of the emails app: templates, and sending an email with its outbox event."""

import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from rest_framework import status

from command_api.emails import rendering
from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from command_api.emails.writes import EmailWrite, sent_email_write, template_cached, template_fresh
from core.accounts.models import User
from core.errors import ApplicationError, field_error
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


def _fingerprint(*, template_id: int, recipients: list[str], context: dict) -> str:
    canonical = json.dumps(
        {"template": template_id, "recipients": recipients, "context": context},
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
) -> SendAccepted:
    """Accept an email for delivery.

    In one transaction: the rendered email, one row per (de-duplicated) recipient and its
    `email.requested` outbox event; the relay is notified on commit. Nothing else is contacted.
    Either everything is written or nothing is. With an `idempotency_key` already used by this
    sender for the same request, returns the earlier email and writes nothing (a different
    request under the same key is a 422). Raises ApplicationError (400 naming the field, 429 over
    the per-user rate limit).
    """
    recipients = clean_recipients(recipients)
    fingerprint = _fingerprint(template_id=template_id, recipients=recipients, context=context)
    if idempotency_key is not None and (
        replay := _idempotent_replay(sender=sender, key=idempotency_key, fingerprint=fingerprint)
    ):
        return replay
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
            log.info("sent_email_accepted", email_id=email_id, recipients=len(recipients), event_id=write.event_id)
            return SendAccepted(email=write.email(email_id), created=True)
        # The template changed (or went) since this process read it: render the current one.
        template = template_fresh(template_id)
        subject, body = _render(template, context)
        write = replace(write, template=template, subject=subject, body=body, event_id=new_event_id())
    raise ApplicationError(
        "The template kept changing while the email was written; send it again.",
        errors={"template": [f"Template {template_id} changed during the request."]},
        status_code=status.HTTP_409_CONFLICT,
    )
