"""Requests generated from each API's own OpenAPI schema, in positive mode (data the schema
allows) and negative mode (data it forbids: wrong types, missing or extra fields, values out of
range): no 5xx, and every answer fits the schema (its status code, content type and body are
documented). Runs against the WSGI apps in-process, with a real staff token. A refusal of
valid-looking data is allowed: a second template with a name an earlier example took is rightly
a 400. bench/hostile.py runs the same with many more examples and counts."""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.utils import timezone
from hypothesis import HealthCheck, settings
from knox.models import AuthToken
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from query_api.models import SentEmailLog
from tests.factories import EmailTemplateFactory, UserFactory
from tests.hostile.conftest import webhook_key

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BOTH_MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
command_api = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())
command_api.config.generation.update(modes=BOTH_MODES)


@pytest.fixture
def staff_token(db, settings):
    # A configured webhook key: unsigned posts are then refused with 403, not 503.
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = webhook_key()[1]
    # As Django's test client does: a request must not close the test's transaction.
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    EmailTemplateFactory()
    user = UserFactory(is_staff=True)
    for n in range(1, 4):  # something for the query API to read
        SentEmailLog.objects.create(
            id=n,
            owner_id=user.pk,
            recipients=[f"r{n}@example.com"],
            created=timezone.now(),
            status="sent",
            recipient_status={f"r{n}@example.com": {"status": "sent"}},
        )
    _, token = AuthToken.objects.create(user=user)
    yield token
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@command_api.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db
def test_command_api_from_its_schema(case, staff_token):
    case.call_and_validate(headers={"Authorization": f"Token {staff_token}"}, checks=CHECKS)


class QueryApiWSGI(WSGIHandler):
    """The query API's URL conf in this process (Django honours `request.urlconf`)."""

    def get_response(self, request):
        request.urlconf = "query_api.urls"
        return super().get_response(request)


query_api = schemathesis.openapi.from_wsgi("/api/schema/?format=json", QueryApiWSGI())
query_api.config.generation.update(modes=BOTH_MODES)


@query_api.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db
def test_query_api_from_its_schema(case, staff_token):
    case.call_and_validate(headers={"Authorization": f"Token {staff_token}"}, checks=CHECKS)
