"""The fake SendGrid, checked against SendGrid's documented Mail Send rules (written below, apart
from the fake's own checks, so that the two can disagree) and through the official client."""

import base64
import collections
import json
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook

from sender.fake_sendgrid import validate

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CC_OR_BCC = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255


def is_address(value) -> bool:
    """SendGrid Mail Send documents every `email` as a string of format `email`: read plainly here
    as one `@` between a non-empty local part and a dotted domain, without spaces."""
    if not isinstance(value, str) or value.count("@") != 1 or any(c.isspace() for c in value):
        return False
    local, domain = value.split("@")
    return bool(local) and all(domain.split(".")) and "." in domain


def is_address_object(value) -> bool:
    """SendGrid Mail Send documents the from, reply_to, to, cc and bcc objects as requiring
    `email` and allowing a string `name`."""
    return isinstance(value, dict) and is_address(value.get("email")) and isinstance(value.get("name", ""), str)


def are_custom_args(value) -> bool:
    """SendGrid Mail Send documents custom_args as values carried along with the email, each
    assumed to be a string, and their total size as at most 10,000 bytes."""
    return (
        isinstance(value, dict)
        and all(isinstance(v, str) for v in value.values())
        and len(json.dumps(value).encode()) <= MAX_CUSTOM_ARGS_BYTES
    )


def is_timestamp(value) -> bool:
    """SendGrid Mail Send documents send_at, on the request or a personalization, as a unix
    timestamp (an integer), and that a send cannot be scheduled more than 72 hours in advance."""
    return isinstance(value, int) and not isinstance(value, bool) and value <= time.time() + 72 * 3600


def documented_violations(body) -> set[str]:
    """The names of SendGrid's documented Mail Send rules that `body` breaks; empty when it keeps
    them all. Written from SendGrid's documentation alone, never from sender.fake_sendgrid."""
    if not isinstance(body, dict):
        return {"body"}
    broken = set()
    uses_template = "template_id" in body

    # SendGrid Mail Send documents `personalizations` as required: an array of at most 1,000
    # envelopes, and "must have at least one personalization".
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= MAX_PERSONALIZATIONS:
        broken.add("personalizations")
        personalizations = personalizations if isinstance(personalizations, list) else []
    total = 0
    for item in personalizations:
        if not isinstance(item, dict):
            broken.add("personalizations")
            continue
        # SendGrid Mail Send documents `to` as required in every personalization, with at least
        # one address object in it.
        if not isinstance(item.get("to"), list) or not item["to"]:
            broken.add("to")
        # SendGrid Mail Send documents cc and bcc as arrays of at most 1,000 address objects.
        for kind in ("cc", "bcc"):
            if kind in item and (not isinstance(item[kind], list) or len(item[kind]) > MAX_CC_OR_BCC):
                broken.add(kind)
        seen = set()
        for kind in ("to", "cc", "bcc"):
            entries = item.get(kind) if isinstance(item.get(kind), list) else []
            for entry in entries:
                if not is_address_object(entry):
                    broken.add("address")
                    continue
                total += 1
                # SendGrid Mail Send documents that each address in a personalization must be
                # unique between to, cc and bcc (mail systems compare addresses without case).
                if entry["email"].casefold() in seen:
                    broken.add("unique")
                seen.add(entry["email"].casefold())
        if "from" in item and not is_address_object(item["from"]):
            broken.add("from")
        # SendGrid Mail Send documents a personalization's subject as a string of at least one
        # character, and its custom_args as strings of at most 10,000 bytes in all.
        if "subject" in item and not (isinstance(item["subject"], str) and item["subject"]):
            broken.add("subject")
        if "custom_args" in item and not are_custom_args(item["custom_args"]):
            broken.add("custom_args")
        if "send_at" in item and not is_timestamp(item["send_at"]):
            broken.add("send_at")
    # SendGrid Mail Send documents at most 1,000 recipients in one request, counting to, cc and
    # bcc across every personalization.
    if total > MAX_RECIPIENTS:
        broken.add("recipients")

    # SendGrid Mail Send documents `from` as required: an object with an `email`.
    if not is_address_object(body.get("from")):
        broken.add("from")
    # SendGrid Mail Send documents reply_to as one address object and reply_to_list as an array
    # of them, and that a request uses one or the other, not both.
    if "reply_to" in body and not is_address_object(body["reply_to"]):
        broken.add("reply_to")
    if "reply_to_list" in body:
        reply_to_list = body["reply_to_list"]
        if "reply_to" in body or not isinstance(reply_to_list, list) or not all(map(is_address_object, reply_to_list)):
            broken.add("reply_to")

    # SendGrid Mail Send documents the subject as required unless a template supplies it or
    # every personalization has its own, and a subject as at least one character long.
    subject = body.get("subject")
    if "subject" in body and not (isinstance(subject, str) and subject):
        broken.add("subject")
    every_personalization_has_one = bool(personalizations) and all(
        isinstance(p, dict) and isinstance(p.get("subject"), str) and p["subject"] for p in personalizations
    )
    if not uses_template and not subject and not every_personalization_has_one:
        broken.add("subject")

    # SendGrid Mail Send documents content as required unless a template is used, with at least
    # one MIME type, each block a `type` and a `value` of at least one character.
    content = body.get("content")
    if (content is not None or not uses_template) and (
        not isinstance(content, list)
        or not content
        or not all(
            isinstance(block, dict) and all(isinstance(block.get(k), str) and block[k] for k in ("type", "value"))
            for block in content
        )
    ):
        broken.add("content")

    # SendGrid Mail Send documents the request's custom_args as values carried along with the
    # whole send, overridden by a personalization's; its OpenAPI description types them as one
    # string, while its documentation and official libraries send an object of strings: the
    # object is what is checked here.
    if "custom_args" in body and not are_custom_args(body["custom_args"]):
        broken.add("custom_args")
    # SendGrid Mail Send documents at most 10 unique categories of at most 255 characters each.
    categories = body.get("categories", [])
    if not (
        isinstance(categories, list)
        and len(categories) <= MAX_CATEGORIES
        and all(isinstance(c, str) and len(c) <= MAX_CATEGORY_LENGTH for c in categories)
        and len(set(categories)) == len(categories)
    ):
        broken.add("categories")
    if "send_at" in body and not is_timestamp(body["send_at"]):
        broken.add("send_at")
    return broken


