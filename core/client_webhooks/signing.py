"""Signing deliveries per the Standard Webhooks specification, with its reference package.

The signed content is `<webhook-id>.<webhook-timestamp>.<body>`; the signature header lists one
`v1,<base64 HMAC-SHA256>` per valid secret, space-separated, so a client verifying with either
the old or the new secret accepts a delivery while a rotation is under way.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    """A fresh signing secret, whsec_<base64 of 24 random bytes> (as Svix issues them)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_headers(*, message_id: str, body: str, keys: Iterable[str], at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` sent at `at` (an aware datetime), signed with
    every secret of `keys` (the current one first)."""
    signatures = [Webhook(key).sign(message_id, at, body) for key in keys if key]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
