import json
from pathlib import Path

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import EmailTemplateFactory, UserFactory

CONTRACTS = Path(__file__).parent / "contracts"


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


@pytest.fixture
def relays():
    """Start relay processes with relays(topology, **env); all are stopped after the test."""
    from tests.broker import RelayProcess

    started = []

    def start(topology, **env):
        relay = RelayProcess(topology, **env).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop_quietly()
