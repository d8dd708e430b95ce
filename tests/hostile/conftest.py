import base64
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken

from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from command_api.webhooks.models import ProviderEvent
from core.accounts.models import ApiKey, User
from core.accounts.services import api_key_create
from core.client_webhooks.models import WebhookEndpoint, WebhookMessage
from core.deliveries.models import Delivery, Redrive
from core.outbox.models import DeadLetter, OutboxEvent, OutboxReplay
from core.suppressions.models import Suppression
from query_api.models import SentEmailLog
from tests.factories import EmailTemplateFactory, UserFactory
from tests.hostile.hostile import Fixture

WRITE_TABLES = (
    User,
    ApiKey,
    EmailTemplate,
    SentEmail,
    SentEmailRecipient,
    OutboxEvent,
    OutboxReplay,
    ProviderEvent,
    Delivery,
    Redrive,
    DeadLetter,
    WebhookEndpoint,
    WebhookMessage,
    Suppression,
)


def write_counts() -> tuple[int, ...]:
    """Rows in every table a request may write (the login throttle's cache aside: a failed login
    is meant to count), in one statement: the hostile tests count twice per example, thousands
    of times, and a query per table was most of their time."""
    counts = ", ".join(f"(SELECT count(*) FROM {connection.ops.quote_name(m._meta.db_table)})" for m in WRITE_TABLES)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {counts}")
        return tuple(cursor.fetchone())


def webhook_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A signing key and its public half as SendGrid's settings show it (base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


@pytest.fixture
def hostile_fixture(db, settings) -> Fixture:
    """A staff user's token, a template and one email in the read model for the baselines; a
    webhook key, so that an unsigned post is a 403 and not a 503 (no key configured)."""
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = webhook_key()[1]
    user = UserFactory(is_staff=True)
    template = EmailTemplateFactory()
    email = SentEmailLog.objects.create(
        id=424242,
        owner_id=user.pk,
        recipients=["ann@example.com"],
        created=timezone.now(),
        status="sent",
        template_id=template.pk,
        recipient_status={"ann@example.com": {"status": "sent"}},
    )
    Suppression.objects.create(owner=user, address="kept@example.com", reason="manual", source="api")
    _, token = AuthToken.objects.create(user=user)
    api_key = api_key_create(user=user, name="hostile", scopes=["send"]).api_key
    endpoint, message = webhook_endpoint_with_message(user, email.pk)
    return Fixture(
        token=token,
        template_id=template.pk,
        email_id=email.pk,
        api_key_id=api_key.pk,
        webhook_endpoint_id=endpoint.pk,
        webhook_message_id=str(message.pk),
    )


def webhook_endpoint_with_message(user, email_id: int):
    """An endpoint of `user` with one delivered message, for the endpoint API's baselines."""
    endpoint = WebhookEndpoint.objects.create(owner=user, url="https://93.184.216.34/h", secret="whsec_" + "A" * 32)
    message = WebhookMessage.objects.create(
        id=uuid.uuid4(),
        endpoint=endpoint,
        email_id=email_id,
        sequence=1,
        event_type="email.sent",
        payload={"type": "email.sent", "data": {}},
        state="delivered",
        next_attempt_at=timezone.now(),
        created_at=timezone.now(),
    )
    return endpoint, message
