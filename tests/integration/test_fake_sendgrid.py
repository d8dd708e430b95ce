"""The fake SendGrid, checked against SendGrid's own OpenAPI description of Mail Send and
through the official client."""

import base64
import json
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml
from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook

from sender.fake_sendgrid import validate

SPEC = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "sendgrid" / "tsg_mail_v3.yaml"


@pytest.fixture(scope="module")
def mail_send_schema():
    spec = yaml.safe_load(SPEC.read_text())
    body = spec["paths"]["/v3/mail/send"]["post"]["requestBody"]
    if "$ref" in body:
        body = spec["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[-1]]
    schema = body["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def mail(recipients=("ann@example.com",), **changes):
    body = {
        "personalizations": [{"to": [{"email": r}], "custom_args": {"recipient": r}} for r in recipients],
        "from": {"email": "no-reply@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/html", "value": "<p>Hi</p>"}],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def spec_accepts(schema, body) -> bool:
    try:
        jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())
        return True
    except jsonschema.ValidationError:
        return False


@pytest.mark.parametrize(
    "body, accepted",
    [
        (mail(), True),
        (mail(recipients=[f"r{i}@example.com" for i in range(1000)]), True),
        (mail(recipients=[f"r{i}@example.com" for i in range(1001)]), False),  # > 1,000 personalizations
        (mail(personalizations=None), False),
        (mail(**{"from": None}), False),
        (mail(**{"from": {"name": "no address"}}), False),
        (mail(personalizations=[{"cc": [{"email": "a@example.com"}]}]), False),  # no `to`
        (mail(personalizations=[{"to": [{"name": "no address"}]}]), False),
    ],
)
def test_the_fake_refuses_what_the_official_schema_refuses(mail_send_schema, body, accepted):
    assert spec_accepts(mail_send_schema, body) is accepted
    assert (validate(body) == []) is accepted


@pytest.mark.parametrize(
    "body, field",
    [
        # SendGrid's rules beyond the schema (which has no minItems on personalizations).
        (mail(personalizations=[]), "personalizations"),
        (mail(subject=None), "subject"),
        (mail(content=None), "content"),
        (mail(content=[{"type": "text/html", "value": ""}]), "content.0"),
        (mail(personalizations=[{"to": [{"email": "a@example.com"}, {"email": "A@example.com"}]}]),
         "personalizations.0.to.1.email"),
        (mail(personalizations=[{"to": [{"email": f"r{i}@example.com"} for i in range(600)],
                                 "cc": [{"email": f"c{i}@example.com"} for i in range(401)]}]), "personalizations"),
        (mail(personalizations=[{"to": [{"email": "a@example.com"}], "custom_args": {"n": 1}}]),
         "personalizations.0.custom_args"),
    ],
)
def test_the_fake_applies_sendgrids_other_rules(body, field):
    assert field in [error["field"] for error in validate(body)]


def test_what_the_sender_builds_satisfies_the_official_schema(mail_send_schema):
    from sender.provider import build_mail
    from tests.conftest import golden
    from core.contracts import EmailRequested

    event = EmailRequested.from_dict(golden("email.requested", 1))
    body = build_mail(event, list(event.recipients)).get()
    assert spec_accepts(mail_send_schema, body)
    assert validate(body) == []
    assert sorted(p["to"][0]["email"] for p in body["personalizations"]) == sorted(event.recipients)
    assert all(len(p["to"]) == 1 for p in body["personalizations"])  # nobody sees anybody else


def client(url, key="SG.fake-key"):
    return SendGridAPIClient(api_key=key, host=url)


def test_the_official_client_gets_202_and_a_message_id(fake_sendgrid):
    fake, url = fake_sendgrid
    response = client(url).client.mail.send.post(request_body=mail(["ann@example.com", "bob@example.org"]))
    assert response.status_code == 202 and response.body == b""
    message_id = response.headers["X-Message-Id"]
    listed = json.loads(urllib.request.urlopen(f"{url}/_messages?to=bob@example.org").read())
    assert [m["message_id"] for m in listed] == [message_id]
    assert listed[0]["recipients"][1]["custom_args"] == {"recipient": "bob@example.org"}
    inbox = urllib.request.urlopen(f"{url}/").read().decode()
    assert "Fake SendGrid inbox" in inbox and message_id in inbox


@pytest.mark.parametrize("key, status", [("SG.wrong", 401), ("SG.read-only", 403)])
def test_keys_are_checked(fake_sendgrid, key, status):
    fake, url = fake_sendgrid
    with pytest.raises(http_errors.HTTPError) as error:
        client(url, key).client.mail.send.post(request_body=mail())
    assert error.value.status_code == status
    assert json.loads(error.value.body)["errors"][0]["message"]
    assert fake.stats["messages"] == 0


def test_a_bad_body_gets_sendgrid_error_bodies(fake_sendgrid):
    fake, url = fake_sendgrid
    with pytest.raises(http_errors.BadRequestsError) as error:
        client(url).client.mail.send.post(request_body=mail(subject=None, content=None))
    fields = {e["field"] for e in json.loads(error.value.body)["errors"]}
    assert fields == {"subject", "content"}


def test_scripted_faults_then_success(fake_sendgrid):
    fake, url = fake_sendgrid
    fake.faults.update({"script": [429, 500], "retry_after": 7})
    with pytest.raises(http_errors.TooManyRequestsError) as error:
        client(url).client.mail.send.post(request_body=mail())
    assert error.value.headers["Retry-After"] == "7"
    assert int(error.value.headers["X-RateLimit-Reset"]) >= time.time() + 6
    with pytest.raises(http_errors.InternalServerError):
        client(url).client.mail.send.post(request_body=mail())
    assert client(url).client.mail.send.post(request_body=mail()).status_code == 202


def test_faults_change_at_runtime_over_http(fake_sendgrid):
    fake, url = fake_sendgrid
    request = urllib.request.Request(f"{url}/_faults", data=json.dumps({"latency_ms": 150}).encode(), method="PUT")
    assert json.loads(urllib.request.urlopen(request).read())["latency_ms"] == 150
    started = time.monotonic()
    client(url).client.mail.send.post(request_body=mail())
    assert time.monotonic() - started >= 0.15
    bad = urllib.request.Request(f"{url}/_faults", data=b'{"nope": 1}', method="PUT")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(bad)
    assert error.value.code == 400


def test_address_rules_reject_and_unverified_sender(fake_sendgrid):
    fake, url = fake_sendgrid
    fake.faults.update({"reject_pattern": r"^reject-", "verified_senders": ["verified@example.com"]})
    with pytest.raises(http_errors.BadRequestsError) as error:
        client(url).client.mail.send.post(request_body=mail(["ok@example.com", "reject-me@example.com"],
                                                             **{"from": {"email": "verified@example.com"}}))
    assert json.loads(error.value.body)["errors"][0]["field"] == "personalizations.1.to.0.email"
    with pytest.raises(http_errors.ForbiddenError) as error:
        client(url).client.mail.send.post(request_body=mail())
    assert "verified Sender Identity" in json.loads(error.value.body)["errors"][0]["message"]


def test_a_timeout_fault_outlasts_the_client_and_still_accepts(fake_sendgrid):
    fake, url = fake_sendgrid
    fake.faults.update({"script": ["timeout"], "timeout_seconds": 1.0})
    api = client(url)
    api.client.timeout = 0.3
    with pytest.raises(Exception) as error:
        api.client.mail.send.post(request_body=mail())
    assert "timed out" in str(error.value).lower()
    time.sleep(1.0)
    assert fake.stats["messages"] == 1  # SendGrid may take what the caller gave up on


def test_signed_event_webhook_posts(fake_sendgrid):
    """With a webhook URL the fake posts processed/delivered/bounce events, signed so that the
    sendgrid library's EventWebhook helper verifies them."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sender.fake_sendgrid import FakeSendGrid, Faults, parse_keys, serve
    from tests.broker import free_port

    posts = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            posts.append((body, self.headers["X-Twilio-Email-Event-Webhook-Signature"],
                          self.headers["X-Twilio-Email-Event-Webhook-Timestamp"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    fake = FakeSendGrid(keys=parse_keys("SG.fake-key:mail.send"), faults=Faults(bounce_pattern="^bounce"),
                        webhook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    server = serve(fake, host="127.0.0.1", port=free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client(url).client.mail.send.post(request_body=mail(["ann@example.com", "bounce@example.com"]))
        deadline = time.monotonic() + 5
        while not posts and time.monotonic() < deadline:
            time.sleep(0.05)
        body, signature, timestamp = posts[0]
        public_key = json.loads(urllib.request.urlopen(f"{url}/_webhook_public_key").read())["public_key"]
        verifier = EventWebhook(public_key)
        assert verifier.verify_signature(body, signature, timestamp)
        assert not verifier.verify_signature(body.replace("ann", "eve"), signature, timestamp)
        events = {(e["email"], e["event"]) for e in json.loads(body)}
        assert events == {("ann@example.com", "processed"), ("ann@example.com", "delivered"),
                          ("bounce@example.com", "processed"), ("bounce@example.com", "bounce")}
        assert all(e["recipient"] == e["email"] and e["sg_message_id"] for e in json.loads(body))
        base64.b64decode(public_key)
    finally:
        server.shutdown()
        receiver.shutdown()
