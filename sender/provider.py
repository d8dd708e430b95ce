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
import select
import socket
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
    """Thread-safe: each thread keeps a connection of its own.

    The mail is built with the official helpers and sent with the official client's headers,
    over a kept-alive connection per thread: the official client's transport builds a urllib
    opener and opens a new connection for every call, which cost the sender more CPU than all
    of its other work per email.
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
        self._https, self._netloc = url.scheme == "https", url.netloc
        self._send_path = f"{url.path}/v3/mail/send"
        self._headers = dict(SendGridAPIClient(api_key=api_key, host=self.host).client.request_headers)
        self._headers["Content-Type"] = "application/json"

    def _client(self) -> SendGridAPIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self.api_key, host=self.host)
            client.client.timeout = self.timeout
            self._local.client = client
        return client

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it served a call before."""
        conn, last_used = getattr(self._local, "conn", None), getattr(self._local, "last_used", 0.0)
        # An idle connection has nothing to read unless the far end closed it (EOF).
        if (
            conn is not None
            and conn.sock is not None
            and time.monotonic() - last_used < self.IDLE_REUSE_SECONDS
            and not select.select([conn.sock], [], [], 0)[0]
        ):
            return conn, True
        self._drop_connection()
        factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._local.conn = factory(self._netloc, timeout=self.timeout)
        return self._local.conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _post(self, path: str, body: bytes) -> tuple[int, bytes, http.client.HTTPMessage]:
        conn, reused = self._connection()
        try:
            conn.request("POST", path, body=body, headers=self._headers)
        except (ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
            if not reused:
                raise
            # The far end closed the idle connection before reading our request: nothing was
            # sent, so a fresh connection may carry it.
            self._drop_connection()
            conn, _ = self._connection()
            conn.request("POST", path, body=body, headers=self._headers)
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            self._drop_connection()
        else:
            self._local.last_used = time.monotonic()
        return response.status, data, response.headers

    def send(self, event: EmailRequested, recipients: list[str]) -> ProviderAnswer:
        body = json.dumps(build_mail(event, recipients).get()).encode()
        try:
            status, data, headers = self._post(self._send_path, body)
        except TimeoutError as error:
            self._drop_connection()
            return ProviderAnswer(UNKNOWN, reason=f"timeout after {self.timeout}s: {error}")
        except (ConnectionRefusedError, socket.gaierror) as error:
            self._drop_connection()
            return ProviderAnswer(TRANSIENT, reason=f"cannot reach the provider: {error}")
        except (OSError, http.client.HTTPException) as error:
            self._drop_connection()
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
