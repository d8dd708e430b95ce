import dataclasses
import itertools

import pytest

from core.contracts import EmailDeliveryStatus, EmailFailed, EmailRequested, EmailSent, EmailSuppressed
from query_api.projection import Row, apply, overall_status

T = "2026-11-27T10:00:0{}+00:00"


def requested():
    return EmailRequested(
        event_id="r",
        correlation_id="c",
        occurred_at=T.format(0),
        email_id=1,
        owner_id=7,
        template_id=3,
        from_email="f@example.com",
        reply_to=None,
        recipients=("Ann@example.com", "bob@example.org"),
        subject="Hi",
        body_html="x",
        template_name="welcome",
    )


def sent(recipients=("Ann@example.com", "bob@example.org")):
    return EmailSent(
        event_id="s",
        correlation_id="c",
        occurred_at=T.format(1),
        email_id=1,
        request_event_id="r",
        recipients=recipients,
        provider="sendgrid",
        provider_message_id="m1",
        attempt=1,
    )


def status(recipient, value, n=2, event_id=None):
    return EmailDeliveryStatus(
        event_id=event_id or f"d-{recipient}-{value}",
        correlation_id="c",
        occurred_at=T.format(n),
        email_id=1,
        request_event_id="r",
        recipient=recipient,
        status=value,
        provider="sendgrid",
        provider_event_id="p",
        provider_message_id="m1.x",
        reason="",
        reported_at=T.format(n),
    )


def run(events) -> Row:
    row = Row(id=1)
    for event in events:
        apply(row, event)
    return row


def test_requested_then_sent_then_delivered():
    row = run([requested()])
    assert (row.owner_id, row.status, row.recipients) == (7, "queued", ["ann@example.com", "bob@example.org"])
    apply(row, sent())
    assert row.status == "sent" and row.recipient_status["ann@example.com"]["provider_message_id"] == "m1"
    apply(row, status("ann@example.com", "delivered"))
    assert row.status == "sent"
    apply(row, status("bob@example.org", "delivered", 3))
    assert row.status == "delivered" and row.last_event_at == T.format(3)


def test_any_order_and_duplicates_give_the_same_row():
    events = [requested(), sent(), status("ann@example.com", "delivered"), status("bob@example.org", "bounced", 3)]
    expected = run(events)
    for order in itertools.permutations(events + [events[1], events[2]]):
        row = Row(id=1)
        changes = [change for event in order for change in apply(row, event)]
        # The status sequence counts the changes this order made (a sent after its delivered makes
        # none), always 1, 2, 3 … in the order they were made; everything else is the same row.
        assert (
            [change.sequence for change in changes]
            == list(range(1, len(changes) + 1))
            == list(range(1, row.status_seq + 1))
        )
        assert dataclasses.replace(row, status_seq=expected.status_seq) == expected
    assert expected.status == "partially_failed"


def test_delivered_before_sent_stays_delivered():
    row = run([requested(), status("ann@example.com", "delivered"), status("bob@example.org", "delivered")])
    changes = apply(row, sent())
    assert changes == [] and row.status == "delivered"


def test_an_event_before_its_request_is_kept():
    row = run([sent()])
    assert row.owner_id is None and row.status == "sent"
    apply(row, requested())
    assert row.owner_id == 7 and row.status == "sent" and row.subject == "Hi"


def test_a_failure_is_overridden_by_a_later_delivery():
    failed = EmailFailed(
        event_id="f",
        correlation_id="c",
        occurred_at=T.format(1),
        email_id=1,
        request_event_id="r",
        recipients=("ann@example.com",),
        provider="sendgrid",
        reason="timeout",
        permanent=False,
        attempt=5,
    )
    row = run([requested(), failed])
    assert row.recipient_status["ann@example.com"]["reason"] == "timeout"
    apply(row, status("ann@example.com", "delivered"))
    assert row.recipient_status["ann@example.com"]["status"] == "delivered"


@pytest.mark.parametrize(
    "statuses, expected",
    [
        (["queued", "queued"], "queued"),
        (["queued", "sent"], "sending"),
        (["sent", "delivered"], "sent"),
        (["delivered", "opened"], "delivered"),
        (["failed", "bounced"], "failed"),
        (["failed", "delivered"], "partially_failed"),
        (["suppressed", "suppressed"], "suppressed"),
        (["suppressed", "sent"], "partially_failed"),
        (["suppressed", "delivered"], "partially_failed"),
        (["suppressed", "failed"], "failed"),
        (["suppressed", "queued"], "sending"),
    ],
)
def test_overall_status(statuses, expected):
    assert overall_status(statuses) == expected


