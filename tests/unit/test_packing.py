"""What the relay publishes for a batch of rows, and each row's fate from its messages'."""

import json

from core.broker import EVENTS_BATCH, Topology
from outbox_relay.publisher import BatchResult, plan_messages
from outbox_relay.relay import _outcomes

TOPOLOGY = Topology(prefix="test-packing")


def row(n: int, event_type: str) -> tuple:
    payload = json.dumps({"type": event_type, "event_id": f"e{n}"})
    return (f"e{n}", event_type, payload, json.dumps({"correlation_id": f"c{n}"}))


ROWS = [row(1, "email.requested"), row(2, "email.sent"), row(3, "email.requested"), row(4, "email.scheduled")]


def test_requests_go_alone_too_and_every_row_goes_packed_in_claim_order():
    plan = plan_messages(ROWS, TOPOLOGY)
    alone = [m for m in plan.messages if m.message_id not in plan.packed]
    (packed,) = [m for m in plan.messages if m.message_id in plan.packed]
    assert [(m.message_id, m.routing_key, m.headers) for m in alone] == [
        ("e1", "email.requested", {"correlation_id": "c1"}),
        ("e3", "email.requested", {"correlation_id": "c3"}),
    ]
    assert packed.routing_key == EVENTS_BATCH and packed.headers == {"events": 4}
    assert [e["event_id"] for e in json.loads(packed.body)] == ["e1", "e2", "e3", "e4"]
    assert plan.carriers == {
        "e1": ("e1", packed.message_id),
        "e2": (packed.message_id,),
        "e3": ("e3", packed.message_id),
        "e4": (packed.message_id,),
    }


def test_a_row_is_published_only_when_every_message_carrying_it_was_confirmed():
    plan = plan_messages(ROWS, TOPOLOGY)
    (packed,) = plan.packed
    everything = BatchResult(confirmed=[m.message_id for m in plan.messages])
    assert _outcomes(plan, everything) == (["e1", "e2", "e3", "e4"], {}, [], "")
    # A request's own message lost: that request waits; the rows only the packed message carries go.
    assert _outcomes(plan, BatchResult(confirmed=["e3", packed], unconfirmed=["e1"])) == (
        ["e2", "e3", "e4"],
        {},
        ["e1"],
        "",
    )
    # The packed message nacked: every row waits, the requests already with the sender included.
    nacked = BatchResult(confirmed=["e1", "e3"], nacked=[packed])
    assert _outcomes(plan, nacked) == ([], {}, ["e1", "e2", "e3", "e4"], "")


def test_a_request_returned_alone_is_dead_and_a_returned_packed_message_only_waits():
    plan = plan_messages(ROWS, TOPOLOGY)
    (packed,) = plan.packed
    returned = BatchResult(confirmed=["e3", packed], returned={"e1": "312 NO_ROUTE"})
    assert _outcomes(plan, returned) == (["e2", "e3", "e4"], {"e1": "returned: 312 NO_ROUTE"}, [], "")
    returned = BatchResult(confirmed=["e1", "e3"], returned={packed: "312 NO_ROUTE"})
    assert _outcomes(plan, returned) == ([], {}, ["e1", "e2", "e3", "e4"], "312 NO_ROUTE")
