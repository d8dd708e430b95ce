"""One email through the real processes: command API -> relay -> projector -> query API, then
the sender and the fake SendGrid, then a signed webhook."""

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import override_settings

from core.outbox.models import OutboxEvent
from tests import broker
from tests.conftest import client_for
from tests.factories import EmailTemplateFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_email_is_queued_then_sent_then_delivered_in_the_query_api(
    topology, relays, projectors, senders, fake_sendgrid
):
    fake, _ = fake_sendgrid
    relays(topology).wait_ready()
    projectors(topology).wait_ready()
    user = UserFactory()
    client = client_for(user)
    response = client.post(
        "/api/v1/emails/sent-email/",
        {
            "recipients": ["ann@example.com", "bob@example.org"],
            "template": EmailTemplateFactory().pk,
            "context": {"name": "Ann"},
        },
        format="json",
    )
    email_id = response.json()["id"]

    def log_status(expected):
        with override_settings(ROOT_URLCONF="query_api.urls"):
            answer = client.get(f"/api/v1/emails/sent-email/{email_id}/")
        return answer.json() if answer.status_code == 200 and answer.json()["status"] == expected else None

    broker.wait_for(lambda: log_status("queued"), timeout=15, message="queued in the query API")
    senders(topology).wait_ready()
    sent = broker.wait_for(lambda: log_status("sent"), timeout=20, message="sent in the query API")
    message_id = fake.messages[0]["message_id"]
    assert {r["provider_message_id"] for r in sent["recipient_status"]} == {message_id}

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    request_event = OutboxEvent.objects.get(type="email.requested").payload
    body = json.dumps(
        [
            {
                "email": r,
                "timestamp": int(time.time()),
                "event": "delivered",
                "sg_event_id": f"sg-{r}",
                "sg_message_id": f"{message_id}.filter0001.{n}",
                "event_id": request_event["event_id"],
                "email_id": str(email_id),
                "recipient": r,
            }
            for n, r in enumerate(request_event["recipients"])
        ]
    )
    timestamp = str(int(time.time()))
    signature = base64.b64encode(key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    with override_settings(SENDGRID_WEBHOOK_PUBLIC_KEY=base64.b64encode(der).decode()):
        hook = client.post(
            "/api/v1/webhooks/sendgrid/",
            body,
            content_type="application/json",
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE=signature,
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP=timestamp,
        )
    assert hook.json()["accepted"] == 2
    delivered = broker.wait_for(lambda: log_status("delivered"), timeout=20, message="delivered in the query API")
    assert [h["status"] for h in delivered["history"]] == ["queued", "sent", "sent", "delivered", "delivered"]
