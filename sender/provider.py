"""The SendGrid adapter: build the request with the official helpers, send it, classify the answer.

Every answer is classified once, here:
    202                                   sent (X-Message-Id is the provider message id)
    429, 5xx, connection refused/reset    transient: retry later (429 says when)
    a timeout                             unknown: SendGrid may have taken it
    400, 413, other 4xx, 403 unverified   permanent for this email
    401, 403 missing permission           our key is bad: stop sending, fail nothing
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
from dataclasses import dataclass

from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, From, HtmlContent, Mail, Personalization, ReplyTo, Subject, To

from core.contracts import EmailRequested

MAX_RECIPIENTS_PER_CALL = 1000

SENT, TRANSIENT, UNKNOWN, PERMANENT, BAD_KEY = "sent", "transient", "unknown", "permanent", "bad_key"


@dataclass(frozen=True)
class SendResult:
    kind: str  # one of SENT, TRANSIENT, UNKNOWN, PERMANENT, BAD_KEY
    status: int | None = None
    message_id: str = ""
    reason: str = ""
    retry_after: float | None = None  # seconds, from Retry-After or X-RateLimit-Reset


def build_mail(event: EmailRequested, recipients: list[str]) -> Mail:
    """One personalization per recipient, so no recipient sees another; our event id, email id
    and the recipient ride along in custom_args for the Event Webhook."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS_PER_CALL:
        raise ValueError(f"1 to {MAX_RECIPIENTS_PER_CALL} recipients per call, got {len(recipients)}")
    mail = Mail(from_email=From(event.from_email), subject=Subject(event.subject),
                html_content=HtmlContent(event.body_html))
    if event.reply_to:
        mail.reply_to = ReplyTo(event.reply_to)
    for recipient in recipients:
        personalization = Personalization()
        personalization.add_to(To(recipient))
        personalization.add_custom_arg(CustomArg("event_id", event.event_id))
        personalization.add_custom_arg(CustomArg("email_id", str(event.email_id)))
        personalization.add_custom_arg(CustomArg("recipient", recipient))
        mail.add_personalization(personalization)
    return mail


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


def classify_http_error(error: http_errors.HTTPError) -> SendResult:
    status = error.status_code
    reason = f"{status}: {_messages(error.body)}"
    if status == 429:
        return SendResult(TRANSIENT, status, reason=reason, retry_after=_retry_after(error.headers))
    if status >= 500:
        return SendResult(TRANSIENT, status, reason=reason)
    if status == 401:
        return SendResult(BAD_KEY, status, reason=reason)
    if status == 403:
        # An unverified sender is this email's problem; anything else is our key's.
        if "sender identity" in reason.lower() or "verified" in reason.lower():
            return SendResult(PERMANENT, status, reason=reason)
        return SendResult(BAD_KEY, status, reason=reason)
    return SendResult(PERMANENT, status, reason=reason)


class SendGridProvider:
    """Thread-safe: each thread gets a client of its own."""

    name = "sendgrid"

    def __init__(self, *, api_key: str, host: str, timeout: float):
        self.api_key, self.host, self.timeout = api_key, host.rstrip("/"), timeout
        self._local = threading.local()

    def _client(self) -> SendGridAPIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self.api_key, host=self.host)
            client.client.timeout = self.timeout
            self._local.client = client
        return client

    def send(self, event: EmailRequested, recipients: list[str]) -> SendResult:
        mail = build_mail(event, recipients)
        try:
            response = self._client().send(mail)
        except http_errors.HTTPError as error:
            return classify_http_error(error)
        except (TimeoutError, socket.timeout) as error:
            return SendResult(UNKNOWN, reason=f"timeout after {self.timeout}s: {error}")
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                return SendResult(UNKNOWN, reason=f"timeout after {self.timeout}s: {error.reason}")
            return SendResult(TRANSIENT, reason=f"cannot reach the provider: {error.reason}")
        except (ConnectionError, OSError) as error:
            # The request may have been sent before the connection broke.
            return SendResult(UNKNOWN, reason=f"connection broken: {error!r}")
        message_id = response.headers.get("X-Message-Id", "") if response.headers else ""
        return SendResult(SENT, response.status_code, message_id=message_id)

    def check_key(self) -> bool | None:
        """True when the key may send mail, False when SendGrid refuses it, None when unknown."""
        try:
            response = self._client().client.scopes.get()
        except http_errors.HTTPError as error:
            return False if error.status_code in (401, 403) else None
        except (OSError, urllib.error.URLError):
            return None
        return "mail.send" in json.loads(response.body or b"{}").get("scopes", [])
