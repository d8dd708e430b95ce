"""The send's write: the email, its recipients and its `email.requested` outbox event in one
prepared statement, and the templates a send renders with, as this process last read them.

A scheduled send (`send_at`) has a statement of its own, so the send-now statement stays as it
was: its request row waits in the outbox (`not_before`) until SCHEDULED_HANDOFF_SECONDS before
`send_at`, when the sender hands it to the provider to hold until `send_at`, and a second row,
`email.scheduled`, due at once, tells the read model about the email meanwhile."""

import json
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction

from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from core.accounts.models import User
from core.contracts import EmailRequested, EmailScheduled
from core.errors import field_error
from core.outbox import sql as outbox_sql
from core.prepared import Prepared
from core.scheduling import handoff_at

# Templates ------------------------------------------------------------------------------------

# The write below checks that the template row still has the `modified` time of the copy here, so
# a stale copy is never used (the write finds nothing, and the template is read again). It saves
# a round trip per request.
_TEMPLATE_CACHE_SIZE = 256
_templates: dict[int, EmailTemplate] = {}


def template_cached(template_id: int) -> EmailTemplate:
    """The template as this process last read it (reads it the first time); raises a 400
    ApplicationError naming `template` when there is none."""
    return _templates.get(template_id) or template_fresh(template_id)


def template_fresh(template_id: int) -> EmailTemplate:
    """The template as it is now, remembered for the next sends; raises a 400 ApplicationError
    naming `template` when there is none."""
    template = EmailTemplate.objects.filter(pk=template_id).first()
    if template is None:
        _templates.pop(template_id, None)
        raise field_error("template", f"No template with id {template_id}.")
    if len(_templates) >= _TEMPLATE_CACHE_SIZE:
        _templates.clear()
    _templates[template_id] = template
    return template


# The write ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailWrite:
    """One accepted email as it is written: rendered from `template` as it was at its `modified`
    time, with the id of its `email.requested` event."""

    sender: User
    template: EmailTemplate
    subject: str
    body: str
    context: dict
    recipients: list[str]
    from_email: str
    correlation_id: str
    idempotency_key: str | None
    fingerprint: str
    created: datetime
    event_id: str
    send_at: datetime | None = None  # None: at once
    scheduled_event_id: str = ""  # the id of its email.scheduled event, for a scheduled send

    def event(self) -> EmailRequested:
        return EmailRequested(
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            occurred_at=self.created.isoformat(),
            email_id=0,  # replaced by the id the write gives the email
            owner_id=self.sender.pk,
            template_id=self.template.pk,
            from_email=self.from_email,
            reply_to=self.sender.email,
            recipients=tuple(self.recipients),
            subject=self.subject,
            body_html=self.body,
            template_name=self.template.name,
            send_at=self.send_at.isoformat() if self.send_at else "",
        )

    def scheduled_event(self) -> EmailScheduled:
        """What the read model learns of a scheduled send at once (its request waits)."""
        assert self.send_at is not None and self.scheduled_event_id, "only a scheduled send has one"
        return EmailScheduled(
            event_id=self.scheduled_event_id,
            correlation_id=self.correlation_id,
            occurred_at=self.created.isoformat(),
            email_id=0,  # replaced by the id the write gives the email
            request_event_id=self.event_id,
            owner_id=self.sender.pk,
            from_email=self.from_email,
            template_id=self.template.pk,
            template_name=self.template.name,
            subject=self.subject,
            recipients=tuple(self.recipients),
            requested_at=self.created.isoformat(),
            send_at=self.send_at.isoformat(),
        )

    def email(self, email_id: int) -> SentEmail:
        """The email as written under `email_id` (not read back)."""
        return SentEmail(
            pk=email_id,
            sender=self.sender,
            template=self.template,
            template_name=self.template.name,
            from_email=self.from_email,
            subject=self.subject,
            body=self.body,
            context=self.context,
            correlation_id=self.correlation_id,
            idempotency_key=self.idempotency_key,
            request_fingerprint=self.fingerprint,
            created=self.created,
            send_at=self.send_at,
        )


