"""A local stand-in for SendGrid's v3 Mail Send API, for development and tests.

    python -m sender.fake_sendgrid [--host 127.0.0.1] [--port 8025]

The official `sendgrid` client talks to it when given its URL as `host`. It answers like SendGrid:

    POST /v3/mail/send   202 with an empty body and X-Message-Id; 400 with SendGrid's error body
                         ({"errors": [{"message", "field", "help"}]}); 401 for an unknown key,
                         403 for a key without mail.send or an unverified from address, 413
    GET  /v3/scopes      the key's scopes (how a sender checks its key), 401 for an unknown key

and for people and tests:

    GET  /               an HTML inbox of the latest accepted messages
    GET  /_messages      accepted messages as JSON (?to=, ?subject=, ?limit=); DELETE clears them
    GET  /_stats         answers by status, messages and recipients accepted
    GET  /_faults        the fault settings; PUT /_faults changes them (JSON, merged)
    GET  /_webhook_public_key   the key that verifies its Event Webhook posts (SendGrid's format)

Faults (environment FAKE_SENDGRID_<NAME> at start, or PUT /_faults at runtime):
latency_ms, rate_429, rate_500, rate_timeout (0..1 shares), retry_after (seconds),
timeout_seconds, script (statuses for the next requests in turn, e.g. [429, 500, "timeout"]),
bounce_pattern and reject_pattern (regular expressions on recipient addresses: bounced later
through the webhook, or refused at once with 400), verified_senders (empty: any).

Keys: FAKE_SENDGRID_API_KEYS, comma-separated `key:scope scope`; default `SG.fake-key:mail.send`.
Event Webhook: with FAKE_SENDGRID_WEBHOOK_URL set it posts processed, then delivered or bounce
events for every accepted recipient, in batches, signed with ECDSA (P-256, SHA-256) as SendGrid
does; the private key comes from FAKE_SENDGRID_WEBHOOK_PRIVATE_KEY (PEM) or is made at start.
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
from urllib.parse import parse_qs, urlparse

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_BODY_BYTES = 30 * 1024 * 1024
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

    if not isinstance(body, dict):
        error("Bad Request", None)
        return errors
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        error("The personalizations field is required and must have at least one personalization.",
              "personalizations")
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        error(f"You may not have more than {MAX_PERSONALIZATIONS} personalizations per API request.",
              "personalizations")
    total = 0
    uses_template = bool(body.get("template_id"))
    global_subject = body.get("subject")
    for i, item in enumerate(personalizations):
        if not isinstance(item, dict):
            error("Each personalization must be an object.", f"personalizations.{i}")
            continue
        to = item.get("to")
        if not isinstance(to, list) or not to:
            error("The to array is required for all personalization objects, and must have at least one "
                  "email object with a valid email address.", f"personalizations.{i}.to")
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
                    error(f"The {kind} email does not contain a valid address.", f"personalizations.{i}.{kind}.{j}.email")
                    continue
                total += 1
                if address.lower() in seen:
                    error("Each email address in the personalization block should be unique between to, cc, "
                          "and bcc. We found the first duplicate instance of [" + address + "] in the "
                          "personalizations.{}.{} field.".format(i, kind), f"personalizations.{i}.{kind}.{j}.email")
                seen.add(address.lower())
        subject = item.get("subject", global_subject)
        if not uses_template and (not isinstance(subject, str) or not subject):
            error("The subject is required. You can get around this requirement if you use a template "
                  "with a subject defined or if every personalization has a subject defined.", "subject")
        args = item.get("custom_args", {})
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            error("Custom arguments must be strings.", f"personalizations.{i}.custom_args")
    if total > MAX_RECIPIENTS:
        error(f"The total number of recipients must be no more than {MAX_RECIPIENTS}.", "personalizations")
    sender = body.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str) or not _EMAIL.match(sender["email"]):
        error("The from object must be provided for every email send. It is an object that requires the "
              "email parameter, but may also contain a name parameter.", "from.email")
    content = body.get("content")
    if not uses_template:
        if not isinstance(content, list) or not content:
            error("Unless a valid template_id is provided, the content parameter is required. There must be "
                  "at least one defined content block.", "content")
        else:
            for k, block in enumerate(content):
                if not (isinstance(block, dict) and isinstance(block.get("type"), str) and block["type"]
                        and isinstance(block.get("value"), str) and block["value"]):
                    error("Each content block needs a type and a non-empty value.", f"content.{k}")
    args = body.get("custom_args", {})
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        error("Custom arguments must be strings.", "custom_args")
    return errors


class FakeSendGrid:
    """The state behind the server: keys, faults, accepted messages, webhook queue."""

    def __init__(self, *, keys: dict[str, set[str]], faults: Faults, store_limit: int = 100_000,
                 webhook_url: str = "", webhook_private_key_pem: str = ""):
        self.keys = keys
        self.faults = faults
        self.messages: collections.deque = collections.deque(maxlen=store_limit)
        self.stats: collections.Counter = collections.Counter()
        self.lock = threading.RLock()
        self.webhook_url = webhook_url
        self._webhook_events: list[dict] = []
        self._private_key = None
        if webhook_url or webhook_private_key_pem:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            self._private_key = (
                serialization.load_pem_private_key(webhook_private_key_pem.encode(), password=None)
                if webhook_private_key_pem else ec.generate_private_key(ec.SECP256R1())
            )
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
        recipients = [
            {"email": entry["email"], "custom_args": {**body.get("custom_args", {}), **item.get("custom_args", {})}}
            for item in body["personalizations"] for entry in item["to"]
        ]
        record = {
            "message_id": message_id,
            "received_at": time.time(),
            "from": body["from"],
            "reply_to": body.get("reply_to"),
            "subject": body.get("subject") or body["personalizations"][0].get("subject"),
            "content": body.get("content", []),
            "personalizations": body["personalizations"],
            "recipients": recipients,
        }
        with self.lock:
            self.messages.append(record)
            self.stats["messages"] += 1
            self.stats["recipients"] += len(recipients)
            if self.webhook_url:
                self._queue_events(record)
        return message_id

    # Event Webhook ---------------------------------------------------------------------------

    def _queue_events(self, record: dict) -> None:
        bounce = re.compile(self.faults.bounce_pattern) if self.faults.bounce_pattern else None
        now = int(time.time())
        for n, recipient in enumerate(record["recipients"]):
            base = {"email": recipient["email"], "timestamp": now,
                    "sg_message_id": f"{record['message_id']}.filter0001.{n}.0",
                    "smtp-id": f"<{record['message_id']}@fake.sendgrid>", **recipient["custom_args"]}
            self._webhook_events.append({**base, "event": "processed", "sg_event_id": str(uuid.uuid4())})
            if bounce and bounce.search(recipient["email"]):
                self._webhook_events.append({**base, "event": "bounce", "type": "bounce", "status": "5.1.1",
                                             "reason": "550 5.1.1 The email account does not exist.",
                                             "sg_event_id": str(uuid.uuid4())})
            else:
                self._webhook_events.append({**base, "event": "delivered", "response": "250 OK",
                                             "sg_event_id": str(uuid.uuid4())})

    def sign(self, payload: str, timestamp: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return base64.b64encode(self._private_key.sign((timestamp + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()

    def public_key(self) -> str:
        """Base64 DER, the format SendGrid shows in its settings and EventWebhook reads."""
        from cryptography.hazmat.primitives import serialization

        der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def _post_webhooks(self) -> None:
        while True:
            time.sleep(0.2)
            with self.lock:
                batch, self._webhook_events = self._webhook_events[:1000], self._webhook_events[1000:]
            if not batch:
                continue
            payload = json.dumps(batch)
            timestamp = str(int(time.time()))
            request = urllib.request.Request(self.webhook_url, data=payload.encode(), method="POST", headers={
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": self.sign(payload, timestamp),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            })
            try:
                urllib.request.urlopen(request, timeout=10).read()
                self.stats["webhook_posts"] += 1
            except OSError:  # SendGrid retries failed posts; so do we, once, with the next batch
                with self.lock:
                    self._webhook_events[:0] = batch
                self.stats["webhook_failures"] += 1


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
                return self._send(200, self._inbox().encode(), content_type="text/html; charset=utf-8")
            self._errors(404, "not found")

        def do_DELETE(self):
            if urlparse(self.path).path == "/_messages":
                with fake.lock:
                    fake.messages.clear()
                    fake.stats.clear()
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
                return self._errors(429, "Too many requests", headers={
                    "Retry-After": str(fake.faults.retry_after), "X-RateLimit-Reset": str(reset),
                    "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"})
            if isinstance(fault, int) and fault >= 400:
                return self._errors(fault, {500: "Internal server error", 503: "Service unavailable",
                                            401: "The provided authorization grant is invalid, expired, or revoked",
                                            400: "Bad Request"}.get(fault, "error"))
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
                            errors.append({"message": "The to email does not contain a valid address.",
                                           "field": f"personalizations.{i}.to.{j}.email", "help": None})
            if errors:
                return self._send(400, {"errors": errors})
            verified = fake.faults.verified_senders
            if verified and body["from"]["email"].lower() not in {v.lower() for v in verified}:
                return self._errors(403, "The from address does not match a verified Sender Identity. Mail "
                                         "cannot be sent until this error is resolved.", "from")
            self._send(202, None, {"X-Message-Id": fake.accept(body)})

        def _select(self, query: dict) -> list[dict]:
            with fake.lock:
                messages = list(fake.messages)
            if "to" in query:
                wanted = query["to"].lower()
                messages = [m for m in messages if any(r["email"].lower() == wanted for r in m["recipients"])]
            if "subject" in query:
                messages = [m for m in messages if query["subject"] in (m["subject"] or "")]
            limit = int(query.get("limit", 0) or 0)
            return messages[-limit:] if limit else messages

        def _inbox(self) -> str:
            with fake.lock:
                latest = list(fake.messages)[-100:][::-1]
            rows = "".join(
                f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(m['received_at']))}</td>"
                f"<td>{html.escape(m['from'].get('email', ''))}</td>"
                f"<td>{html.escape(', '.join(r['email'] for r in m['recipients'][:5]))}"
                f"{' …' if len(m['recipients']) > 5 else ''}</td>"
                f"<td>{html.escape(m['subject'] or '')}</td><td><code>{m['message_id']}</code></td></tr>"
                for m in latest
            )
            return (
                "<!doctype html><html><head><meta charset='utf-8'><title>Fake SendGrid inbox</title>"
                "<meta http-equiv='refresh' content='5'><style>body{font:14px sans-serif;margin:2em}"
                "td,th{padding:4px 10px;text-align:left;border-bottom:1px solid #ddd}</style></head><body>"
                f"<h1>Fake SendGrid inbox</h1><p>{fake.stats['messages']} messages, "
                f"{fake.stats['recipients']} recipients accepted. Latest first.</p>"
                "<table><tr><th>received</th><th>from</th><th>to</th><th>subject</th><th>message id</th></tr>"
                f"{rows}</table></body></html>"
            )

    return Handler


def serve(fake: FakeSendGrid, *, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(fake))
    server.daemon_threads = True
    server.request_queue_size = 1024
    return server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sender.fake_sendgrid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("FAKE_SENDGRID_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FAKE_SENDGRID_PORT", "8025")))
    args = parser.parse_args(argv)
    fake = FakeSendGrid(
        keys=parse_keys(os.environ.get("FAKE_SENDGRID_API_KEYS", "SG.fake-key:mail.send")),
        faults=Faults.from_env(),
        store_limit=int(os.environ.get("FAKE_SENDGRID_STORE_LIMIT", "100000")),
        webhook_url=os.environ.get("FAKE_SENDGRID_WEBHOOK_URL", ""),
        webhook_private_key_pem=os.environ.get("FAKE_SENDGRID_WEBHOOK_PRIVATE_KEY", ""),
    )
    server = serve(fake, host=args.host, port=args.port)
    print(json.dumps({"event": "fake_sendgrid_listening", "url": f"http://{args.host}:{args.port}",
                      "inbox": f"http://{args.host}:{args.port}/", "faults": asdict(fake.faults)}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
