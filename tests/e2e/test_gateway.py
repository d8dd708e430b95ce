"""A client of the original API, pointed at the one base URL (the gateway: Caddy from the
virtualenv with the repository's Caddyfile, in front of both APIs under gunicorn), works for every
endpoint, the log's GET included. Every process is a real OS process, every call goes over HTTP
through the gateway."""

import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.accounts.models import User
from tests.broker import wait_for
from tests.system import ROOT, Http, System

pytestmark = pytest.mark.django_db(transaction=True)
OPENAPI_JSON = {"Accept": "application/vnd.oai.openapi+json"}


@pytest.fixture
def system(topology):
    running = System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"gateway-{topology.prefix}",
    )
    try:
        yield running.start_all(gateway=True)
    finally:
        running.stop_all()


def get_page(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_a_client_of_the_original_api_works_for_every_endpoint_at_the_one_url(system):
    api = Http(system.gateway_url)
    tag = uuid.uuid4().hex[:8]
    email, password = f"ann-{tag}@example.com", "quiet-meadow-Lantern-42"

    status, body = api.call(
        "POST", "/api/v1/users/register/", {"email": email, "username": f"ann-{tag}", "password": password}
    )
    assert (status, body) == (201, {"email": email, "username": f"ann-{tag}"})
    status, login = api.call("POST", "/api/v1/users/login/", {"username": email, "password": password})
    assert status == 200 and login["email"] == email and login["token"], login
    user = Http(system.gateway_url, login["token"])

    # Templates: staff are made by an admin, not over the API.
    boss = f"boss-{tag}@example.com"
    assert (
        api.call("POST", "/api/v1/users/register/", {"email": boss, "username": f"boss-{tag}", "password": password})[0]
        == 201
    )
    User.objects.filter(email=boss).update(is_staff=True)
    status, staff_login = api.call("POST", "/api/v1/users/login/", {"username": boss, "password": password})
    assert status == 200, staff_login
    admin = Http(system.gateway_url, staff_login["token"])
    template = {"name": f"gateway-{tag}", "subject": "Hello {{ name }}", "body": "<p>Hi {{ name }}</p>"}
    assert user.call("POST", "/api/v1/emails/email-template/", template)[0] == 403
    status, created = admin.call("POST", "/api/v1/emails/email-template/", template)
    assert status == 201, created
    status, listed = api.call("GET", "/api/v1/emails/email-template/")
    assert status == 200 and created["id"] in {t["id"] for t in listed["results"]}
    status, changed = admin.call(
        "PUT", f"/api/v1/emails/email-template/{created['id']}/", {**template, "subject": "Hi {{ name }}"}
    )
    assert (status, changed["subject"]) == (200, "Hi {{ name }}")
    status, changed = admin.call(
        "PATCH", f"/api/v1/emails/email-template/{created['id']}/", {"subject": "Welcome, {{ name }}"}
    )
    assert (status, changed["subject"]) == (200, "Welcome, {{ name }}")
    status, read = api.call("GET", f"/api/v1/emails/email-template/{created['id']}/")
    assert (status, read["subject"], read["body"]) == (200, "Welcome, {{ name }}", "<p>Hi {{ name }}</p>")

    # Send (the command API), then find it in the log (the query API: the command API answers a
    # GET of this path 405, so a 200 with the email in it came from the query API).
    recipients = [f"a-{tag}@example.com", f"b-{tag}@example.org"]
    status, sent = user.call(
        "POST",
        "/api/v1/emails/sent-email/",
        {"recipients": recipients, "template": created["id"], "context": {"name": "Ann"}},
    )
    assert status == 202 and sent["id"], sent
    now = datetime.now(UTC)
    query = urllib.parse.urlencode(
        [
            ("recipient", recipients[0]),
            ("recipient", recipients[1]),
            ("start_time", (now - timedelta(minutes=5)).isoformat()),
            ("end_time", (now + timedelta(minutes=5)).isoformat()),
        ]
    )

    def in_the_log():
        status, page = user.call("GET", f"/api/v1/emails/sent-email/?{query}")
        assert status == 200, page
        return next((e for e in page["results"] if e["id"] == sent["id"]), None)

    logged = wait_for(in_the_log, timeout=30, message="the email in the log through the gateway")
    assert logged["subject"] == "Welcome, Ann"
    assert {r["email"] for r in logged["recipient_status"]} == set(recipients)
    status, detail = user.call("GET", f"/api/v1/emails/sent-email/{sent['id']}/")
    assert status == 200 and detail["history"][0]["status"] == "queued", detail
    # Someone else's token sees none of it; a far window hides it.
    assert admin.call("GET", f"/api/v1/emails/sent-email/{sent['id']}/")[0] == 404
    far = urllib.parse.urlencode({"recipient": recipients[0], "end_time": "2000-01-01"})
    assert user.call("GET", f"/api/v1/emails/sent-email/?{far}")[1]["results"] == []

    # Log out: the token is refused afterwards, by both APIs behind the one URL.
    assert user.call("POST", "/api/v1/users/logout/")[0] == 204
    assert user.call("GET", "/api/v1/emails/sent-email/")[0] == 401
    assert (
        user.call(
            "POST", "/api/v1/emails/sent-email/", {"recipients": recipients, "template": created["id"], "context": {}}
        )[0]
        == 401
    )


def test_the_docs_at_the_one_url_cover_both_apis(system):
    api = Http(system.gateway_url)
    status, page = get_page(f"{system.gateway_url}/api/docs/")
    assert status == 200
    assert "/api/schema/sent-email-log/" in page and "SwaggerUIStandalonePreset" in page
    status, command = api.call("GET", "/api/schema/", headers=OPENAPI_JSON)
    assert status == 200 and "post" in command["paths"]["/api/v1/emails/sent-email/"]
    assert "/api/v1/emails/email-template/" in command["paths"]
    status, query = api.call("GET", "/api/schema/sent-email-log/", headers=OPENAPI_JSON)
    assert status == 200
    assert "get" in query["paths"]["/api/v1/emails/sent-email/"]
    assert "/api/v1/emails/sent-email/{email_id}/" in query["paths"]
    # The Swagger UI's assets come through the gateway too.
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert assets and all(get_page(f"{system.gateway_url}{asset}")[0] == 200 for asset in assets), assets


def test_the_gateway_keeps_the_clients_host_for_allowed_hosts(system):
    # Caddy passes the client's Host on: one the APIs do not allow is refused by Django, on both
    # routes, rather than replaced by the upstream's address.
    for path in ("/api/v1/emails/email-template/", "/api/v1/emails/sent-email/"):
        assert get_page(f"{system.gateway_url}{path}", {"Host": "elsewhere.example"})[0] == 400, path
        assert get_page(f"{system.gateway_url}{path}", {"Host": "localhost"})[0] in (200, 401), path


def test_an_api_key_sends_and_reads_through_both_apis_at_the_one_url(system):
    from tests.factories import EmailTemplateFactory

    api = Http(system.gateway_url)
    tag = uuid.uuid4().hex[:8]
    email, password = f"svc-{tag}@example.com", "quiet-meadow-Lantern-42"
    assert (
        api.call("POST", "/api/v1/users/register/", {"email": email, "username": f"svc-{tag}", "password": password})[0]
        == 201
    )
    token = api.call("POST", "/api/v1/users/login/", {"username": email, "password": password})[1]["token"]
    user = Http(system.gateway_url, token)
    status, made = user.call("POST", "/api/v1/api-keys/", {"name": "billing", "scopes": ["send", "read"]})
    assert status == 201, made
    status, send_only = user.call("POST", "/api/v1/api-keys/", {"name": "sender", "scopes": ["send"]})
    assert status == 201, send_only
    key = Http(system.gateway_url)
    bearer = {"Authorization": f"Bearer {made['key']}"}

    template = EmailTemplateFactory()
    body = {"recipients": [f"k-{tag}@example.com"], "template": template.pk, "context": {"name": "Key"}}
    status, sent = key.call("POST", "/api/v1/emails/sent-email/", body, headers=bearer)
    assert status == 202, sent

    def in_the_log():
        status, page = key.call("GET", "/api/v1/emails/sent-email/", headers=bearer)  # the query API
        assert status == 200, page
        return next((e for e in page["results"] if e["id"] == sent["id"]), None)

    wait_for(in_the_log, timeout=30, message="the key's email in the log through the gateway")
    # The query API names the scope a key lacks; neither API takes a revoked key.
    status, refused = key.call(
        "GET", "/api/v1/emails/sent-email/", headers={"Authorization": f"Token {send_only['key']}"}
    )
    assert (status, refused["message"]) == (403, "This API key lacks the 'read' scope.")
    assert user.call("POST", f"/api/v1/api-keys/{made['id']}/revoke/")[0] == 200
    assert key.call("GET", "/api/v1/emails/sent-email/", headers=bearer)[0] == 401
    assert key.call("POST", "/api/v1/emails/sent-email/", body, headers=bearer)[0] == 401
    listed = user.call("GET", "/api/v1/api-keys/")[1]["results"]
    assert {k["name"]: k["revoked_at"] is not None for k in listed} == {"billing": True, "sender": False}
    assert next(k for k in listed if k["name"] == "billing")["last_used_at"] is not None
