import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import EmailTemplateFactory, UserFactory

CONTRACTS = Path(__file__).parent / "contracts"


HOOK = "/api/v1/webhooks/sendgrid/"


@pytest.fixture
def signer(settings):
    """Signs an Event Webhook body as SendGrid does, with a key made for the test (its public key
    set as SENDGRID_WEBHOOK_PUBLIC_KEY): the headers to post with."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = base64.b64encode(der).decode()

    def sign(body: str, timestamp: str | None = None) -> dict:
        timestamp = timestamp or str(int(time.time()))
        signature = base64.b64encode(key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
        return {
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": signature,
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": timestamp,
        }

    return sign


def golden(event_type: str, version: int) -> dict:
    """The golden JSON sample of an event, shared by producer and consumer tests."""
    return json.loads((CONTRACTS / f"{event_type}.v{version}.json").read_text())


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True)


def client_for(user) -> APIClient:
    _, token = AuthToken.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def user_client(user):
    return client_for(user)


@pytest.fixture
def staff_client(staff):
    return client_for(staff)


@pytest.fixture
def template(db):
    return EmailTemplateFactory()


@pytest.fixture
def topology():
    """A broker topology of this test's own (unique name prefix), deleted afterwards."""
    from tests import broker

    declared = broker.new_topology()
    broker.declare(declared)
    yield declared
    broker.delete(declared)


def _processes(module):
    from tests.broker import WorkerProcess

    started = []

    def start(topology, **env):
        process = WorkerProcess(module, topology, **env).start()
        started.append(process)
        return process

    return start, started


@pytest.fixture
def relays():
    """Start relay processes with relays(topology, **env); all are stopped after the test."""
    start, started = _processes("outbox_relay")
    yield start
    for process in started:
        process.stop_quietly()


@pytest.fixture
def projectors():
    """Start projector processes with projectors(topology, **env); all are stopped after the test."""
    start, started = _processes("query_api")
    yield start
    for process in started:
        process.stop_quietly()


@pytest.fixture
def senders(fake_sendgrid):
    """Start sender processes with senders(topology, **env), pointed at the fake SendGrid;
    all are stopped after the test."""
    fake, url = fake_sendgrid
    start, started = _processes("sender")

    def start_sender(topology, **env):
        defaults = {
            "SENDGRID_HOST": url,
            "SENDGRID_API_KEY": "SG.fake-key",
            "SENDER_RETRY_SCHEDULE": "1s,1s,1s,1s",
            "SENDER_IN_DOUBT_GRACE_SECONDS": 2,
            "SENDER_KEY_PROBE_SECONDS": 1,
            "SENDER_LEASE_SECONDS": 5,
            "SENDGRID_TIMEOUT_SECONDS": 5,
        }
        return start(topology, **(defaults | env))

    yield start_sender
    for process in started:
        process.stop_quietly()


@pytest.fixture
def fake_sendgrid():
    """The fake SendGrid on a free port, in this process. Yields (fake, url)."""
    import threading

    from sender.fake_sendgrid import FakeSendGrid, Faults, parse_keys, serve
    from tests.broker import free_port

    fake = FakeSendGrid(keys=parse_keys("SG.fake-key:mail.send,SG.read-only:"), faults=Faults())
    port = free_port()
    server = serve(fake, host="127.0.0.1", port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh_database():
    """A database of the test's own, dropped afterwards. Copied from template0, which takes no
    connections: template1's copy fails while anyone else on the server is connected to it."""
    import uuid

    import psycopg2
    from django.db import connection

    settings = connection.settings_dict
    name = f"emails_fresh_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname="postgres",
    )
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
