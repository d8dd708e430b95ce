import dataclasses

import pytest

from core.contracts import (
    ContractError,
    EmailDeliveryStatus,
    EmailDeliveryStatuses,
    EmailRequested,
    EmailSuppressed,
    event_from_dict,
)
from tests.conftest import golden


@pytest.mark.parametrize(
    "event_type",
    [
        "email.requested",
        "email.scheduled",
        "email.cancelled",
        "email.sent",
        "email.failed",
        "email.suppressed",
        "email.delivery_status",
        "email.delivery_statuses",
    ],
)
def test_every_golden_sample_round_trips(event_type):
    sample = golden(event_type, 1)
    event = event_from_dict(sample)
    assert event_type == event.TYPE
    assert event.to_dict() == sample


def test_golden_email_requested_round_trips():
    sample = golden("email.requested", 1)
    event = EmailRequested.from_dict(sample)
    assert event.recipients == ("ann@example.com", "bob@example.org")
    assert event.to_dict() == sample


def test_event_from_dict_dispatches_on_type():
    assert isinstance(event_from_dict(golden("email.requested", 1)), EmailRequested)


def test_unknown_keys_are_ignored_so_additive_changes_do_not_break_consumers():
    sample = golden("email.requested", 1) | {"added_later": "x"}
    assert EmailRequested.from_dict(sample).email_id == 42


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema_version": 2}, "unsupported schema_version 2"),
        ({"type": "email.sent"}, "expected type 'email.requested'"),
    ],
)
def test_wrong_version_or_type_is_refused(change, message):
    with pytest.raises(ContractError, match=message):
        EmailRequested.from_dict(golden("email.requested", 1) | change)


def test_missing_key_is_refused():
    sample = golden("email.requested", 1)
    del sample["recipients"]
    with pytest.raises(ContractError, match="missing recipients"):
        EmailRequested.from_dict(sample)


def test_unknown_type_is_refused():
    with pytest.raises(ContractError, match="unknown event type"):
        event_from_dict({"type": "nope"})


def test_events_are_frozen():
    event = EmailRequested.from_dict(golden("email.requested", 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.subject = "changed"


def test_a_field_added_within_a_version_may_be_missing_from_older_payloads():
    older = golden("email.requested", 1)
    del older["template_name"]
    assert EmailRequested.from_dict(older).template_name == ""


def test_a_batch_of_statuses_reads_as_its_items():
    batch = EmailDeliveryStatuses.from_dict(golden("email.delivery_statuses", 1))
    items = batch.items()
    assert [type(item) for item in items] == [EmailDeliveryStatus, EmailDeliveryStatus]
    assert [item.status for item in items] == ["processed", "delivered"]
    assert items[1] == EmailDeliveryStatus.from_dict(golden("email.delivery_status", 1))


@pytest.mark.parametrize("statuses", [[{"type": "email.delivery_status"}], ["not an object"]])
def test_a_batch_with_a_bad_item_is_refused(statuses):
    sample = golden("email.delivery_statuses", 1) | {"statuses": statuses}
    with pytest.raises(ContractError):
        EmailDeliveryStatuses.from_dict(sample).items()


def test_a_failure_written_before_the_request_fields_were_added_still_reads():
    from core.contracts import EmailFailed

    added = ("owner_id", "from_email", "template_id", "template_name", "subject", "requested_at")
    older = {k: v for k, v in golden("email.failed", 1).items() if k not in added}
    event = EmailFailed.from_dict(older)
    assert event.owner_id is None and event.subject == "" and event.reason.startswith("400")


def test_a_suppression_pairs_each_recipient_with_its_reason():
    event = EmailSuppressed.from_dict(golden("email.suppressed", 1))
    assert event.reason_of() == {"bob@example.org": "bounce"}


def test_a_suppression_without_a_reason_for_each_recipient_is_refused():
    event = EmailSuppressed.from_dict(golden("email.suppressed", 1) | {"reasons": []})
    with pytest.raises(ContractError, match="1 recipients but 0 reasons"):
        event.reason_of()


def test_the_projector_takes_a_suppression_without_a_reason_each_as_poison():
    from query_api.apply import unbatched

    event = EmailSuppressed.from_dict(golden("email.suppressed", 1) | {"recipients": ["a@x.org", "b@x.org"]})
    with pytest.raises(ContractError, match="2 recipients but 1 reasons"):
        unbatched(event)


def test_a_request_written_before_send_at_was_added_reads_as_sent_at_once():
    older = golden("email.requested", 1)
    del older["send_at"]
    assert EmailRequested.from_dict(older).send_at == ""


def test_a_scheduled_email_names_its_time_and_its_request():
    from core.contracts import EmailScheduled

    event = EmailScheduled.from_dict(golden("email.scheduled", 1))
    assert event.send_at == "2026-11-28T09:00:00+00:00"
    assert event.request_event_id == golden("email.requested", 1)["event_id"]
    assert "body_html" not in event.to_dict()  # the read model needs no body


def test_a_cancel_names_every_recipient_and_who_cancelled():
    from core.contracts import EmailCancelled

    event = EmailCancelled.from_dict(golden("email.cancelled", 1))
    assert event.recipients == ("ann@example.com", "bob@example.org") and event.cancelled_by == 7
