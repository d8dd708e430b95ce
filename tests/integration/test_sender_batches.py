"""The sender's claims and outcomes of threads that arrive together run as one statement
(core.deliveries.batching), against the real Postgres: each thread gets exactly what its own
statement would have given it, fencing and suppression included, and one bad item fails only
its own thread."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.contracts import EmailSent, event_from_dict
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.outbox.models import OutboxEvent
from core.suppressions.services import suppression_add
from tests.factories import UserFactory, email_requested

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def store():
    store = DeliveryStore(connection.settings_dict, pool_size=4, notify_channel="outbox")
    yield store
    store.close()


def request(owner_id: int, recipients, email_id: int, send_at: str = ""):
    return email_requested(
        recipients, correlation_id=f"corr-{email_id}", email_id=email_id, owner_id=owner_id, send_at=send_at
    )


def together(batch, calls: list) -> list:
    """Run each of `calls` on its own thread while `batch` is held, so that they all wait, then
    let them go: the first thread through takes them all. Returns each call's result (or error)."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as error:  # the test looks at it
            results[i] = error

    with batch.held():
        threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while batch.waiting() < len(calls):
            assert time.monotonic() < deadline, "the threads did not all submit"
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=10)
    return results


def claim(store, event, lease=30.0):
    return lambda: store.claim(event, lease_seconds=lease, resend_in_doubt=True, in_doubt_grace=0)


def test_claims_that_arrive_together_are_one_statement_and_each_gets_its_own(store):
    owner = UserFactory()
    suppression_add(owner_id=owner.pk, address="barred@example.com", reason="bounce")
    events = [request(owner.pk, [f"r{i}@example.com", f"s{i}@example.org"], email_id=i) for i in range(20)]
    events.append(request(owner.pk, ["ok@example.com", "barred@example.com"], email_id=99))

    claims = together(store._claims, [claim(store, e) for e in events])

    assert (store._claims.statements, store._claims.largest, store._claims.fallbacks) == (1, len(events), 0)
    for event, got in zip(events[:-1], claims[:-1], strict=True):
        assert got.claimed == {r: 1 for r in event.recipients}
        rows = Delivery.objects.filter(event_id=event.event_id)
        assert {str(row.claim_token) for row in rows} == {got.token}  # each email its own token
    last = claims[-1]
    assert last.claimed == {"ok@example.com": 1} and last.suppressed == {"barred@example.com": "bounce"}
    assert Delivery.objects.get(event_id=events[-1].event_id, recipient="barred@example.com").state == "suppressed"
    assert len({c.token for c in claims}) == len(events)


def test_the_same_email_twice_in_one_batch_is_claimed_once(store):
    owner = UserFactory()
    twice = request(owner.pk, ["ann@example.com"], email_id=1)
    others = [request(owner.pk, [f"r{i}@example.com"], email_id=10 + i) for i in range(5)]

    claims = together(store._claims, [claim(store, twice), *(claim(store, e) for e in others), claim(store, twice)])

    first, last = claims[0], claims[-1]
    assert sorted([len(first.claimed), len(last.claimed)]) == [0, 1]  # one holds it, the other sees it busy
    assert (first.busy or last.busy) == ["ann@example.com"]
    assert all(c.claimed for c in claims[1:-1])
    assert store._claims.statements == 2  # the second of the pair waited for a statement of its own


def test_outcomes_that_arrive_together_are_one_statement_and_a_lost_claim_is_still_fenced(store):
    owner = UserFactory()
    events = [request(owner.pk, [f"r{i}@example.com"], email_id=i) for i in range(10)]
    claims = [store.claim(e, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0) for e in events]
    # The first email's claim runs out and another sender takes it over.
    stale = events[0]
    Delivery.objects.filter(event_id=stale.event_id).update(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
    taken_over = store.claim(stale, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0)
    assert taken_over.claimed == {"r0@example.com": 2}

    def sent(event, token):
        return lambda: store.record_sent(
            event, list(event.recipients), token=token, message_id=f"m-{event.email_id}", attempt=1, provider="sendgrid"
        )

    written = together(store._outcomes, [sent(e, c.token) for e, c in zip(events, claims, strict=True)])

    assert (store._outcomes.statements, store._outcomes.largest, store._outcomes.fallbacks) == (1, 10, 0)
    assert written == [0] + [1] * 9  # the stale claim wrote nothing
    assert Delivery.objects.get(event_id=stale.event_id).state == "sending"  # still the new holder's
    for event in events[1:]:
        row = Delivery.objects.get(event_id=event.event_id)
        assert (row.state, row.provider_message_id, row.claim_token) == ("sent", f"m-{event.email_id}", None)
    outbox = [event_from_dict(row.payload) for row in OutboxEvent.objects.filter(type="email.sent")]
    assert sorted(e.email_id for e in outbox) == list(range(1, 10))  # one event each, none for the stale one
    assert all(isinstance(e, EmailSent) and e.recipients == (f"r{e.email_id}@example.com",) for e in outbox)
    row = OutboxEvent.objects.get(type="email.sent", aggregateid="3")
    assert row.headers["correlation_id"] == "corr-3"


def test_receipts_that_arrive_together_are_one_statement_and_each_counts_its_own(store):
    owner = UserFactory()
    events = [request(owner.pk, [f"r{i}@example.com", f"s{i}@example.org"], email_id=i) for i in range(8)]
    for event in events:
        store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0)
    Delivery.objects.filter(event_id=events[0].event_id).update(provider_seen_at=datetime.now(UTC))  # known already

    def receipts(event, recipients):
        return [
            {
                "event_id": event.event_id,
                "recipient": r,
                "message_id": f"m-{event.email_id}",
                "reported_at": "2026-11-30T10:00:00Z",
            }
            for r in recipients
        ]

    messages = [receipts(e, e.recipients) for e in events]
    messages.append(receipts(events[1], ["nobody@example.com"]))  # no such delivery
    counts = together(store._receipts, [lambda m=m: store.record_receipts(m) for m in messages])

    assert (store._receipts.statements, store._receipts.largest, store._receipts.fallbacks) == (1, len(messages), 0)
    assert counts == [0] + [2] * 7 + [0]
    assert Delivery.objects.filter(provider_seen_at__isnull=False).count() == 16
    for event in events[1:]:
        assert set(Delivery.objects.filter(event_id=event.event_id).values_list("provider_message_id", flat=True)) == {
            f"m-{event.email_id}"
        }


