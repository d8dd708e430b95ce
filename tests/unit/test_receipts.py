"""The provider's reports as the receipts statement takes them (core.deliveries.store)."""

import uuid

from core.deliveries.store import _noted, receipts_parameters

ANN = str(uuid.UUID(int=1))
BOB = str(uuid.UUID(int=2))


def report(event_id, recipient="ann@example.com", message_id="m1.filter0001.1.0", at="2026-11-30T10:00:00Z"):
    return {"event_id": event_id, "recipient": recipient, "message_id": message_id, "reported_at": at}


def test_each_pair_takes_its_first_report_whatever_the_case_of_its_event_id_with_its_position():
    reports = _noted(
        [
            report(BOB, message_id="m2.x"),
            report(ANN.upper(), message_id="m1.x", at="2026-11-30T10:00:01Z"),  # processed
            report(ANN, message_id="m9.x", at="2026-11-30T10:00:05Z"),  # delivered, later: not taken
            report(ANN, recipient="bob@example.org", message_id="m3.x"),
        ]
    )
    assert receipts_parameters(reports) == {
        "event_ids": [ANN, ANN, BOB],
        "recipients": ["ann@example.com", "bob@example.org", "ann@example.com"],
        "message_ids": ["m1", "m3", "m2"],
        "reported_ats": ["2026-11-30T10:00:01Z", "2026-11-30T10:00:00Z", "2026-11-30T10:00:00Z"],
        "positions": [2, 4, 1],
    }


def test_reports_that_cannot_name_a_delivery_are_left_out():
    kept = _noted(
        [
            report("not-a-uuid"),
            report(None),
            report(ANN, recipient=None),
            report(ANN, recipient=["ann@example.com"]),
            report(ANN, message_id=7),
            report(ANN, at=None),
            report(ANN, message_id="m" * 200),
        ]
    )
    assert [(r["event_id"], r["message_id"]) for r in kept] == [(ANN, "m" * 128)]
    assert receipts_parameters([])["positions"] == []
