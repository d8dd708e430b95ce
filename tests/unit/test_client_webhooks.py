"""Client webhooks, the parts without a database: signatures, the address rules, the schedule,
the event types, and the sequence numbers the projection gives status changes."""

import ipaddress
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.client_webhooks.addresses import AddressRefused, address_problem, resolve_deliverable
from core.client_webhooks.events import EVENT_TYPE_BY_STATUS, EVENT_TYPES, event_type_for
from core.client_webhooks.signing import new_secret, signature_headers
from core.contracts import EmailDeliveryStatus, EmailRequested, EmailSent
from core.env import parse_durations
from query_api.projection import RANK, Row, apply


def test_a_signature_verifies_with_the_reference_package():
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = '{"type": "email.sent", "data": {"sequence": 2}}'
    message_id = str(uuid.uuid4())
    headers = signature_headers(message_id=message_id, body=body, keys=[secret], at=datetime.now(UTC))
    assert headers["webhook-id"] == message_id
    assert Webhook(secret).verify(body, headers) == {"type": "email.sent", "data": {"sequence": 2}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("2", "3"), headers)


def test_during_a_rotation_both_secrets_verify():
    old, new = new_secret(), new_secret()
    headers = signature_headers(message_id="msg_1", body="{}", keys=[new, old], at=datetime.now(UTC))
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify("{}", headers)
    Webhook(old).verify("{}", headers)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_internal_addresses_are_refused(address):
    assert address_problem(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(AddressRefused):
        resolve_deliverable(f"https://{host}/hook", allow_http=False, allow_private=False)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def test_a_host_name_is_resolved_and_checked():
    with pytest.raises(AddressRefused, match="loopback"):
        resolve_deliverable("https://localhost/hook", allow_http=False, allow_private=False)
    target = resolve_deliverable("https://localhost:8443/a?b=1", allow_http=False, allow_private=True)
    assert ipaddress.ip_address(target.address).is_loopback
    assert (target.host, target.port, target.path, target.host_header) == (
        "localhost",
        8443,
        "/a?b=1",
        "localhost:8443",
    )


@pytest.mark.parametrize(
    "url, allow_http, message",
    [
        ("http://8.8.8.8/hook", False, "https://"),
        ("ftp://8.8.8.8/hook", True, "http"),
        ("https:///hook", False, "no host"),
        ("https://user:pw@8.8.8.8/hook", False, "credentials"),
        ("https://8.8.8.8/hook#x", False, "fragment"),
        ("https://8.8.8.8:99999/hook", False, "Not a URL"),
        ("https://8.8.8.8/ho ok", False, "spaces"),
        ("https://8.8.8.8/" + "a" * 2000, False, "2000"),
        ("https://no-such-host.invalid/hook", False, "does not resolve"),
    ],
)
def test_malformed_urls_are_refused(url, allow_http, message):
    with pytest.raises(AddressRefused, match=message):
        resolve_deliverable(url, allow_http=allow_http, allow_private=True)


def test_the_default_schedule_is_svix_s():
    from django.conf import settings

    waits = settings.CLIENT_WEBHOOKS_RETRY_SCHEDULE
    assert waits == parse_durations("5s,5m,30m,2h,5h,10h,10h")
    assert len(waits) + 1 == 8  # immediately, then seven retries
    assert 24 * 3600 < sum(waits) < 28 * 3600  # about 27 hours, more than a day
    assert settings.CLIENT_WEBHOOKS_DISABLE_AFTER == 5 * 86400


def test_one_table_maps_statuses_to_event_types():
    for status in ("queued", "sent", "delivered", "bounced", "failed", "scheduled", "cancelled", "suppressed"):
        assert event_type_for(status) == f"email.{status}"
    assert {"email.scheduled", "email.cancelled", "email.suppressed"} <= set(EVENT_TYPES)
    assert event_type_for("opened") is None and event_type_for("deferred") is None
    # Every status of today's read model that the table names is a real one.
    assert set(EVENT_TYPE_BY_STATUS) - {"scheduled", "cancelled", "suppressed"} <= set(RANK)


def _event(cls, **fields):
    common = {"event_id": str(uuid.uuid4()), "correlation_id": "c", "email_id": 1}
    return cls(**common, **fields)


def test_each_status_change_gets_the_next_sequence_number_and_a_late_one_none():
    row = Row(id=1)
    request = _event(
        EmailRequested,
        occurred_at="2026-11-27T12:00:00+00:00",
        owner_id=7,
        template_id=1,
        from_email="f@example.com",
        reply_to=None,
        recipients=("ann@example.com",),
        subject="s",
        body_html="x",
        template_name="t",
    )
    sent = _event(
        EmailSent,
        occurred_at="2026-11-27T12:00:01+00:00",
        request_event_id="r",
        recipients=("ann@example.com",),
        provider="sendgrid",
        provider_message_id="m",
        attempt=1,
    )
    delivered = _event(
        EmailDeliveryStatus,
        occurred_at="2026-11-27T12:00:02+00:00",
        request_event_id="r",
        recipient="ann@example.com",
        status="delivered",
        provider="sendgrid",
        provider_event_id="p",
        provider_message_id="m",
        reason="",
        reported_at="2026-11-27T12:00:02+00:00",
    )
    assert [c.sequence for c in apply(row, request)] == [1]
    assert [(c.status, c.sequence) for c in apply(row, delivered)] == [("delivered", 2)]
    assert apply(row, sent) == []  # a sent after its delivered changes nothing and numbers nothing
    assert row.status_seq == 2