def mail(recipients=("ann@example.com",), **changes):
    body = {
        "personalizations": [{"to": [{"email": r}], "custom_args": {"recipient": r}} for r in recipients],
        "from": {"email": "no-reply@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/html", "value": "<p>Hi</p>"}],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def to(*addresses, **more):
    return {"to": [{"email": a} for a in addresses], **more}


MANY = [f"r{i}@example.com" for i in range(1001)]


@pytest.mark.parametrize(
    "body, broken",
    [
        # Accepted: no documented rule broken.
        (mail(), None),
        (mail(recipients=MANY[:1000]), None),
        (
            mail(
                personalizations=[
                    to(
                        "ann@example.com",
                        cc=[{"email": "bob@example.org", "name": "Bob"}],
                        bcc=[{"email": "carl@example.net"}],
                    )
                ]
            ),
            None,
        ),
        (
            mail(
                subject=None,
                personalizations=[to("ann@example.com", subject="Hi Ann"), to("bob@example.org", subject="Hi Bob")],
            ),
            None,
        ),
        (mail(subject=None, content=None, template_id="d-0123456789abcdef"), None),
        (mail(content=[{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}]), None),
        (mail(custom_args={"campaign": "spring"}), None),
        (mail(reply_to={"email": "owner@example.com", "name": "Owner"}), None),
        # Refused, each for the documented rule named.
        (mail(personalizations=None), "personalizations"),
        (mail(personalizations=[]), "personalizations"),
        (mail(personalizations={"to": [{"email": "ann@example.com"}]}), "personalizations"),
        (mail(recipients=MANY), {"personalizations", "recipients"}),  # 1,001 envelopes hold 1,001 recipients
        (mail(personalizations=[{"cc": [{"email": "a@example.com"}]}]), "to"),
        (mail(personalizations=[to()]), "to"),
        (mail(personalizations=[{"to": [{"name": "no address"}]}]), "address"),
        (mail(personalizations=[to("not-an-address")]), "address"),
        (mail(personalizations=[to("ann@example.com", bcc=[{"email": "ann at example.com"}])]), "address"),
        (mail(personalizations=[to(*MANY[:600], cc=[{"email": a} for a in MANY[600:]])]), "recipients"),
        (mail(personalizations=[to("ann@example.com"), to(*MANY[1:1001])]), "recipients"),
        (mail(personalizations=[to("ann@example.com", "Ann@Example.com")]), "unique"),
        (mail(personalizations=[to("ann@example.com", bcc=[{"email": "ann@example.com"}])]), "unique"),
        (mail(personalizations=[to("ann@example.com", cc=[{"email": a} for a in MANY])]), {"cc", "recipients"}),
        (mail(**{"from": None}), "from"),
        (mail(**{"from": {"name": "no address"}}), "from"),
        (mail(**{"from": {"email": "no-reply"}}), "from"),
        (mail(subject=None), "subject"),
        (mail(subject=""), "subject"),
        (
            mail(subject=None, personalizations=[to("ann@example.com", subject="Hi Ann"), to("bob@example.org")]),
            "subject",
        ),
        (mail(content=None), "content"),
        (mail(content=[]), "content"),
        (mail(content=[{"type": "text/html", "value": ""}]), "content"),
        (mail(content=[{"value": "<p>Hi</p>"}]), "content"),
        (mail(personalizations=[to("ann@example.com", custom_args={"n": 1})]), "custom_args"),
        (mail(custom_args={"n": 1}), "custom_args"),
    ],
)
def test_the_fake_refuses_what_sendgrid_documents_it_refuses(body, broken):
    expected = {broken} if isinstance(broken, str) else set(broken or ())
    assert documented_violations(body) == expected
    assert (validate(body) == []) is (broken is None)


