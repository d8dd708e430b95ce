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
