import uuid
from datetime import UTC, datetime

import factory

from command_api.emails.models import EmailTemplate
from core.accounts.models import User
from core.contracts import EmailRequested

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class EmailTemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmailTemplate

    name = factory.Sequence(lambda n: f"template-{n}")
    subject = "Hello {{ name }}"
    body = "<p>Dear {{ name }}, your code is {{ code }}.</p>"


def email_requested(recipients=("ann@example.com",), **fields) -> EmailRequested:
    """An email.requested event (a new event id each time), with `fields` changed."""
    values = dict(
        event_id=str(uuid.uuid4()),
        correlation_id="corr-1",
        occurred_at=datetime.now(UTC).isoformat(),
        email_id=1,
        owner_id=1,
        template_id=1,
        from_email="no-reply@example.com",
        reply_to=None,
        recipients=tuple(recipients),
        subject="Hello",
        body_html="<p>Hi</p>",
    )
    return EmailRequested(**(values | fields))


def sendgrid_event(request: EmailRequested, recipient: str, kind: str = "processed", *, message_id: str = "m1") -> dict:
    """One event of SendGrid's Event Webhook about `recipient` of `request`, with the custom args
    the sender set, as SendGrid posts it (its own id, `sg_message_id` with SendGrid's suffix)."""
    return {
        "email": recipient,
        "timestamp": int(datetime.now(UTC).timestamp()),
        "event": kind,
        "sg_event_id": f"sg-{uuid.uuid4()}",
        "sg_message_id": f"{message_id}.filter0001.1.0",
        "event_id": request.event_id,
        "email_id": str(request.email_id),
        "recipient": recipient,
    }