@pytest.mark.parametrize(
    "body, broken",
    [
        (mail(reply_to={"name": "no address"}), "reply_to"),
        (mail(categories=[f"c{i}" for i in range(11)]), "categories"),
        (mail(send_at="tomorrow"), "send_at"),
        (mail(send_at=int(time.time()) + 73 * 3600), "send_at"),  # more than 72 hours ahead
        (
            mail(personalizations=[to("ann@example.com", custom_args={"big": "x" * MAX_CUSTOM_ARGS_BYTES})]),
            "custom_args",
        ),
    ],
)
def test_the_fake_refuses_what_sendgrid_documents_beyond_the_basics(body, broken):
    assert documented_violations(body) == {broken}
    assert validate(body) != []


@pytest.mark.parametrize(
    "body, field",
    [
        (mail(personalizations=[]), "personalizations"),
        (mail(subject=None), "subject"),
        (mail(content=None), "content"),
        (mail(content=[{"type": "text/html", "value": ""}]), "content.0"),
        (
            mail(personalizations=[{"to": [{"email": "a@example.com"}, {"email": "A@example.com"}]}]),
            "personalizations.0.to.1.email",
        ),
        (
            mail(
                personalizations=[
                    {
                        "to": [{"email": f"r{i}@example.com"} for i in range(600)],
                        "cc": [{"email": f"c{i}@example.com"} for i in range(401)],
                    }
                ]
            ),
            "personalizations",
        ),
        (
            mail(personalizations=[{"to": [{"email": "a@example.com"}], "custom_args": {"n": 1}}]),
            "personalizations.0.custom_args",
        ),
    ],
)
def test_the_fake_applies_sendgrids_other_rules(body, field):
    assert field in [error["field"] for error in validate(body)]