# The email, its recipients (in the order given) and its outbox event in one statement, so in one
# transaction and one round trip; on commit, the NOTIFY wakes the relay. The event's payload and
# headers come from the contract with the new email's id merged in. Nothing is written unless the
# template row still has the `modified` time the email was rendered from.
_EVENT_EXPRESSIONS = {
    "aggregateid": "email.id::text",
    "payload": "%(payload)s::jsonb || jsonb_build_object('email_id', email.id)",
    "headers": "%(headers)s::jsonb || jsonb_build_object('aggregateid', email.id::text)",
}
_EVENT = outbox_sql.insert_select(**_EVENT_EXPRESSIONS)
_EMAIL_WRITE = f"""
WITH template AS (
    SELECT id FROM {EmailTemplate._meta.db_table} WHERE id = %(template_id)s AND modified = %(template_modified)s
), email AS (
    INSERT INTO {SentEmail._meta.db_table} (sender_id, template_id, template_name, from_email, subject, body,
        context, correlation_id, idempotency_key, request_fingerprint, created)
    SELECT %(sender_id)s, template.id, %(template_name)s, %(from_email)s, %(subject)s, %(body)s,
        %(context)s::jsonb, %(correlation_id)s, %(idempotency_key)s, %(fingerprint)s, %(created)s
    FROM template
    RETURNING id
), recipients AS (
    INSERT INTO {SentEmailRecipient._meta.db_table} (email_id, address)
    SELECT email.id, given.address
    FROM email, unnest(%(recipients)s::varchar[]) WITH ORDINALITY AS given(address, position)
    ORDER BY given.position
), event AS (
    {_EVENT}
    FROM email
)
"""
_EMAIL_WRITE_RETURNING = {
    True: Prepared("sent_email_write_notify", _EMAIL_WRITE + "SELECT email.id, pg_notify(%(channel)s, '') FROM email"),
    False: Prepared("sent_email_write", _EMAIL_WRITE + "SELECT email.id FROM email"),  # OUTBOX_NOTIFY off: polling
}

# A scheduled send: the same write with the email's `send_at`, its request not published before
# its hand-off (`release_at`: send_at less SCHEDULED_HANDOFF_SECONDS), and an `email.scheduled`
# row published at once. The NOTIFY carries the hand-off (epoch seconds), so the relay wakes again
# exactly when the request is due instead of on its next poll.
_SCHEDULED_EVENT = outbox_sql.insert_select(
    id="%(scheduled_id)s",
    type="%(scheduled_type)s",
    aggregateid="email.id::text",
    payload="%(scheduled_payload)s::jsonb || jsonb_build_object('email_id', email.id)",
    headers="%(scheduled_headers)s::jsonb || jsonb_build_object('aggregateid', email.id::text)",
)


def _derived(statement: str, *changes: tuple[str, str]) -> str:
    """`statement` with each (old, new) replaced once; fails at import if one no longer matches."""
    for old, new in changes:
        assert statement.count(old) == 1, f"the scheduled write no longer matches the send-now one: {old!r}"
        statement = statement.replace(old, new)
    return statement


_SCHEDULED_WRITE = (
    _derived(
        _EMAIL_WRITE,
        ("request_fingerprint, created)", "request_fingerprint, created, send_at)"),
        ("%(fingerprint)s, %(created)s", "%(fingerprint)s, %(created)s, %(send_at)s::timestamptz"),
        (_EVENT, outbox_sql.insert_select(**_EVENT_EXPRESSIONS, not_before="%(release_at)s::timestamptz")),
    )
    + f"""    , scheduled AS (
    {_SCHEDULED_EVENT}
    FROM email
)
"""
)
_SCHEDULED_WRITE_RETURNING = {
    True: Prepared(
        "sent_email_write_scheduled_notify",
        _SCHEDULED_WRITE
        + "SELECT email.id, pg_notify(%(channel)s, extract(epoch FROM %(release_at)s::timestamptz)::text) FROM email",
    ),
    False: Prepared("sent_email_write_scheduled", _SCHEDULED_WRITE + "SELECT email.id FROM email"),
}


def sent_email_write(write: EmailWrite) -> int | None:
    """Write the email, its recipients and its event in one statement: atomic, in a savepoint of
    the caller's transaction if there is one. Returns the new email's id, or None (nothing
    written) when the template changed since it was read. Raises IntegrityError when the sender
    already used the Idempotency-Key."""
    event = outbox_sql.outbox_parameters(write.event(), aggregatetype=EmailRequested.AGGREGATE, aggregateid="")
    params = event | {
        "template_id": write.template.pk,
        "template_modified": write.template.modified,
        "sender_id": write.sender.pk,
        "template_name": write.template.name,
        "from_email": write.from_email,
        "subject": write.subject,
        "body": write.body,
        "context": json.dumps(write.context),
        "correlation_id": write.correlation_id,
        "idempotency_key": write.idempotency_key,
        "fingerprint": write.fingerprint,
        "created": write.created,
        "recipients": write.recipients,
        "channel": settings.OUTBOX_NOTIFY_CHANNEL,
    }
    if write.send_at is None:
        statement = _EMAIL_WRITE_RETURNING[bool(settings.OUTBOX_NOTIFY)]
    else:
        scheduled = outbox_sql.outbox_parameters(
            write.scheduled_event(), aggregatetype=EmailScheduled.AGGREGATE, aggregateid=""
        )
        params |= {
            "send_at": write.send_at,
            "release_at": handoff_at(write.send_at),
            "scheduled_id": scheduled["id"],
            "scheduled_type": scheduled["type"],
            "scheduled_payload": scheduled["payload"],
            "scheduled_headers": scheduled["headers"],
        }
        statement = _SCHEDULED_WRITE_RETURNING[bool(settings.OUTBOX_NOTIFY)]
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            with transaction.atomic():  # a savepoint: a refused write leaves the caller's transaction usable
                statement.execute(cursor, params)
        else:
            statement.execute(cursor, params)  # autocommit: the statement is its own transaction
        row = cursor.fetchone()
    return row[0] if row else None