def test_between_the_senders_own_outcomes_the_later_stands_in_any_order():
    # Failed at 10:00:03 (the schedule ran out), re-driven, sent at 10:00:05: sent, whatever the
    # order the two arrive in; a provider status still ranks above both.
    failed = EmailFailed(
        event_id="f",
        correlation_id="c",
        occurred_at=T.format(3),
        email_id=1,
        request_event_id="r",
        recipients=("Ann@example.com",),
        provider="sendgrid",
        reason="gave up",
        permanent=False,
        attempt=13,
    )
    resent = EmailSent(
        event_id="s2",
        correlation_id="c",
        occurred_at=T.format(5),
        email_id=1,
        request_event_id="r",
        recipients=("Ann@example.com",),
        provider="sendgrid",
        provider_message_id="m2",
        attempt=1,
    )
    for order in itertools.permutations([requested(), failed, resent]):
        assert run(order).recipient_status["ann@example.com"]["status"] == "sent"
    for order in itertools.permutations([requested(), failed, resent, status("Ann@example.com", "delivered", 4)]):
        assert run(order).recipient_status["ann@example.com"]["status"] == "delivered"


def test_a_request_the_broker_refused_is_known_from_its_failure_alone():
    # The relay could not publish the request (too large): its email.failed says what it was.
    failed = EmailFailed(
        event_id="f",
        correlation_id="c",
        occurred_at=T.format(2),
        email_id=1,
        request_event_id="r",
        recipients=("Ann@example.com", "bob@example.org"),
        provider="broker",
        reason="refused by the broker: 406",
        permanent=True,
        attempt=0,
        owner_id=7,
        from_email="f@example.com",
        template_id=3,
        template_name="welcome",
        subject="Hi",
        requested_at=T.format(0),
    )
    row = run([failed])
    assert (row.owner_id, row.subject, row.template_name, row.created) == (7, "Hi", "welcome", T.format(0))
    assert row.recipients == ["ann@example.com", "bob@example.org"] and row.status == "failed"
    plain = EmailFailed(**{**vars(failed), "event_id": "f2", "owner_id": None})
    assert run([plain]).owner_id is None  # an ordinary failure waits for its request


def suppressed(recipients=("bob@example.org",), reasons=("bounce",), n=1):
    return EmailSuppressed(
        event_id=f"x{n}",
        correlation_id="c",
        occurred_at=T.format(n),
        email_id=1,
        request_event_id="r",
        recipients=recipients,
        reasons=reasons,
    )


def test_a_suppressed_recipient_shows_its_reason_in_the_row_and_the_history():
    row = run([requested(), sent(recipients=("Ann@example.com",))])
    changes = apply(row, suppressed(recipients=("Bob@Example.org",)))
    assert row.recipient_status["bob@example.org"] == {"status": "suppressed", "at": T.format(1), "reason": "bounce"}
    assert [(c.type, c.recipient, c.status, c.detail) for c in changes] == [
        ("email.suppressed", "bob@example.org", "suppressed", "bounce")
    ]
    assert row.status == "partially_failed"


def test_suppressed_in_any_order_and_twice_gives_the_same_row():
    events = [requested(), sent(recipients=("Ann@example.com",)), suppressed(), status("ann@example.com", "delivered")]
    expected = run(events)
    for order in itertools.permutations([*events, events[2]]):
        # The status sequence counts the changes this order made; the rest is the same row.
        assert dataclasses.replace(run(order), status_seq=expected.status_seq) == expected
    assert expected.recipient_status["bob@example.org"]["status"] == "suppressed"


def test_an_email_whose_recipients_are_all_suppressed_is_suppressed():
    both = suppressed(recipients=("Ann@example.com", "bob@example.org"), reasons=("unsubscribe", "spam_report"))
    row = run([both, requested()])
    assert row.status == "suppressed"
    assert {r: s["reason"] for r, s in row.recipient_status.items()} == {
        "ann@example.com": "unsubscribe",
        "bob@example.org": "spam_report",
    }


def test_a_suppressed_recipient_is_never_lowered_by_a_queued_request_applied_late():
    row = run([suppressed(), requested()])
    assert row.recipient_status["bob@example.org"]["status"] == "suppressed"


