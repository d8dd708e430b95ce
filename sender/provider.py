"""The SendGrid adapter: build the request with the official helpers, send it over a kept-alive
connection, classify the answer.

Every answer is classified once, here:
    202                                   sent (X-Message-Id is the provider message id)
    429, 5xx, connection refused          transient: retry later (429 says when)
    a timeout, a connection broken        unknown: SendGrid may have taken it
    during the call
    400, 413, other 4xx, 403 unverified   permanent for this email
    401, 403 missing permission           our key is bad: stop sending, fail nothing
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass
from datetime import datetime

from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, From, HtmlContent, Mail, Personalization, ReplyTo, SendAt, Subject, To

from core.contracts import EmailRequested
from sender import http1

MAX_RECIPIENTS_PER_CALL = 1000

SENT, TRANSIENT, UNKNOWN, PERMANENT, BAD_KEY = "sent", "transient", "unknown", "permanent", "bad_key"


@dataclass(frozen=True)
class ProviderAnswer:
    """The provider's answer to one send call, classified (not the command API's result of a send)."""

    kind: str  # one of SENT, TRANSIENT, UNKNOWN, PERMANENT, BAD_KEY
    status: int | None = None
    message_id: str = ""
    reason: str = ""
    retry_after: float | None = None  # seconds, from Retry-After or X-RateLimit-Reset


def build_mail(event: EmailRequested, recipients: list[str], *, now: float | None = None) -> Mail:
    """One personalization per recipient, so no recipient sees another; our event id, email id
    and the recipient ride along in custom_args for the Event Webhook. A scheduled send still
    ahead (at `now`, epoch seconds) carries `send_at`: SendGrid holds it until then."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS_PER_CALL:
        raise ValueError(f"1 to {MAX_RECIPIENTS_PER_CALL} recipients per call, got {len(recipients)}")
    mail = Mail(
        from_email=From(event.from_email), subject=Subject(event.subject), html_content=HtmlContent(event.body_html)
    )
    if event.reply_to:
        mail.reply_to = ReplyTo(event.reply_to)
    send_at = provider_send_at(event, time.time() if now is None else now) if event.send_at else None
    if send_at is not None:
        mail.send_at = SendAt(send_at)
    for recipient in recipients:
        personalization = Personalization()
        personalization.add_to(To(recipient))
        personalization.add_custom_arg(CustomArg("event_id", event.event_id))
        personalization.add_custom_arg(CustomArg("email_id", str(event.email_id)))
        personalization.add_custom_arg(CustomArg("recipient", recipient))
        mail.add_personalization(personalization)
    return mail


# An address the helpers take as it is: no display name, quoting or list (they would split one).
_PLAIN_ADDRESS = re.compile(r"[^\s<>\"',;:()\[\]\\@]+@[^\s<>\"',;:()\[\]\\@]+")


def mail_body(event: EmailRequested, recipients: list[str], *, now: float | None = None) -> dict:
    """The Mail Send request body: `build_mail(...).get()`, and equal to it (a test holds the two
    together), built directly when every address is a plain one, the case of nearly every email.
    The helpers parse each address and build an object per field: about 80 µs an email, a tenth of
    the sender's CPU. Any other address goes through the helpers."""
    addresses = [event.from_email, *recipients, *([event.reply_to] if event.reply_to else [])]
    if not all(_PLAIN_ADDRESS.fullmatch(address) for address in addresses):
        return build_mail(event, recipients, now=now).get()
    if not 1 <= len(recipients) <= MAX_RECIPIENTS_PER_CALL:
        raise ValueError(f"1 to {MAX_RECIPIENTS_PER_CALL} recipients per call, got {len(recipients)}")
    email_id = str(event.email_id)
    body: dict = {
        "from": {"email": event.from_email},
        "subject": event.subject,
        # In the helpers' order: each personalization added goes first.
        "personalizations": [
            {
                "to": [{"email": recipient}],
                "custom_args": {"event_id": event.event_id, "email_id": email_id, "recipient": recipient},
            }
            for recipient in reversed(recipients)
        ],
        "content": [{"type": "text/html", "value": event.body_html}],
    }
    send_at = provider_send_at(event, time.time() if now is None else now) if event.send_at else None
    if send_at is not None:
        body["send_at"] = send_at
    if event.reply_to:
        body["reply_to"] = {"email": event.reply_to}
    return body


def provider_send_at(event: EmailRequested, now: float) -> int | None:
    """SendGrid's `send_at` for the event at `now`: its `send_at` in whole seconds, rounded up
    (never early), while that is still ahead; None for a send at once or one whose time came."""
    if not event.send_at:
        return None
    at = datetime.fromisoformat(event.send_at).timestamp()
    return math.ceil(at) if at > now else None


def _messages(body) -> str:
    try:
        data = json.loads(body or b"{}")
        return "; ".join(e.get("message", "") for e in data.get("errors", [])) or str(body[:200])
    except (ValueError, AttributeError):
        return str(body[:200])


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None


