"""A local stand-in for SendGrid's v3 Mail Send API, for development and tests.

    python -m sender.fake_sendgrid [--host 127.0.0.1] [--port 8025]

The official `sendgrid` client talks to it when given its URL as `host`. It answers like SendGrid:

    POST /v3/mail/send   202 with an empty body and X-Message-Id; 400 with SendGrid's error body
                         ({"errors": [{"message", "field", "help"}]}); 401 for an unknown key,
                         403 for a key without mail.send or an unverified from address, 413
    GET  /v3/scopes      the key's scopes (how a sender checks its key), 401 for an unknown key

and for people and tests:

    GET  /               an HTML inbox of the accepted messages, newest first, each row a link to
                         its page; ?to= keeps messages with a recipient whose address contains it,
                         ?subject= those whose subject contains it (both ignore case), ?limit= rows
                         shown (default 100, at most 1,000), ?refresh= reloads every n seconds
    GET  /messages/<id>  one message: from, reply-to, subject, received time, message id; the HTML
                         body in an iframe sandboxed with no permissions (its scripts never run and
                         it cannot reach the inbox), the text/plain body and the source of every
                         content block; the recipients with their custom args; the Event Webhook
                         events queued for it, each pending, posted or failed (and retried)
    GET  /_messages      accepted messages as JSON (?to= a recipient, exact and ignoring case;
                         ?subject= a part of it, case-sensitive; ?limit= the newest n); DELETE clears
                         them
    GET  /_messages/<id> one message as JSON, with its webhook events and their post state
    GET  /_stats         answers by status, messages and recipients accepted
    GET  /_faults        the fault settings; PUT /_faults changes them (JSON, merged)
    GET  /_webhook_public_key   the key that verifies its Event Webhook posts (SendGrid's format)

Faults (environment FAKE_SENDGRID_<NAME> at start, or PUT /_faults at runtime):
latency_ms, rate_429, rate_500, rate_timeout (0..1 shares), retry_after (seconds),
timeout_seconds, script (statuses for the next requests in turn, e.g. [429, 500, "timeout"]),
bounce_pattern and reject_pattern (regular expressions on recipient addresses: bounced later
through the webhook, or refused at once with 400), verified_senders (empty: any).

Keys: FAKE_SENDGRID_API_KEYS, comma-separated `key:scope scope`; default `SG.fake-key:mail.send`.
A message with `send_at` (on the request or a personalization) is held until then, as SendGrid
holds it: its record says when it leaves (`sends_at` on each recipient) and its events wait.
Event Webhook: with FAKE_SENDGRID_WEBHOOK_URL set it posts processed, then delivered or bounce
events for every accepted recipient (when it leaves), in batches, signed with ECDSA (P-256, SHA-256) as SendGrid
does; the private key comes from FAKE_SENDGRID_WEBHOOK_KEY_FILE (a PEM file, made there the first
time), FAKE_SENDGRID_WEBHOOK_PRIVATE_KEY (PEM) or is made at start.
A failed post is retried with the next batch until it succeeds.

It keeps the latest FAKE_SENDGRID_STORE_LIMIT messages (default 100,000) with their webhook events.
The HTML pages are served with a Content-Security-Policy that allows no scripts; they need none.
"""

from __future__ import annotations

import argparse
import base64
import collections
import html
import json
import os
import random
import re
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlparse

if TYPE_CHECKING:  # cryptography is imported only when the webhook is on
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_SEND_AT_AHEAD = 72 * 3600
MAX_CATEGORY_LENGTH = 255
INBOX_ROWS = 100
MAX_INBOX_ROWS = 1000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Faults:
    latency_ms: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    retry_after: int = 1
    timeout_seconds: float = 30.0
    script: list = field(default_factory=list)
    bounce_pattern: str = ""
    reject_pattern: str = ""
    verified_senders: list = field(default_factory=list)

    @classmethod
    def from_env(cls, env=os.environ) -> Faults:
        faults = cls()
        for name, value in asdict(faults).items():
            raw = env.get(f"FAKE_SENDGRID_{name.upper()}")
            if raw is None:
                continue
            if isinstance(value, list):
                setattr(faults, name, json.loads(raw) if raw.startswith("[") else [x for x in raw.split(",") if x])
            else:
                setattr(faults, name, type(value)(raw))
        return faults

    def update(self, changes: dict) -> None:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise ValueError(f"unknown fault setting {name!r}")
            current = getattr(self, name)
            setattr(self, name, list(value) if isinstance(current, list) else type(current)(value))