def test_a_pair_reported_twice_counts_once_and_keeps_its_first_report(store):
    owner = UserFactory()
    event = request(owner.pk, ["ann@example.com", "bob@example.org"], email_id=1)
    store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0)

    def report(recipient, message_id, event_id=event.event_id):
        return {
            "event_id": event_id,
            "recipient": recipient,
            "message_id": message_id,
            "reported_at": "2026-11-30T10:00:00Z",
        }

    messages = [
        [report("ann@example.com", "first"), report("ann@example.com", "second")],  # processed, then delivered
        [report("ann@example.com", "third"), report("bob@example.org", "fourth")],
        [report("bob@example.org", "m", event_id="not-a-uuid"), report("bob@example.org", "fifth")],
    ]
    counts = together(store._receipts, [lambda m=m: store.record_receipts(m) for m in messages])

    assert counts == [1, 1, 0] and store._receipts.fallbacks == 0
    rows = dict(Delivery.objects.filter(event_id=event.event_id).values_list("recipient", "provider_message_id"))
    assert rows == {"ann@example.com": "first", "bob@example.org": "fourth"}
    assert store.record_receipts(messages[0]) == 0  # known already
    assert store.record_receipts([report("ann@example.com", "m", event_id=None)]) == 0  # names nothing of ours


def test_one_bad_item_fails_only_its_own_thread(store):
    owner = UserFactory()
    good = [request(owner.pk, [f"r{i}@example.com"], email_id=i) for i in range(5)]
    bad = request(owner.pk, ["nul\x00@example.com"], email_id=50)  # Postgres text refuses NUL

    claims = together(store._claims, [claim(store, e) for e in [*good[:2], bad, *good[2:]]])

    assert store._claims.fallbacks == 1  # the batch was refused, then each ran alone
    assert isinstance(claims[2], ValueError)
    assert all(c.claimed for i, c in enumerate(claims) if i != 2)
    assert Delivery.objects.filter(state="sending").count() == 5


def test_a_statement_writes_at_most_batch_rows_deliveries(store):
    from core.deliveries.store import BATCH_ROWS

    owner = UserFactory()
    per_email = BATCH_ROWS * 2 // 5  # two emails fit in a statement, a third does not
    events = [request(owner.pk, [f"r{n}-{i}@example.com" for n in range(per_email)], email_id=i) for i in range(5)]

    claims = together(store._claims, [claim(store, e) for e in events])

    assert all(len(c.claimed) == per_email for c in claims)
    assert (store._claims.statements, store._claims.largest, store._claims.fallbacks) == (3, 2, 0)


def test_each_email_in_a_batch_keeps_its_own_grace_for_a_delivery_in_doubt(store):
    """The grace of a delivery in doubt counts from the later of its last attempt and the email's
    own send_at: in one batch, a scheduled email still within it is not taken again, and an email
    sent at once, past its grace, is."""
    owner = UserFactory()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = request(owner.pk, ["ann@example.com"], email_id=1, send_at=later)
    at_once = request(owner.pk, ["bob@example.com"], email_id=2)
    for event in (scheduled, at_once):  # claimed, then in doubt (a timeout) a minute ago
        store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0)
        a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
        Delivery.objects.filter(event_id=event.event_id).update(
            state="unknown", lease_until=a_minute_ago, updated_at=a_minute_ago
        )

    def again(event):
        return lambda: store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=30)

    first, second = together(store._claims, [again(scheduled), again(at_once)])

    assert (store._claims.largest, store._claims.fallbacks) == (2, 0)
    assert first.claimed == {} and first.waiting == ["ann@example.com"]  # its grace runs from send_at
    assert second.claimed == {"bob@example.com": 2}


def test_the_sender_s_linger_reaches_its_claims_and_outcomes_not_its_receipts():
    store = DeliveryStore(connection.settings_dict, pool_size=4, notify_channel=None, linger_ms=10)
    try:
        assert (store._claims._linger, store._outcomes._linger, store._receipts._linger) == (0.01, 0.01, 0.0)
    finally:
        store.close()


def test_under_load_claims_arriving_during_the_linger_share_one_statement():
    """With a linger, after a statement of several claims, the next claims that arrive within it
    go as one statement, each with its own rows and token."""
    store = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel="outbox", linger_ms=500)
    try:
        owner = UserFactory()
        first = [request(owner.pk, [f"a{i}@example.com"], email_id=i) for i in range(2)]
        together(store._claims, [claim(store, e) for e in first])  # two at once: under load
        later = [request(owner.pk, [f"b{i}@example.com", f"c{i}@example.org"], email_id=10 + i) for i in range(3)]
        results: list = [None] * len(later)

        def run(i):
            results[i] = claim(store, later[i])()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(later))]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=30)

        assert (store._claims.statements, store._claims.largest) == (2, 3)
        for event, got in zip(later, results, strict=True):
            assert got.claimed == {r: 1 for r in event.recipients}
            rows = Delivery.objects.filter(event_id=event.event_id)
            assert {str(row.claim_token) for row in rows} == {got.token}
    finally:
        store.close()