# Scheduled sends and cancelling ----------------------------------------------------------------

SEND_AT = "2026-11-27T10:00:05+00:00"


def scheduled():
    from core.contracts import EmailScheduled

    return EmailScheduled(
        event_id="sc",
        correlation_id="c",
        occurred_at=T.format(0),
        email_id=1,
        request_event_id="r",
        owner_id=7,
        from_email="f@example.com",
        template_id=3,
        template_name="welcome",
        subject="Hi",
        recipients=("Ann@example.com", "bob@example.org"),
        requested_at=T.format(0),
        send_at=SEND_AT,
    )


def scheduled_request():
    import dataclasses

    return dataclasses.replace(requested(), send_at=SEND_AT)


def cancelled():
    from core.contracts import EmailCancelled

    return EmailCancelled(
        event_id="x",
        correlation_id="c",
        occurred_at=T.format(3),
        email_id=1,
        request_event_id="r",
        recipients=("Ann@example.com", "bob@example.org"),
        cancelled_by=7,
    )


def test_a_scheduled_email_shows_scheduled_with_its_time_until_its_request_arrives():
    row = run([scheduled()])
    assert (row.status, row.owner_id, row.send_at, row.created) == ("scheduled", 7, SEND_AT, T.format(0))
    assert {r: s["status"] for r, s in row.recipient_status.items()} == {
        "ann@example.com": "scheduled",
        "bob@example.org": "scheduled",
    }


@pytest.mark.parametrize(
    "handoff, queued",
    [
        (0, SEND_AT),  # published at send_at
        (3, "2026-11-27T10:00:02+00:00"),  # published for its hand-off, 3 s before
        (120, T.format(0)),  # a hand-off before the request itself: queued when requested
    ],
)
def test_the_request_at_its_hand_off_moves_scheduled_to_queued_then_sent(settings, handoff, queued):
    settings.SCHEDULED_HANDOFF_SECONDS = handoff
    row = Row(id=1)
    apply(row, scheduled())
    changes = apply(row, scheduled_request())
    assert row.status == "queued" and [c.status for c in changes] == ["queued"]
    assert row.recipient_status["ann@example.com"] == {"status": "queued", "at": queued}
    apply(row, sent())
    assert row.status == "sent" and row.send_at == SEND_AT


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_scheduled_request_and_sent_in_any_order_end_the_same(order):
    events = [scheduled(), scheduled_request(), sent()]
    row = run([events[i] for i in order])
    assert row.status == "sent" and row.send_at == SEND_AT and row.created == T.format(0)
    assert {s["status"] for s in row.recipient_status.values()} == {"sent"}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_a_cancelled_email_stays_cancelled_whatever_arrives_when(order):
    # The request of a cancelled scheduled email is still published for its hand-off (the sender
    # acks it and sends nothing): it must not bring the email back.
    events = [scheduled(), cancelled(), scheduled_request()]
    row = run([events[i] for i in order])
    assert row.status == "cancelled"
    assert {s["status"] for s in row.recipient_status.values()} == {"cancelled"}


def test_cancelling_records_one_change_per_recipient():
    row = run([scheduled()])
    changes = apply(row, cancelled())
    assert [(c.recipient, c.status) for c in changes] == [
        ("ann@example.com", "cancelled"),
        ("bob@example.org", "cancelled"),
    ]
    assert apply(row, cancelled()) == []  # twice: nothing more


@pytest.mark.parametrize(
    "statuses, overall",
    [
        (["scheduled", "scheduled"], "scheduled"),
        (["cancelled", "cancelled"], "cancelled"),
        (["scheduled", "queued"], "queued"),
    ],
)
def test_overall_status_of_scheduled_and_cancelled(statuses, overall):
    assert overall_status(statuses) == overall


def test_the_request_of_a_cancelled_email_changes_nothing_and_takes_no_sequence_number():
    # Published for its hand-off all the same (the sender acks it): no `queued` after `cancelled`, for
    # the history or for the clients' webhooks, whose sequence numbers must only go forward.
    row = run([scheduled(), cancelled()])
    seq = row.status_seq
    assert apply(row, scheduled_request()) == []
    assert row.status_seq == seq and row.status == "cancelled"


def test_a_request_after_the_senders_outcome_records_no_queued():
    row = run([sent(), status("ann@example.com", "delivered")])
    seq = row.status_seq
    assert [c.status for c in apply(row, requested())] == []
    assert row.status_seq == seq
