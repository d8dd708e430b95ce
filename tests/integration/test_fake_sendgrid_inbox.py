"""The fake SendGrid's inbox pages, read over HTTP as a developer's browser would: the filtered
list, a message's page (sandboxed body, recipients, webhook events), the JSON of one message."""

import json
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sender.fake_sendgrid import FakeSendGrid, Faults, parse_keys, serve
from tests.broker import free_port, wait_for

HOSTILE_BODY = '<p class="x">Hi</p>"><script>alert(1)</script></iframe><b>after</b>'


def send(
    url,
    *,
    to=("ann@example.com",),
    subject="Hello",
    html_body="<p>Hi</p>",
    text_body=None,
    custom_args=None,
    reply_to=None,
) -> str:
    body = {
        "personalizations": [{"to": [{"email": r}], "custom_args": {"recipient": r}} for r in to],
        "from": {"email": "no-reply@example.com", "name": "Example"},
        "subject": subject,
        "content": ([{"type": "text/plain", "value": text_body}] if text_body else [])
        + [{"type": "text/html", "value": html_body}],
    }
    if custom_args:
        body["custom_args"] = custom_args
    if reply_to:
        body["reply_to"] = {"email": reply_to}
    request = urllib.request.Request(
        f"{url}/v3/mail/send",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer SG.fake-key", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
        return response.headers["X-Message-Id"]


def get(url) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


class Page(HTMLParser):
    """What a browser would build: elements with their (unescaped) attributes, the text of each
    table row by table id, and the links."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table = None
        self._cells: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._cells = []
            self.rows[self._table].append(self._cells)
        elif tag in ("td", "th") and self._cells is not None:
            self._cells.append("")
        elif tag == "a":
            self.links.append(attributes.get("href"))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table, self._cells = None, None

    def handle_data(self, data):
        if self._cells:
            self._cells[-1] += data

    def tags(self, name: str) -> list[dict]:
        return [attributes for tag, attributes in self.elements if tag == name]

    def body_rows(self, table: str) -> list[list[str]]:
        return self.rows.get(table, [])[1:]  # without the header row


def inbox_ids(url, query="") -> list[str]:
    status, _, text = get(f"{url}/{query}")
    assert status == 200
    return [row[-1] for row in Page(text).body_rows("messages")]


def test_the_inbox_filters_by_recipient_and_subject_newest_first(fake_sendgrid):
    fake, url = fake_sendgrid
    welcome_ann = send(url, to=["Ann@Example.com"], subject="Welcome aboard")
    receipt_ann = send(url, to=["ann@example.com", "bob@example.org"], subject="Your receipt")
    welcome_bob = send(url, to=["bob@example.org"], subject="WELCOME back")
    joanne = send(url, to=["joanne@example.net"], subject="Welcome")

    assert inbox_ids(url) == [joanne, welcome_bob, receipt_ann, welcome_ann]
    # Recipient: any part of an address, ignoring case; "ann@" is not part of "joanne@", "ann" is.
    assert inbox_ids(url, "?to=ANN@example.com") == [receipt_ann, welcome_ann]
    assert inbox_ids(url, "?to=ann@") == [receipt_ann, welcome_ann]
    assert inbox_ids(url, "?to=ann") == [joanne, receipt_ann, welcome_ann]
    assert inbox_ids(url, "?to=example.org") == [welcome_bob, receipt_ann]
    # Subject: any part, ignoring case; both filters together narrow further.
    assert inbox_ids(url, "?subject=welcome") == [joanne, welcome_bob, welcome_ann]
    assert inbox_ids(url, "?to=ann%40example.com&subject=Welcome") == [welcome_ann]
    assert inbox_ids(url, "?to=nobody@example.com") == []

    status, _, text = get(f"{url}/?subject=welcome&limit=2")
    page = Page(text)
    assert [row[-1] for row in page.body_rows("messages")] == [joanne, welcome_bob]
    assert "3 of 4 stored messages match; showing the newest 2" in text
    # Each row links to its message page, and the form keeps what was asked.
    assert f"/messages/{joanne}" in page.links and f"/messages/{welcome_bob}" in page.links
    inputs = {attributes["name"]: attributes.get("value") for attributes in page.tags("input")}
    assert inputs["subject"] == "welcome" and inputs["limit"] == "2"
    assert not any(attributes.get("http-equiv") == "refresh" for attributes in page.tags("meta"))
    refreshing = Page(get(f"{url}/?refresh=5")[2])
    assert any(attributes.get("http-equiv") == "refresh" for attributes in refreshing.tags("meta"))


def test_the_message_page_sandboxes_the_body_and_escapes_every_value(fake_sendgrid):
    fake, url = fake_sendgrid
    message_id = send(
        url,
        to=["ann@example.com"],
        subject="<script>alert('subject')</script>",
        html_body=HOSTILE_BODY,
        text_body="Plain <text> & more",
        reply_to="help@example.com",
    )

    status, headers, text = get(f"{url}/messages/{message_id}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = Page(text)
    [iframe] = page.tags("iframe")
    assert iframe.get("sandbox", "missing") in ("", None)  # present and empty: no scripts, an opaque origin
    assert iframe["srcdoc"] == HOSTILE_BODY  # the whole body stayed inside the attribute
    assert page.tags("script") == []  # neither the subject nor the body became markup
    assert [tag for tag, _ in page.elements if tag == "b"] == []  # "after" did not escape the iframe
    assert "&lt;script&gt;alert(&#x27;subject&#x27;)&lt;/script&gt;" in text
    headers_table = {row[0]: row[1] for row in page.rows["headers"]}
    assert headers_table["From"] == "Example <no-reply@example.com>"
    assert headers_table["Reply-To"] == "help@example.com"
    assert headers_table["Subject"] == "<script>alert('subject')</script>"
    assert headers_table["Message id"] == message_id and headers_table["Received"]
    # The text/plain block and the source of the HTML, both as text.
    assert "Plain &lt;text&gt; &amp; more" in text
    assert "&lt;/iframe&gt;&lt;b&gt;after&lt;/b&gt;" in text


def test_the_message_page_lists_recipients_with_their_custom_args(fake_sendgrid):
    fake, url = fake_sendgrid
    message_id = send(
        url, to=["ann@example.com", "bob@example.org"], custom_args={"email_id": "42", "note": "<b>bold</b>"}
    )

    page = Page(get(f"{url}/messages/{message_id}")[2])
    recipients = {row[0]: row[1] for row in page.body_rows("recipients")}
    assert set(recipients) == {"ann@example.com", "bob@example.org"}
    for address, args in recipients.items():
        assert "email_id = 42" in args and f"recipient = {address}" in args
        assert "note = <b>bold</b>" in args  # shown as text (the parser unescaped it), not markup
    assert page.tags("b") == []
    assert "No Event Webhook configured" in get(f"{url}/messages/{message_id}")[2]


def test_an_unknown_message_is_404_and_every_page_forbids_scripts(fake_sendgrid):
    fake, url = fake_sendgrid
    message_id = send(url)

    status, headers, text = get(f"{url}/messages/no-such-id")
    assert status == 404 and headers["Content-Type"].startswith("text/html") and "no-such-id" in text
    status, _, text = get(f"{url}/messages/%3Cscript%3E")
    assert status == 404 and "&lt;script&gt;" in text and "<script>" not in text
    status, _, body = get(f"{url}/_messages/no-such-id")
    assert status == 404 and json.loads(body)["errors"][0]["message"] == "message not found"

    for path in ("/", "/?to=ann", f"/messages/{message_id}", "/messages/no-such-id"):
        csp = get(f"{url}{path}")[1]["Content-Security-Policy"]
        directives = dict((part.strip().split(" ", 1) + [""])[:2] for part in csp.split(";"))
        assert directives["script-src"] == "'none'", path
        assert directives["default-src"] == "'none'", path


def test_one_message_as_json_beside_the_unchanged_list(fake_sendgrid):
    fake, url = fake_sendgrid
    first = send(url, to=["ann@example.com"], subject="One")
    second = send(url, to=["bob@example.org"], subject="Two")

    status, _, body = get(f"{url}/_messages/{second}")
    message = json.loads(body)
    assert status == 200 and message["message_id"] == second and message["subject"] == "Two"
    assert message["recipients"] == [
        {
            "email": "bob@example.org",
            "custom_args": {"recipient": "bob@example.org"},
            "sends_at": message["received_at"],  # no send_at: it leaves at once
        }
    ]
    assert message["send_at"] is None and message["webhook_events"] == []
    listed = json.loads(get(f"{url}/_messages")[2])
    assert [m["message_id"] for m in listed] == [first, second] and "webhook_events" not in listed[0]


def test_the_store_limit_drops_old_messages_from_every_page():
    fake = FakeSendGrid(keys=parse_keys("SG.fake-key:mail.send"), faults=Faults(), store_limit=2)
    server = serve(fake, host="127.0.0.1", port=free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        dropped, kept, newest = send(url), send(url), send(url)
        assert inbox_ids(url) == [newest, kept]
        assert get(f"{url}/messages/{dropped}")[0] == 404
        assert get(f"{url}/messages/{kept}")[0] == 200
        assert get(f"{url}/_messages/{dropped}")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


class Receiver:
    """A webhook endpoint that records the events posted to it; `status` is what it answers, and
    it answers only once `open` is set (so a test can hold posts in flight)."""

    def __init__(self):
        self.events: list[dict] = []
        self.status = 200
        self.open = threading.Event()
        self.open.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.open.wait(timeout=10)
                if receiver.status == 200:
                    receiver.events.extend(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def fake_with_webhook():
    """A fake SendGrid posting its events to a local Receiver. Yields (fake, url, receiver)."""
    receiver = Receiver()
    fake = FakeSendGrid(
        keys=parse_keys("SG.fake-key:mail.send"), faults=Faults(bounce_pattern="^bounce"), webhook_url=receiver.url
    )
    server = serve(fake, host="127.0.0.1", port=free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}", receiver
    receiver.open.set()
    server.shutdown()
    server.server_close()
    receiver.server.shutdown()
    receiver.server.server_close()


def events_table(url, message_id) -> list[tuple[str, str, str]]:
    """(recipient, event, post state) for each row of the message page's events table."""
    return [(row[0], row[1], row[4]) for row in Page(get(f"{url}/messages/{message_id}")[2]).body_rows("events")]


def events_in_state(url, message_id, state: str):
    """The events table once every row's post state starts with `state`, else None."""
    rows = events_table(url, message_id)
    return rows if rows and all(post.startswith(state) for _, _, post in rows) else None


def test_the_message_page_shows_its_webhook_events_once_posted(fake_with_webhook):
    fake, url, receiver = fake_with_webhook
    receiver.open.clear()  # the post stays in flight until the endpoint answers
    message_id = send(url, to=["ann@example.com", "bounce@example.com"])

    pending = events_table(url, message_id)
    assert len(pending) == 4 and {post for _, _, post in pending} == {"pending"}
    receiver.open.set()
    rows = wait_for(
        lambda: events_in_state(url, message_id, "posted"), timeout=5, message="the message's events to be posted"
    )
    assert {(recipient, event) for recipient, event, _ in rows} == {
        ("ann@example.com", "processed"),
        ("ann@example.com", "delivered"),
        ("bounce@example.com", "processed"),
        ("bounce@example.com", "bounce"),
    }
    posted = {(e["email"], e["event"]) for e in receiver.events if e["sg_message_id"].startswith(message_id)}
    assert posted == {(recipient, event) for recipient, event, _ in rows}
    assert "550 5.1.1" in get(f"{url}/messages/{message_id}")[2]  # the bounce's reason
    events = json.loads(get(f"{url}/_messages/{message_id}")[2])["webhook_events"]
    assert {e["state"] for e in events} == {"posted"} and all(e["attempts"] == 1 for e in events)


def test_failed_webhook_posts_show_as_failed_then_posted_when_the_endpoint_recovers(fake_with_webhook):
    fake, url, receiver = fake_with_webhook
    receiver.status = 500
    message_id = send(url, to=["ann@example.com"])

    rows = wait_for(lambda: events_in_state(url, message_id, "failed"), timeout=5, message="the failed post to show")
    assert all("HTTP Error 500" in post and "retrying" in post for _, _, post in rows)
    assert receiver.events == []

    receiver.status = 200
    wait_for(lambda: events_in_state(url, message_id, "posted"), timeout=5, message="the retried post to succeed")
    events = json.loads(get(f"{url}/_messages/{message_id}")[2])["webhook_events"]
    assert {e["state"] for e in events} == {"posted"} and all(e["attempts"] >= 2 for e in events)
    assert {(e["email"], e["event"]) for e in receiver.events} == {
        ("ann@example.com", "processed"),
        ("ann@example.com", "delivered"),
    }