def parse_keys(raw: str) -> dict[str, set[str]]:
    keys = {}
    for item in raw.split(","):
        if item.strip():
            key, _, scopes = item.strip().partition(":")
            keys[key] = set(scopes.split())
    return keys


def validate(body) -> list[dict]:
    """SendGrid's checks of a mail send body; [] when it would be accepted."""
    errors: list[dict] = []

    def error(message, field_name):
        errors.append({"message": message, "field": field_name, "help": None})

    def check_custom_args(args, field_name):
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            error("Custom arguments must be strings.", field_name)
        elif len(json.dumps(args).encode()) > MAX_CUSTOM_ARGS_BYTES:
            error(f"Custom arguments may not exceed {MAX_CUSTOM_ARGS_BYTES} bytes.", field_name)

    if not isinstance(body, dict):
        error("Bad Request", None)
        return errors
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        error("The personalizations field is required and must have at least one personalization.", "personalizations")
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        error(
            f"You may not have more than {MAX_PERSONALIZATIONS} personalizations per API request.", "personalizations"
        )
    total = 0
    uses_template = bool(body.get("template_id"))
    global_subject = body.get("subject")
    for i, item in enumerate(personalizations):
        if not isinstance(item, dict):
            error("Each personalization must be an object.", f"personalizations.{i}")
            continue
        to = item.get("to")
        if not isinstance(to, list) or not to:
            error(
                "The to array is required for all personalization objects, and must have at least one "
                "email object with a valid email address.",
                f"personalizations.{i}.to",
            )
            to = []
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            entries = item.get(kind) or []
            if not isinstance(entries, list):
                error(f"The {kind} field must be an array.", f"personalizations.{i}.{kind}")
                continue
            for j, entry in enumerate(entries):
                address = entry.get("email") if isinstance(entry, dict) else None
                if not isinstance(address, str) or not _EMAIL.match(address):
                    error(
                        f"The {kind} email does not contain a valid address.", f"personalizations.{i}.{kind}.{j}.email"
                    )
                    continue
                total += 1
                if address.lower() in seen:
                    error(
                        "Each email address in the personalization block should be unique between to, cc, "
                        "and bcc. We found the first duplicate instance of [" + address + "] in the "
                        f"personalizations.{i}.{kind} field.",
                        f"personalizations.{i}.{kind}.{j}.email",
                    )
                seen.add(address.lower())
        subject = item.get("subject", global_subject)
        if not uses_template and (not isinstance(subject, str) or not subject):
            error(
                "The subject is required. You can get around this requirement if you use a template "
                "with a subject defined or if every personalization has a subject defined.",
                "subject",
            )
        check_custom_args(item.get("custom_args", {}), f"personalizations.{i}.custom_args")
        if "send_at" in item and not _is_timestamp(item["send_at"]):
            error("The send_at parameter must be a unix timestamp.", f"personalizations.{i}.send_at")
        elif "send_at" in item and item["send_at"] > time.time() + MAX_SEND_AT_AHEAD:
            error("A send cannot be scheduled more than 72 hours in advance.", f"personalizations.{i}.send_at")
    if total > MAX_RECIPIENTS:
        error(f"The total number of recipients must be no more than {MAX_RECIPIENTS}.", "personalizations")
    sender = body.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str) or not _EMAIL.match(sender["email"]):
        error(
            "The from object must be provided for every email send. It is an object that requires the "
            "email parameter, but may also contain a name parameter.",
            "from.email",
        )
    content = body.get("content")
    if not uses_template:
        if not isinstance(content, list) or not content:
            error(
                "Unless a valid template_id is provided, the content parameter is required. There must be "
                "at least one defined content block.",
                "content",
            )
        else:
            for k, block in enumerate(content):
                if not (
                    isinstance(block, dict)
                    and isinstance(block.get("type"), str)
                    and block["type"]
                    and isinstance(block.get("value"), str)
                    and block["value"]
                ):
                    error("Each content block needs a type and a non-empty value.", f"content.{k}")
    check_custom_args(body.get("custom_args", {}), "custom_args")
    if "reply_to" in body and not _is_address(body["reply_to"]):
        error("The reply_to email does not contain a valid address.", "reply_to.email")
    if "reply_to_list" in body:
        listed = body["reply_to_list"]
        if "reply_to" in body:
            error("The reply_to and reply_to_list fields may not both be used.", "reply_to_list")
        elif not isinstance(listed, list) or not all(map(_is_address, listed)):
            error("Each reply_to_list entry needs a valid email address.", "reply_to_list")
    categories = body.get("categories", [])
    if not (
        isinstance(categories, list)
        and len(categories) <= MAX_CATEGORIES
        and all(isinstance(c, str) and len(c) <= MAX_CATEGORY_LENGTH for c in categories)
        and len(set(categories)) == len(categories)
    ):
        error(
            f"At most {MAX_CATEGORIES} unique categories of at most {MAX_CATEGORY_LENGTH} characters each.",
            "categories",
        )
    if "send_at" in body and not _is_timestamp(body["send_at"]):
        error("The send_at parameter must be a unix timestamp.", "send_at")
    elif "send_at" in body and body["send_at"] > time.time() + MAX_SEND_AT_AHEAD:
        error("A send cannot be scheduled more than 72 hours in advance.", "send_at")
    return errors