def test_what_the_sender_builds_keeps_sendgrids_documented_rules():
    from core.contracts import EmailRequested
    from sender.provider import MAX_RECIPIENTS_PER_CALL, build_mail, mail_body
    from tests.conftest import golden

    event = EmailRequested.from_dict(golden("email.requested", 1))
    body = mail_body(event, list(event.recipients))  # what the sender posts
    assert body == build_mail(event, list(event.recipients)).get()
    assert documented_violations(body) == set()
    assert validate(body) == []
    assert sorted(p["to"][0]["email"] for p in body["personalizations"]) == sorted(event.recipients)
    assert all(len(p["to"]) == 1 for p in body["personalizations"])  # nobody sees anybody else
    assert body["reply_to"] == {"email": event.reply_to}
    full = mail_body(event, MANY[:MAX_RECIPIENTS_PER_CALL])  # the sender's largest call
    assert documented_violations(full) == set() and validate(full) == []


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
        client(url).client.mail.send.post(
            request_body=mail(
                ["ok@example.com", "reject-me@example.com"], **{"from": {"email": "verified@example.com"}}
            )
        )
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
            posts.append(
                (
                    body,
                    self.headers["X-Twilio-Email-Event-Webhook-Signature"],
                    self.headers["X-Twilio-Email-Event-Webhook-Timestamp"],
                )
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    fake = FakeSendGrid(
        keys=parse_keys("SG.fake-key:mail.send"),
        faults=Faults(bounce_pattern="^bounce"),
        webhook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
    )
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
        assert events == {
            ("ann@example.com", "processed"),
            ("ann@example.com", "delivered"),
            ("bounce@example.com", "processed"),
            ("bounce@example.com", "bounce"),
        }
        assert all(e["recipient"] == e["email"] and e["sg_message_id"] for e in json.loads(body))
        base64.b64decode(public_key)
    finally:
        server.shutdown()
        receiver.shutdown()


BURST = 400  # new connections opened at once


def test_a_burst_of_new_connections_is_queued_none_reset(fake_sendgrid):
    """A client that opens a new connection per email (django-anymail's backend under Celery does,
    hundreds a second) must never see a reset: every one of a burst of BURST connections, all
    opened at once, gets its 202. The listen backlog is what holds them until they are accepted
    (the default, 5, is set before the server can change it)."""
    fake, url = fake_sendgrid
    fake.faults.update({"latency_ms": 50})  # each answer takes a while, as SendGrid's would
    host, port = url.removeprefix("http://").split(":")
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
    assert int(listening.stdout.split()[2]) >= BURST  # Send-Q of a listening socket: its backlog

    body = json.dumps(mail()).encode()
    request = (
        f"POST /v3/mail/send HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer SG.fake-key\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    start = threading.Barrier(BURST)
    answers: list[str] = []

    def one() -> None:
        start.wait()
        try:
            with socket.create_connection((host, int(port)), timeout=30) as conn:
                conn.sendall(request)
                answers.append(conn.recv(64).decode(errors="replace").split("\r\n")[0])
        except OSError as error:  # a reset, a refusal, a timeout
            answers.append(repr(error))

    threads = [threading.Thread(target=one) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert collections.Counter(answers) == {"HTTP/1.1 202 Accepted": BURST}
    assert fake.stats["messages"] == BURST


def test_a_scheduled_message_is_held_with_its_events_until_send_at_and_clear_drops_them():
    from sender.fake_sendgrid import FakeSendGrid, Faults, parse_keys

    fake = FakeSendGrid(keys=parse_keys("SG.fake-key:mail.send"), faults=Faults())
    fake.webhook_url = "http://127.0.0.1:9/"  # events are queued, and no poster thread runs to take them
    later = int(time.time()) + 3600
    fake.accept(mail(personalizations=[to("ann@example.com", send_at=later)]))  # a personalization's
    fake.accept(mail(recipients=("bob@example.org",)))  # at once
    held, now = list(fake.messages)
    assert held["send_at"] == later and held["recipients"][0]["sends_at"] == later
    assert now["send_at"] is None and now["recipients"][0]["sends_at"] == now["received_at"]
    # Only the message sent at once has its events queued to post; the held one's wait for its time.
    assert {e["event"]["email"] for e in fake._webhook_events} == {"bob@example.org"}
    assert {e["event"]["email"] for e in fake._held_events} == {"ann@example.com"}
    assert {e["event"]["timestamp"] for e in fake._held_events} == {later}
    fake.clear()
    assert fake._held_events == []  # a cleared fake posts nothing for what it forgot
