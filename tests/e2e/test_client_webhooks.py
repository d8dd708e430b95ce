"""End to end with the notifier: a send through the real processes reaches the user's endpoint as
signed status webhooks, delivered, sent and queued, each with its sequence number."""

import json

import pytest
from django.db import connection
from standardwebhooks.webhooks import Webhook

from tests.broker import wait_for
from tests.system import ROOT, Http, System
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def system(topology):
    running = System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"e2e-hooks-{topology.prefix}",
        CLIENT_WEBHOOKS_ALLOW_PRIVATE="true",
        CLIENT_WEBHOOKS_ALLOW_HTTP="true",
    )
    try:
        running.start_all()
        running.start("notifier")
        running.wait_ready("notifier")
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_send_s_statuses_reach_the_user_s_endpoint_signed(system, receiver):
    token, template_id = system.staff_with_template("hooks-e2e")
    client = Http(system.command_url, token)
    status, endpoint = client.call("POST", "/api/v1/webhook-endpoints/", {"url": receiver.url("fast/e2e")})
    assert status == 201 and endpoint["secret"].startswith("whsec_")
    status, sent = client.call(
        "POST", "/api/v1/emails/sent-email/", {"recipients": ["ann@example.com"], "template": template_id}
    )
    assert status == 202
    # queued, sent, and delivered (the fake SendGrid posts its Event Webhook).
    wait_for(lambda: len(receiver.at("fast")) >= 3, timeout=60)
    bodies = [Webhook(endpoint["secret"]).verify(r.body, r.headers) for r in receiver.at("fast")]
    ours = sorted((b for b in bodies if b["data"]["email_id"] == sent["id"]), key=lambda b: b["data"]["sequence"])
    assert [b["type"] for b in ours][:3] == ["email.queued", "email.sent", "email.delivered"]
    assert [b["data"]["sequence"] for b in ours][:3] == [1, 2, 3]

    def all_delivered():
        status, log = client.call("GET", f"/api/v1/webhook-endpoints/{endpoint['id']}/messages/")
        assert status == 200, json.dumps(log)[:500]
        return log["count"] >= 3 and {m["state"] for m in log["results"]} == {"delivered"}

    wait_for(all_delivered, timeout=30, message="the delivery log to show every message delivered")