def classify_answer(status: int, body: bytes, headers) -> ProviderAnswer:
    """Any answer but a 2xx."""
    reason = f"{status}: {_messages(body)}"
    if status == 429:
        return ProviderAnswer(TRANSIENT, status, reason=reason, retry_after=_retry_after(headers))
    if status >= 500:
        return ProviderAnswer(TRANSIENT, status, reason=reason)
    if status == 401:
        return ProviderAnswer(BAD_KEY, status, reason=reason)
    if status == 403:
        # An unverified sender is this email's problem; anything else is our key's.
        if "sender identity" in reason.lower() or "verified" in reason.lower():
            return ProviderAnswer(PERMANENT, status, reason=reason)
        return ProviderAnswer(BAD_KEY, status, reason=reason)
    return ProviderAnswer(PERMANENT, status, reason=reason)


class SendGridProvider:
    """Thread-safe: a thread takes a kept-alive connection for its call, then puts it back.

    The mail is the official helpers' body (`mail_body`), sent with the official client's
    headers over a kept-alive connection (sender/http1.py): the official client's
    transport builds a urllib opener and opens a new connection for every call, which cost the
    sender more CPU than all of its other work per email; http.client on a kept-alive
    connection still cost a tenth of it.
    """

    name = "sendgrid"
    # A connection idle longer than this is not reused: the far end may have closed it.
    IDLE_REUSE_SECONDS = 4.0

    def __init__(self, *, api_key: str, host: str, timeout: float):
        self.api_key, self.host, self.timeout = api_key, host.rstrip("/"), timeout
        self._local = threading.local()
        url = urllib.parse.urlsplit(self.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"SENDGRID_HOST must be an http(s) URL, got {host!r}")
        self._hostname, self._port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        # Kept-alive connections not in use, the last used last: (connection, when it was used).
        self._idle: list[tuple[http1.Connection, float]] = []
        self._idle_lock = threading.Lock()
        # The official client's headers, and what http.client adds, written once: the request
        # line and headers of every call but its Content-Length.
        headers = {
            "Host": url.netloc,
            "Accept-Encoding": "identity",
            **SendGridAPIClient(api_key=api_key, host=self.host).client.request_headers,
            "Content-Type": "application/json",
        }
        self._request_head = f"POST {url.path}/v3/mail/send HTTP/1.1\r\n".encode() + b"".join(
            f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()
        )

    def _client(self) -> SendGridAPIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self.api_key, host=self.host)
            client.client.timeout = self.timeout
            self._local.client = client
        return client

    def _connection(self) -> tuple[http1.Connection, bool]:
        """The idle connection used last, and whether it served a call before; a new one when
        none is idle. Last in, first out: at a low rate few connections stay warm, and those
        are used, rather than each thread's own going cold between its calls."""
        while True:
            with self._idle_lock:
                if not self._idle:
                    break
                conn, last_used = self._idle.pop()
            if time.monotonic() - last_used < self.IDLE_REUSE_SECONDS and not conn.closed_by_peer():
                return conn, True
            conn.close()
        return http1.Connection(self._hostname, self._port, timeout=self.timeout, tls=self._tls), False

    def _post(self, body: bytes) -> tuple[int, bytes, http1.Headers]:
        conn, reused = self._connection()
        try:
            try:
                conn.send(self._request_head, body)
            except (ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The far end closed the idle connection before reading our request: nothing was
                # sent, so a fresh connection may carry it.
                conn.close()
                conn, _ = self._connection()
                conn.send(self._request_head, body)
            status, data, headers, reusable = conn.response()
        except BaseException:
            conn.close()
            raise
        if reusable:
            with self._idle_lock:
                self._idle.append((conn, time.monotonic()))
        else:
            conn.close()
        return status, data, headers

    def send(self, event: EmailRequested, recipients: list[str]) -> ProviderAnswer:
        body = json.dumps(mail_body(event, recipients)).encode()
        try:
            status, data, headers = self._post(body)
        except TimeoutError as error:
            return ProviderAnswer(UNKNOWN, reason=f"timeout after {self.timeout}s: {error}")
        except (ConnectionRefusedError, socket.gaierror) as error:
            return ProviderAnswer(TRANSIENT, reason=f"cannot reach the provider: {error}")
        except (OSError, http.client.HTTPException) as error:
            # The request may have been sent before the connection broke.
            return ProviderAnswer(UNKNOWN, reason=f"connection broken: {error!r}")
        if 200 <= status < 300:
            return ProviderAnswer(SENT, status, message_id=headers.get("X-Message-Id", ""))
        return classify_answer(status, data, headers)

    def check_key(self) -> bool | None:
        """True when the key may send mail, False when SendGrid refuses it, None when unknown."""
        try:
            response = self._client().client.scopes.get()
        except http_errors.HTTPError as error:
            return False if error.status_code in (401, 403) else None
        except (OSError, urllib.error.URLError):
            return None
        return "mail.send" in json.loads(response.body or b"{}").get("scopes", [])
