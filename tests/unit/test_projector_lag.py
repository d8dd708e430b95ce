"""projector_lag_seconds: how old the newest applied event was, never negative, 0 when unreadable."""

from datetime import UTC, datetime, timedelta

import pytest

from core.contracts import event_from_dict
from query_api.projector import event_age
from tests.conftest import golden


def sent_at(occurred_at: str):
    return event_from_dict(golden("email.sent", 1) | {"occurred_at": occurred_at})


def test_the_age_of_an_event_is_the_time_since_it_occurred():
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    assert event_age(sent_at(ten_minutes_ago.isoformat())) == pytest.approx(600, abs=5)
    assert event_age(sent_at(ten_minutes_ago.replace(tzinfo=None).isoformat())) == pytest.approx(600, abs=5)


@pytest.mark.parametrize("occurred_at", ["not a time", (datetime.now(UTC) + timedelta(hours=1)).isoformat()])
def test_an_unreadable_or_future_time_counts_as_no_lag(occurred_at):
    assert event_age(sent_at(occurred_at)) == 0
