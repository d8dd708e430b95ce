"""The validation of a send's `send_at`, and the `send_at` the sender gives SendGrid: pure
functions, no database."""

from datetime import UTC, datetime, timedelta

import pytest

from command_api.emails.services import SEND_AT_PAST_TOLERANCE, check_send_at, parse_send_at
from core.contracts import EmailRequested
from core.errors import ApplicationError
from sender.provider import build_mail, provider_send_at

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("2026-12-01T09:00:00Z", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        ("2026-12-01T10:00:00+01:00", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),  # kept as UTC
        ("2026-12-01T09:00:00.250-00:30", datetime(2026, 12, 1, 9, 30, 0, 250000, tzinfo=UTC)),
        (None, None),
    ],
)
def test_parses_iso_8601_with_an_offset_into_utc(raw, expected):
    moment = parse_send_at(raw)
    assert moment == expected
    assert moment is None or moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw, says",
    [
        ("2026-12-01T09:00:00", "no UTC offset"),
        ("2026-12-01", "no UTC offset"),  # a day alone reads as its midnight, whose?
        ("2026-13-01T09:00:00Z", "not an ISO 8601 date-time"),
        ("0001-01-01T00:00:00+01:00", "not an ISO 8601 date-time"),  # before the calendar in UTC
        ("soon", "not an ISO 8601 date-time"),
    ],
)
def test_refuses_what_is_not_a_moment_naming_send_at(raw, says):
    with pytest.raises(ApplicationError) as refused:
        parse_send_at(raw)
    assert refused.value.status_code == 400
    assert list(refused.value.errors) == ["send_at"] and says in refused.value.errors["send_at"][0]


@pytest.mark.parametrize(
    "offset, allowed",
    [
        (timedelta(hours=72), True),
        (timedelta(hours=72, seconds=1), False),
        (timedelta(0), True),
        (-SEND_AT_PAST_TOLERANCE, True),  # a clock a little behind ours
        (-SEND_AT_PAST_TOLERANCE - timedelta(seconds=1), False),
    ],
)
def test_the_window_is_now_to_72_hours_ahead_with_a_few_seconds_of_skew(offset, allowed):
    if allowed:
        check_send_at(NOW + offset, now=NOW)
        return
    with pytest.raises(ApplicationError) as refused:
        check_send_at(NOW + offset, now=NOW)
    message = refused.value.errors["send_at"][0]
    assert ("72 hours" in message) if offset > timedelta(0) else ("in the past" in message)


# What the sender tells SendGrid -------------------------------------------------------------------


def request(send_at: str) -> EmailRequested:
    return EmailRequested(
        event_id="6f1c0d4e-3b8e-4a53-9c1e-2f0a3c1d5e7f",
        correlation_id="c",
        occurred_at=NOW.isoformat(),
        email_id=1,
        owner_id=1,
        template_id=1,
        from_email="no-reply@example.com",
        reply_to="",
        recipients=("ann@example.com",),
        subject="Hi",
        body_html="<p>Hi</p>",
        send_at=send_at,
    )


@pytest.mark.parametrize(
    "send_at, expected",
    [
        ((NOW + timedelta(minutes=2)).isoformat(), int(NOW.timestamp()) + 120),  # ahead: SendGrid holds it
        ((NOW + timedelta(seconds=90, microseconds=1)).isoformat(), int(NOW.timestamp()) + 91),  # never early
        ((NOW + timedelta(milliseconds=400)).isoformat(), int(NOW.timestamp()) + 1),
        (NOW.isoformat(), None),  # its time came: at once
        ((NOW - timedelta(milliseconds=200)).isoformat(), None),  # not held to the next second
        ((NOW - timedelta(minutes=5)).isoformat(), None),  # a late hand-off (a retry): at once
        ("", None),  # a send at once
    ],
)
def test_a_scheduled_send_still_ahead_is_handed_to_sendgrid_with_send_at(send_at, expected):
    body = build_mail(request(send_at), ["ann@example.com"], now=NOW.timestamp()).get()
    assert body.get("send_at") == expected
    assert provider_send_at(request(send_at), NOW.timestamp()) == expected
    assert "send_at" not in body["personalizations"][0]
