"""The owner's cancel against the sender's claim at the same moment, 1,000 times, on the real
Postgres: exactly one of them wins every time, for every recipient of the email at once.

The claim runs through DeliveryStore (its own pooled connection, autocommit, as in the sender)
in one thread, the cancel service (Django's connection, its own transaction) in another; a
barrier lines them up, and a random delay of up to a few milliseconds on the claim's side moves
its start across the whole of the cancel, so some of the pairs overlap inside Postgres."""

import random
import threading

import pytest
from django.db import connection
from django.utils import timezone

from command_api.emails import services
from core.contracts import EmailRequested
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.errors import ApplicationError
from core.outbox.models import OutboxEvent
from core.suppressions.models import Suppression
from tests.factories import EmailTemplateFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

RACES = 1000
RECIPIENTS = ("ann@example.com", "bob@example.org", "carl@example.net", "dora@example.com")


def _emails(owner, count: int) -> list[EmailRequested]:
    template = EmailTemplateFactory()
    for n in range(count):
        services.sent_email_create(
            sender=owner, template_id=template.pk, recipients=list(RECIPIENTS), context={"name": n}, correlation_id="r"
        )
    rows = OutboxEvent.objects.filter(type="email.requested").order_by("created_at")
    return [EmailRequested.from_dict(row.payload) for row in rows]


@pytest.mark.parametrize(
    ("races", "suppressed"),
    [(RACES, ()), (300, ("bob@example.org",))],
    ids=["plain", "one-recipient-suppressed"],
)
def test_cancel_and_claim_racing_have_exactly_one_winner_for_the_whole_email(races, suppressed):
    owner = UserFactory()
    # A suppressed recipient makes the claim two statements (the second suppresses it): the cancel
    # still wins all or nothing, and the two never deadlock.
    for address in suppressed:
        Suppression.objects.create(owner=owner, address=address, reason="bounce")
    requests = _emails(owner, races)
    store = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)
    barrier = threading.Barrier(2, timeout=30)
    claimed: dict[int, int] = {}
    cancelled: dict[int, bool] = {}
    errors: list[BaseException] = []

    def claimer():
        try:
            for request in requests:
                barrier.wait()
                delay = random.uniform(0, 0.004)
                if delay > 0.001:
                    threading.Event().wait(delay - 0.001)
                claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
                claimed[request.email_id] = len(claim.claimed)
                if claim.claimed:  # what the sender does next when it won: the provider, then this
                    store.record_sent(
                        request, list(claim.claimed), token=claim.token, message_id="m", attempt=1, provider="race"
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    def canceller():
        from command_api.emails.models import SentEmail

        try:
            for request in requests:
                email = SentEmail.objects.get(pk=request.email_id)  # before the barrier: the API's own lookup
                barrier.wait()
                try:
                    services.sent_email_cancel(email=email, user=owner, correlation_id="race")
                    cancelled[request.email_id] = True
                except ApplicationError as exc:
                    assert exc.status_code == 409, exc
                    cancelled[request.email_id] = False
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=claimer), threading.Thread(target=canceller)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        store.close()
    assert not errors, errors
    assert len(claimed) == len(cancelled) == races

    states: dict[int, dict[str, str]] = {}
    for email_id, recipient, state in Delivery.objects.values_list("email_id", "recipient", "state"):
        states.setdefault(email_id, {})[recipient] = state
    cancel_events = set(OutboxEvent.objects.filter(type="email.cancelled").values_list("aggregateid", flat=True))
    sent_events = set(OutboxEvent.objects.filter(type="email.sent").values_list("aggregateid", flat=True))
    for request in requests:
        email_id = request.email_id
        won_by_cancel = cancelled[email_id]
        # Exactly one winner, and it took every recipient: never a mix, never both, never neither.
        assert claimed[email_id] == (0 if won_by_cancel else len(RECIPIENTS) - len(suppressed)), (
            email_id,
            claimed[email_id],
        )
        expected = {
            r: "cancelled" if won_by_cancel else "suppressed" if r in suppressed else "sent" for r in RECIPIENTS
        }
        assert states[email_id] == expected, (email_id, states[email_id])
        assert (str(email_id) in cancel_events) is won_by_cancel
        assert (str(email_id) in sent_events) is not won_by_cancel

    wins = sum(cancelled.values())
    print(f"\n{races} races at {timezone.now():%H:%M:%S}: the cancel won {wins}, the claim won {races - wins}")
    # A race both sides can win, or the test proves nothing about the moment they meet.
    assert 0 < wins < races
