"""End to end: every process a real OS process, every call over HTTP."""

import time
import uuid

import pytest
from django.db import connection

from core.accounts.models import User
from tests.broker import wait_for
from tests.system import ROOT, Http, System

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def system(topology):
    running = System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"e2e-{topology.prefix}",
    )
    try:
        yield running.start_all()
    finally:
        running.stop_all()


def test_register_login_template_send_then_sent_then_delivered(system):
    api = Http(system.command_url)
    email = f"ann-{uuid.uuid4().hex[:6]}@example.com"
    status, body = api.call(
        "POST",
        "/api/v1/users/register/",
        {"email": email, "username": email.split("@")[0], "password": "quiet-meadow-Lantern-42"},
    )
    assert (status, body) == (201, {"email": email, "username": email.split("@")[0]})
    status, login = api.call("POST", "/api/v1/users/login/", {"username": email, "password": "quiet-meadow-Lantern-42"})
    assert status == 200 and login["email"] == email
    user = Http(system.command_url, login["token"])

    # Staff are made by an admin, not over the API: register, then promote.
    assert (
        api.call(
            "POST",
            "/api/v1/users/register/",
            {"email": "boss@example.com", "username": "boss", "password": "quiet-meadow-Lantern-43"},
        )[0]
        == 201
    )
    User.objects.filter(email="boss@example.com").update(is_staff=True)
    status, staff_login = api.call(
        "POST", "/api/v1/users/login/", {"username": "boss@example.com", "password": "quiet-meadow-Lantern-43"}
    )
    admin = Http(system.command_url, staff_login["token"])
    template = {"name": "e2e", "subject": "Hello {{ name }}", "body": "<p>Hi {{ name }}</p>"}
    assert user.call("POST", "/api/v1/emails/email-template/", template)[0] == 403
    status, created = admin.call("POST", "/api/v1/emails/email-template/", template)
    assert status == 201

    sent_ids = []
    for n in range(3):
        recipients = [f"r{n}-{i}@example.com" for i in range(3)]
        status, answer = user.call(
            "POST",
            "/api/v1/emails/sent-email/",
            {"recipients": recipients, "template": created["id"], "context": {"name": f"N{n}"}},
        )
        assert status == 202, answer
        sent_ids.append(answer["id"])

    fake_recipients = lambda: {r["email"] for m in system.accepted_calls() for r in m["recipients"]}  # noqa: E731
    wait_for(lambda: len(fake_recipients()) == 9, timeout=30, message="all 9 recipients at the fake SendGrid")
    reader = Http(system.query_url, login["token"])

    def all_delivered():
        status, page = reader.call("GET", "/api/v1/emails/sent-email/")
        return (
            status == 200
            and sorted(e["id"] for e in page["results"]) == sorted(sent_ids)
            and all(e["status"] == "delivered" for e in page["results"])
        )

    wait_for(all_delivered, timeout=30, message="delivered in the query API")
    status, detail = reader.call("GET", f"/api/v1/emails/sent-email/{sent_ids[0]}/")
    statuses = [h["status"] for h in detail["history"]]
    assert statuses[0] == "queued" and statuses.index("sent") < statuses.index("delivered")
    assert detail["subject"] == "Hello N0"
    # Someone else's token sees none of it.
    other = Http(system.query_url, staff_login["token"])
    assert other.call("GET", "/api/v1/emails/sent-email/")[1]["results"] == []
    assert other.call("GET", f"/api/v1/emails/sent-email/{sent_ids[0]}/")[0] == 404
    time.sleep(0.1)
