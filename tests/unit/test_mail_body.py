"""The Mail Send body the sender posts (`mail_body`, built directly for plain addresses) is the
official helpers' (`build_mail(...).get()`) for every kind of email: pure functions."""

from datetime import UTC, datetime, timedelta

import pytest

from sender import provider
from sender.provider import MAX_RECIPIENTS_PER_CALL, build_mail, mail_body
from tests.factories import email_requested

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def event(recipients, **fields):
    return email_requested(
        recipients, event_id="6d3c1f9e-0c1a-4e55-9f3b-3f1d2f6a7b8c", occurred_at=NOW.isoformat(), email_id=42, **fields
    )


# The cases written directly; the others go through the helpers.
DIRECT = {
    "one recipient",
    "three, with a reply-to",
    "unicode subject and body",
    "an internationalised address",
    "scheduled, still ahead",
    "scheduled, its time passed",
    "empty subject and body",
    "the largest call",
    "a body that looks like an API key",
}
CASES = {
    "one recipient": event(["ann@example.com"]),
    "three, with a reply-to": event(
        ["ann@example.com", "bob+tag@example.org", "o.neil_x@example.net"], reply_to="owner@example.com"
    ),
    "unicode subject and body": event(["ann@example.com"], subject="Grüße, 你好 — ✓", body_html="<p>é\u2028</p>"),
    "an internationalised address": event(["josé@exämple.com"], from_email="büro@exämple.de"),
    "scheduled, still ahead": event(["ann@example.com"], send_at=(NOW + timedelta(hours=1, seconds=0.4)).isoformat()),
    "scheduled, its time passed": event(["ann@example.com"], send_at=(NOW - timedelta(seconds=1)).isoformat()),
    "a display name in from": event(["ann@example.com"], from_email="Shop <shop@example.com>"),
    "a display name in a recipient": event(["Ann Lee <ann@example.com>", "bob@example.org"]),
    "a quoted name in reply-to": event(["ann@example.com"], reply_to='"Lee, Ann" <ann@example.com>'),
    "empty subject and body": event(["ann@example.com"], subject="", body_html=""),
    "the largest call": event([f"r{i}@example.com" for i in range(MAX_RECIPIENTS_PER_CALL)]),
    "two @ in an address": event(["a@b@example.com"]),
    "an apostrophe in an address": event(["o'neil@example.net"]),
    "a body that looks like an API key": event(["ann@example.com"], body_html="<p>SG.abc123.def456</p>"),
}


@pytest.mark.parametrize("name", CASES)
def test_the_body_is_the_official_helpers(name, monkeypatch):
    request = CASES[name]
    recipients = list(request.recipients)
    try:
        expected = build_mail(request, recipients, now=NOW.timestamp()).get()
    except Exception as error:  # the helpers refuse it: so must the sender
        expected = type(error)
    helped = []
    monkeypatch.setattr(provider, "build_mail", lambda *a, **k: helped.append(1) or build_mail(*a, **k))
    try:
        got = mail_body(request, recipients, now=NOW.timestamp())
    except Exception as error:
        got = type(error)
    assert got == expected
    assert bool(helped) == (name not in DIRECT)  # written directly, or through the helpers


@pytest.mark.parametrize("count", [0, MAX_RECIPIENTS_PER_CALL + 1])
def test_a_call_takes_1_to_1000_recipients(count):
    request = event([f"r{i}@example.com" for i in range(max(count, 1))])
    with pytest.raises(ValueError, match="1 to 1000 recipients"):
        mail_body(request, [f"r{i}@example.com" for i in range(count)])