def _is_address(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("email"), str) and bool(_EMAIL.match(value["email"]))


def _is_timestamp(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class FakeSendGrid:
    """The state behind the server: keys, faults, accepted messages, webhook queue.

    `messages` keeps the latest `store_limit` messages. `_by_id` indexes them, and `_events_by_id`
    keeps the webhook events queued for each (with their post state); both hold only messages the
    deque holds, and lose a message when the deque drops it, so memory stays bounded by the limit."""

    def __init__(
        self,
        *,
        keys: dict[str, set[str]],
        faults: Faults,
        store_limit: int = 100_000,
        webhook_url: str = "",
        webhook_private_key_pem: str = "",
    ):
        self.keys = keys
        self.faults = faults
        self.messages: collections.deque = collections.deque(maxlen=store_limit)
        self._by_id: dict[str, dict] = {}
        self._events_by_id: dict[str, list[dict]] = {}
        self.stats: collections.Counter = collections.Counter()
        self.lock = threading.RLock()
        self.webhook_url = webhook_url
        self._webhook_events: list[dict] = []
        self._held_events: list[dict] = []  # a scheduled message's, until its send_at
        self._private_key: EllipticCurvePrivateKey | None = None
        if webhook_url or webhook_private_key_pem:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            key = (
                serialization.load_pem_private_key(webhook_private_key_pem.encode(), password=None)
                if webhook_private_key_pem
                else ec.generate_private_key(ec.SECP256R1())
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError("The webhook private key is not an EC key: SendGrid signs with ECDSA.")
            self._private_key = key
        if webhook_url:
            threading.Thread(target=self._post_webhooks, name="webhook", daemon=True).start()

    # Decisions -------------------------------------------------------------------------------

    def next_fault(self) -> str | int | None:
        with self.lock:
            if self.faults.script:
                return self.faults.script.pop(0)
        roll = random.random()
        if roll < self.faults.rate_timeout:
            return "timeout"
        roll -= self.faults.rate_timeout
        if roll < self.faults.rate_429:
            return 429
        roll -= self.faults.rate_429
        if roll < self.faults.rate_500:
            return 500
        return None

    def accept(self, body: dict) -> str:
        message_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[:22]
        received_at = time.time()
        recipients = [
            {
                "email": entry["email"],
                "custom_args": {**body.get("custom_args", {}), **item.get("custom_args", {})},
                # A scheduled send is held until its `send_at` (a personalization's overrides the
                # request's); then it leaves, and its events follow.
                "sends_at": max(received_at, item.get("send_at", body.get("send_at", 0))),
            }
            for item in body["personalizations"]
            for entry in item["to"]
        ]
        record = {
            "message_id": message_id,
            "received_at": received_at,
            "send_at": body.get("send_at", body["personalizations"][0].get("send_at")),
            "from": body["from"],
            "reply_to": body.get("reply_to"),
            "subject": body.get("subject") or body["personalizations"][0].get("subject"),
            "content": body.get("content", []),
            "personalizations": body["personalizations"],
            "recipients": recipients,
        }
        with self.lock:
            self._store(record)
            self.stats["messages"] += 1
            self.stats["recipients"] += len(recipients)
            if self.webhook_url:
                self._queue_events(record)
        return message_id

    # Store ------------------------------------------------------------------------------------

    def _store(self, record: dict) -> None:
        """Append under the lock; the message the full deque drops leaves the indexes with it."""
        if self.messages.maxlen == 0:
            return
        if len(self.messages) == self.messages.maxlen:
            dropped = self.messages[0]["message_id"]
            self._by_id.pop(dropped, None)
            self._events_by_id.pop(dropped, None)
        self.messages.append(record)
        self._by_id[record["message_id"]] = record

    def clear(self) -> None:
        """Forget every message, its events' post state and the stats; queued posts still go out,
        held ones (a scheduled message's, before its send_at) do not."""
        with self.lock:
            self.messages.clear()
            self._held_events.clear()
            self._by_id.clear()
            self._events_by_id.clear()
            self.stats.clear()

    def message(self, message_id: str) -> dict | None:
        """A stored message with `webhook_events` (each `{"event", "state", "attempts",
        "last_attempt_at", "error"}`, a copy taken under the lock); None when unknown or dropped."""
        with self.lock:
            record = self._by_id.get(message_id)
            if record is None:
                return None
            return {**record, "webhook_events": [dict(entry) for entry in self._events_by_id.get(message_id, [])]}

    def inbox(self, *, to: str = "", subject: str = "", limit: int = INBOX_ROWS) -> tuple[list[dict], int]:
        """The newest `limit` messages with a recipient containing `to` and a subject containing
        `subject` (both ignoring case; empty matches all), newest first, and how many match."""
        with self.lock:
            messages = list(self.messages)
        to, subject = to.lower(), subject.lower()
        matches = [
            m
            for m in reversed(messages)
            if (not to or any(to in r["email"].lower() for r in m["recipients"]))
            and (not subject or subject in (m["subject"] or "").lower())
        ]
        return matches[:limit], len(matches)

    # Event Webhook ---------------------------------------------------------------------------

    def _queue_events(self, record: dict) -> None:
        """Queue the record's events (under the lock), each in an entry whose state the poster
        moves from pending to posted, or to failed while it retries."""
        bounce = re.compile(self.faults.bounce_pattern) if self.faults.bounce_pattern else None
        events = []
        for n, recipient in enumerate(record["recipients"]):
            base = {
                "email": recipient["email"],
                "timestamp": int(recipient["sends_at"]),
                "sg_message_id": f"{record['message_id']}.filter0001.{n}.0",
                "smtp-id": f"<{record['message_id']}@fake.sendgrid>",
                **recipient["custom_args"],
            }
            events.append({**base, "event": "processed", "sg_event_id": str(uuid.uuid4())})
            if bounce and bounce.search(recipient["email"]):
                events.append(
                    {
                        **base,
                        "event": "bounce",
                        "type": "bounce",
                        "status": "5.1.1",
                        "reason": "550 5.1.1 The email account does not exist.",
                        "sg_event_id": str(uuid.uuid4()),
                    }
                )
            else:
                events.append({**base, "event": "delivered", "response": "250 OK", "sg_event_id": str(uuid.uuid4())})
        entries = [
            {"event": event, "state": "pending", "attempts": 0, "last_attempt_at": None, "error": None}
            for event in events
        ]
        if any(event["timestamp"] > time.time() for event in events):
            self._held_events.extend(entries)
        else:
            self._webhook_events.extend(entries)
        if record["message_id"] in self._by_id:
            self._events_by_id[record["message_id"]] = entries

    def _webhook_key(self) -> EllipticCurvePrivateKey:
        if self._private_key is None:
            raise RuntimeError("No webhook key: the fake was started without a webhook URL or key.")
        return self._private_key

    def sign(self, payload: str, timestamp: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature = self._webhook_key().sign((timestamp + payload).encode(), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def public_key(self) -> str:
        """Base64 DER, the format SendGrid shows in its settings and EventWebhook reads."""
        from cryptography.hazmat.primitives import serialization

        der = (
            self._webhook_key()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return base64.b64encode(der).decode()

    def _post_webhooks(self) -> None:
        while True:
            time.sleep(0.2)
            with self.lock:
                if self._held_events:  # scheduled messages whose time came
                    now = time.time()
                    self._webhook_events.extend(e for e in self._held_events if e["event"]["timestamp"] <= now)
                    self._held_events = [e for e in self._held_events if e["event"]["timestamp"] > now]
                batch, self._webhook_events = self._webhook_events[:1000], self._webhook_events[1000:]
            if not batch:
                continue
            payload = json.dumps([entry["event"] for entry in batch])
            timestamp = str(int(time.time()))
            request = urllib.request.Request(
                self.webhook_url,
                data=payload.encode(),
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "X-Twilio-Email-Event-Webhook-Signature": self.sign(payload, timestamp),
                    "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
                },
            )
            try:
                urllib.request.urlopen(request, timeout=10).read()
            except OSError as exc:  # SendGrid retries failed posts; so do we, with the next batch
                with self.lock:
                    for entry in batch:
                        entry.update(
                            state="failed",
                            attempts=entry["attempts"] + 1,
                            last_attempt_at=time.time(),
                            error=str(exc)[:200],
                        )
                    self._webhook_events[:0] = batch
                    self.stats["webhook_failures"] += 1
            else:
                with self.lock:
                    for entry in batch:
                        entry.update(
                            state="posted", attempts=entry["attempts"] + 1, last_attempt_at=time.time(), error=None
                        )
                    self.stats["webhook_posts"] += 1


# Inbox pages -------------------------------------------------------------------------------------
# Every value that comes from a message goes through _h(); the pages run no scripts, and the
# message's own HTML is shown only inside an iframe sandboxed with no permissions.

PAGE_HEADERS = {
    # srcdoc frames inherit this policy, so the message's inline styles and images still show.
    "Content-Security-Policy": "default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; "
    "img-src * data:; font-src * data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STYLE = (
    "body{font:14px sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left;vertical-align:top;"
    "border-bottom:1px solid #ddd}th{white-space:nowrap}pre{background:#f6f6f6;padding:1em;overflow:auto;"
    "white-space:pre-wrap}iframe{width:100%;height:32em;border:1px solid #ccc}form label{margin-right:1em}"
    ".failed{color:#b00}.pending{color:#a60}.posted{color:#070}"
)


def _h(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(timestamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else ""


def _address(value) -> str:
    if not isinstance(value, dict):
        return ""
    return f"{value['name']} <{value.get('email', '')}>" if value.get("name") else value.get("email", "")


def _recipient_list(recipients: list[dict], shown: int = 5) -> str:
    listed = ", ".join(r["email"] for r in recipients[:shown])
    return f"{listed} … ({len(recipients)} in all)" if len(recipients) > shown else listed


def _message_href(message_id: str) -> str:
    return _h("/messages/" + quote(message_id, safe=""))


def _page(title: str, body: str, *, refresh: int = 0) -> str:
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_h(title)}</title>{meta}"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def inbox_page(
    shown: list[dict],
    *,
    matched: int,
    stored: int,
    stats: dict,
    to: str = "",
    subject: str = "",
    limit: int = INBOX_ROWS,
    refresh: int = 0,
) -> str:
    """The inbox: the filter form, how many match, and the shown messages (newest first)."""
    rows = "".join(
        f"<tr><td>{_when(m['received_at'])}</td><td>{_h(_address(m['from']))}</td>"
        f"<td>{_h(_recipient_list(m['recipients']))}</td>"
        f"<td><a href='{_message_href(m['message_id'])}'>{_h(m['subject'] or '(no subject)')}</a></td>"
        f"<td><code>{_h(m['message_id'])}</code></td></tr>"
        for m in shown
    )
    checked = f"value='{refresh}' checked" if refresh else "value='5'"
    form = (
        "<form method='get' action='/'>"
        f"<label>To <input name='to' value='{_h(to)}' placeholder='any part of an address'></label>"
        f"<label>Subject <input name='subject' value='{_h(subject)}' placeholder='any part'></label>"
        f"<label>Rows <input name='limit' type='number' min='1' max='{MAX_INBOX_ROWS}' value='{limit}'></label>"
        f"<label><input type='checkbox' name='refresh' {checked}> refresh every {refresh or 5} s</label>"
        "<button>Filter</button> <a href='/'>clear</a></form>"
    )
    summary = (
        f"<p id='count'>{matched} of {stored} stored messages match; showing the newest {len(shown)}. "
        f"{stats.get('messages', 0)} messages, {stats.get('recipients', 0)} recipients accepted.</p>"
    )
    return _page(
        "Fake SendGrid inbox",
        (
            f"<h1>Fake SendGrid inbox</h1>{form}{summary}"
            "<table id='messages'><tr><th>received</th><th>from</th><th>to</th><th>subject</th>"
            f"<th>message id</th></tr>{rows}</table>"
        ),
        refresh=refresh,
    )


def _post_state(entry: dict) -> str:
    if entry["state"] == "posted":
        return f"<span class='posted'>posted {_h(_when(entry['last_attempt_at']))}</span>"
    if entry["state"] == "failed":
        return (
            f"<span class='failed'>failed {entry['attempts']}×, retrying: {_h(entry['error'])} "
            f"(last {_h(_when(entry['last_attempt_at']))})</span>"
        )
    return "<span class='pending'>pending</span>"


def message_page(message: dict, *, webhook_url: str = "") -> str:
    """One message (as FakeSendGrid.message returns it): headers, bodies, recipients, events."""
    content = message.get("content") or []
    html_bodies = [block["value"] for block in content if block.get("type") == "text/html"]
    text_bodies = [block["value"] for block in content if block.get("type") == "text/plain"]
    headers = "".join(
        f"<tr><th>{name}</th><td>{_h(value)}</td></tr>"
        for name, value in (
            ("From", _address(message["from"])),
            ("Reply-To", _address(message.get("reply_to")) or "—"),
            ("Subject", message["subject"] or "(no subject)"),
            ("Received", _when(message["received_at"])),
            ("Held until", _when(message["send_at"]) if message.get("send_at") else "— (sent at once)"),
            ("Message id", message["message_id"]),
        )
    )
    if html_bodies:
        # The empty sandbox gives the frame an opaque origin with no scripts, forms or popups;
        # _h() escapes quotes too, so the body cannot end the srcdoc attribute.
        body = "".join(f"<iframe sandbox srcdoc=\"{_h(value)}\" title='HTML body'></iframe>" for value in html_bodies)
    else:
        body = "<p>No text/html content.</p>"
    text = "".join(f"<pre>{_h(value)}</pre>" for value in text_bodies) or "<p>No text/plain content.</p>"
    source = "".join(f"<h3>{_h(block.get('type'))}</h3><pre>{_h(block.get('value'))}</pre>" for block in content)
    recipients = "".join(
        f"<tr><td>{_h(r['email'])}</td><td>"
        + (
            "".join(f"<code>{_h(k)}</code> = <code>{_h(v)}</code><br>" for k, v in sorted(r["custom_args"].items()))
            or "—"
        )
        + "</td></tr>"
        for r in message["recipients"]
    )
    events = "".join(
        f"<tr><td>{_h(entry['event'].get('email'))}</td><td>{_h(entry['event'].get('event'))}</td>"
        f"<td>{_h(_when(entry['event'].get('timestamp')))}</td>"
        f"<td>{_h(entry['event'].get('response') or entry['event'].get('reason') or '')}</td>"
        f"<td>{_post_state(entry)}</td></tr>"
        for entry in message.get("webhook_events", [])
    )
    if events:
        events = (
            "<table id='events'><tr><th>recipient</th><th>event</th><th>time</th><th>detail</th>"
            f"<th>webhook post</th></tr>{events}</table>"
        )
    elif webhook_url:
        events = "<p>No events queued for this message.</p>"
    else:
        events = "<p>No Event Webhook configured (FAKE_SENDGRID_WEBHOOK_URL).</p>"
    json_href = _h("/_messages/" + quote(message["message_id"], safe=""))
    return _page(
        f"{message['subject'] or '(no subject)'} · Fake SendGrid",
        (
            f"<p><a href='/'>← inbox</a> · <a href='{json_href}'>JSON</a></p>"
            f"<h1>{_h(message['subject'] or '(no subject)')}</h1><table id='headers'>{headers}</table>"
            f"<h2>HTML</h2>{body}<h2>Text</h2>{text}<h2>Source</h2>{source or '<p>No content blocks.</p>'}"
            f"<h2>Recipients</h2><table id='recipients'><tr><th>to</th><th>custom args</th></tr>{recipients}</table>"
            f"<h2>Event Webhook</h2>{events}"
        ),
    )


def not_found_page(message_id: str) -> str:
    return _page(
        "Not found · Fake SendGrid",
        (
            f"<h1>No message {_h(message_id)}</h1><p>It was never accepted, or it was cleared or dropped "
            "to keep within the store limit.</p><p><a href='/'>← inbox</a></p>"
        ),
    )


def _int(value, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value), low), high)
    except (TypeError, ValueError):
        return default


def make_handler(fake: FakeSendGrid):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def setup(self):
            super().setup()
            with fake.lock:
                fake.stats["connections"] += 1  # clients that keep connections alive open few

        def _send(self, status: int, body=None, headers: dict | None = None, content_type="application/json"):
            data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if data:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            with fake.lock:
                fake.stats[f"status_{status}"] += 1

        def _html(self, status: int, page: str):
            self._send(status, page.encode(), PAGE_HEADERS, content_type="text/html; charset=utf-8")

        def _errors(self, status: int, message: str, field_name=None, headers=None):
            self._send(status, {"errors": [{"message": message, "field": field_name, "help": None}]}, headers)

        def _key_scopes(self) -> set[str] | None:
            auth = self.headers.get("Authorization", "")
            return fake.keys.get(auth[7:]) if auth.startswith("Bearer ") else None

        def _read_body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/v3/scopes":
                scopes = self._key_scopes()
                if scopes is None:
                    return self._errors(401, "The provided authorization grant is invalid, expired, or revoked")
                return self._send(200, {"scopes": sorted(scopes)})
            if url.path == "/_messages":
                return self._send(200, self._select(query))
            if url.path.startswith("/_messages/"):
                message = fake.message(unquote(url.path[len("/_messages/") :]))
                if message is None:
                    return self._errors(404, "message not found")
                return self._send(200, message)
            if url.path.startswith("/messages/"):
                message_id = unquote(url.path[len("/messages/") :])
                message = fake.message(message_id)
                if message is None:
                    return self._html(404, not_found_page(message_id))
                return self._html(200, message_page(message, webhook_url=fake.webhook_url))
            if url.path == "/_stats":
                with fake.lock:
                    stats = dict(fake.stats)
                return self._send(200, stats)
            if url.path == "/_faults":
                return self._send(200, asdict(fake.faults))
            if url.path == "/_webhook_public_key":
                if fake._private_key is None:
                    return self._errors(404, "no webhook key configured")
                return self._send(200, {"public_key": fake.public_key()})
            if url.path == "/":
                return self._html(200, self._inbox(query))
            self._errors(404, "not found")

        def do_DELETE(self):
            if urlparse(self.path).path == "/_messages":
                fake.clear()
                return self._send(204)
            self._errors(404, "not found")

        def do_PUT(self):
            if urlparse(self.path).path != "/_faults":
                return self._errors(404, "not found")
            try:
                fake.faults.update(json.loads(self._read_body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return self._errors(400, str(exc))
            self._send(200, asdict(fake.faults))

        def do_POST(self):
            if urlparse(self.path).path != "/v3/mail/send":
                self._read_body()
                return self._errors(404, "not found")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                return self._errors(413, "The JSON payload you have included in your request is too large.")
            raw = self._read_body()
            if fake.faults.latency_ms:
                time.sleep(fake.faults.latency_ms / 1000)
            scopes = self._key_scopes()
            if scopes is None:
                return self._errors(401, "The provided authorization grant is invalid, expired, or revoked")
            if "mail.send" not in scopes:
                return self._errors(403, "access forbidden")
            fault = fake.next_fault()
            if fault == "timeout":
                time.sleep(fake.faults.timeout_seconds)
                fault = None  # SendGrid took it after all, too late for the caller
            if fault == 429:
                reset = int(time.time()) + fake.faults.retry_after
                return self._errors(
                    429,
                    "Too many requests",
                    headers={
                        "Retry-After": str(fake.faults.retry_after),
                        "X-RateLimit-Reset": str(reset),
                        "X-RateLimit-Limit": "600",
                        "X-RateLimit-Remaining": "0",
                    },
                )
            if isinstance(fault, int) and fault >= 400:
                return self._errors(
                    fault,
                    {
                        500: "Internal server error",
                        503: "Service unavailable",
                        401: "The provided authorization grant is invalid, expired, or revoked",
                        400: "Bad Request",
                    }.get(fault, "error"),
                )
            try:
                body = json.loads(raw)
            except ValueError:
                return self._errors(400, "Bad Request", None)
            errors = validate(body)
            if not errors and fake.faults.reject_pattern:
                pattern = re.compile(fake.faults.reject_pattern)
                for i, item in enumerate(body["personalizations"]):
                    for j, entry in enumerate(item["to"]):
                        if pattern.search(entry["email"]):
                            errors.append(
                                {
                                    "message": "The to email does not contain a valid address.",
                                    "field": f"personalizations.{i}.to.{j}.email",
                                    "help": None,
                                }
                            )
            if errors:
                return self._send(400, {"errors": errors})
            verified = fake.faults.verified_senders
            if verified and body["from"]["email"].lower() not in {v.lower() for v in verified}:
                return self._errors(
                    403,
                    "The from address does not match a verified Sender Identity. Mail "
                    "cannot be sent until this error is resolved.",
                    "from",
                )
            self._send(202, None, {"X-Message-Id": fake.accept(body)})

        def _select(self, query: dict) -> list[dict]:
            with fake.lock:
                messages = list(fake.messages)
            if "to" in query:
                wanted = query["to"].lower()
                messages = [m for m in messages if any(r["email"].lower() == wanted for r in m["recipients"])]
            if "subject" in query:
                messages = [m for m in messages if query["subject"] in (m["subject"] or "")]
            limit = _int(query.get("limit"), 0, 0, len(messages))  # 0 (or not a number): all of them
            return messages[-limit:] if limit else messages

        def _inbox(self, query: dict) -> str:
            to, subject = query.get("to", "").strip(), query.get("subject", "").strip()
            limit = _int(query.get("limit"), INBOX_ROWS, 1, MAX_INBOX_ROWS)
            refresh = _int(query.get("refresh"), 0, 0, 3600)
            shown, matched = fake.inbox(to=to, subject=subject, limit=limit)
            with fake.lock:
                stats, stored = dict(fake.stats), len(fake.messages)
            return inbox_page(
                shown, matched=matched, stored=stored, stats=stats, to=to, subject=subject, limit=limit, refresh=refresh
            )

    return Handler


def webhook_key_file(path: Path) -> str:
    """The PEM in `path`, made there (readable by its owner only) when the file is missing, so
    that the key, and the public key the command API was given, survive the fake's restarts."""
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(pem)
    return path.read_text()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: a class attribute, because the constructor already listens. A burst of
    # new connections (a sender's 64 threads at once) overflowed the default of 5 and had some
    # reset, which a sender must treat as a delivery in doubt.
    request_queue_size = 1024


def serve(fake: FakeSendGrid, *, host: str, port: int) -> ThreadingHTTPServer:
    return _Server((host, port), make_handler(fake))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sender.fake_sendgrid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default=os.environ.get("FAKE_SENDGRID_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FAKE_SENDGRID_PORT", "8025")))
    parser.add_argument(
        "--webhook-key-file",
        default=os.environ.get("FAKE_SENDGRID_WEBHOOK_KEY_FILE", ""),
        help="the Event Webhook's signing key (PEM), made there the first time: it outlives restarts",
    )
    parser.add_argument(
        "--print-webhook-public-key",
        action="store_true",
        help="print the public key of --webhook-key-file (SendGrid's format) and exit",
    )
    args = parser.parse_args(argv)
    private_key_pem = os.environ.get("FAKE_SENDGRID_WEBHOOK_PRIVATE_KEY", "")
    if args.webhook_key_file:
        private_key_pem = webhook_key_file(Path(args.webhook_key_file))
    elif args.print_webhook_public_key:
        parser.error("--print-webhook-public-key needs --webhook-key-file")
    fake = FakeSendGrid(
        keys=parse_keys(os.environ.get("FAKE_SENDGRID_API_KEYS", "SG.fake-key:mail.send")),
        faults=Faults.from_env(),
        store_limit=int(os.environ.get("FAKE_SENDGRID_STORE_LIMIT", "100000")),
        webhook_url=os.environ.get("FAKE_SENDGRID_WEBHOOK_URL", ""),
        webhook_private_key_pem=private_key_pem,
    )
    if args.print_webhook_public_key:
        print(fake.public_key())
        return
    server = serve(fake, host=args.host, port=args.port)
    print(
        json.dumps(
            {
                "event": "fake_sendgrid_listening",
                "url": f"http://{args.host}:{args.port}",
                "inbox": f"http://{args.host}:{args.port}/",
                "faults": asdict(fake.faults),
            }
        ),
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
