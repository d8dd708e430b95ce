"""The Event Webhook notes the provider's reports on the sender's deliveries, in the transaction
that stores them: what settles a delivery in doubt without resending it."""

import json
import threading
import time

import psycopg2
import pytest
from django.db import connection

from command_api.webhooks.models import ProviderEvent
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.outbox.models import OutboxEvent
from tests.conftest import HOOK
from tests.factories import email_requested, sendgrid_event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def store():
    store = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel="outbox")
    yield store
    store.close()


def claimed(store, recipients):
    request = email_requested(recipients, email_id=41)
    store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    return request


def seen(request) -> dict[str, tuple[bool, str]]:
    return {
        d.recipient: (d.provider_seen_at is not None, d.provider_message_id)
        for d in Delivery.objects.filter(event_id=request.event_id)
    }


def post(api_client, signer, events):
    body = json.dumps(events)
    return api_client.post(HOOK, body, content_type="application/json", **signer(body))


def test_a_post_notes_its_reports_on_the_deliveries_once(api_client, signer, store):
    request = claimed(store, ["ann@example.com", "bob@example.org"])
    first = [sendgrid_event(request, "ann@example.com", "processed", message_id="m7")]
    assert post(api_client, signer, first).json()["accepted"] == 1
    # ann's delivery learnt it, with SendGrid's message id up to its first dot; bob's did not.
    assert seen(request) == {"ann@example.com": (True, "m7"), "bob@example.org": (False, "")}
    noted_at = Delivery.objects.get(event_id=request.event_id, recipient="ann@example.com").provider_seen_at
    # SendGrid retries the post, then reports `delivered`: ann keeps her first report.
    assert post(api_client, signer, first).json() == {"accepted": 0, "duplicates": 1, "ignored": 0, "rejected": 0}
    later = [sendgrid_event(request, "ann@example.com", "delivered", message_id="m8")]
    assert post(api_client, signer, later).json()["accepted"] == 1
    ann = Delivery.objects.get(event_id=request.event_id, recipient="ann@example.com")
    assert (ann.provider_seen_at, ann.provider_message_id) == (noted_at, "m7")
    assert ann.state == "sending"  # noting is all: its sender may still be at it


def test_the_reports_of_a_post_are_noted_with_its_events_or_not_at_all(api_client, signer, store):
    request = claimed(store, ["ann@example.com"])
    events = [sendgrid_event(request, "ann@example.com")]
    # The outbox refuses the statuses (another transaction holds its table): the post fails whole.
    blocker = psycopg2.connect(**_dsn())
    try:
        with blocker.cursor() as cursor, connection.cursor() as ours:
            cursor.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
            ours.execute("SET lock_timeout = '200ms'")
            try:
                answer = post(api_client, signer, events)
            finally:
                ours.execute("SET lock_timeout = 0")
    finally:
        blocker.close()
    assert answer.status_code == 503  # SendGrid posts it again later
    assert seen(request) == {"ann@example.com": (False, "")}
    assert not ProviderEvent.objects.exists()  # else its repeat would be a duplicate, never noted
    assert not OutboxEvent.objects.exclude(type="email.requested").exists()
    # SendGrid's next try goes through, noted.
    assert post(api_client, signer, events).json()["accepted"] == 1
    assert seen(request) == {"ann@example.com": (True, "m1")}


def _dsn() -> dict:
    params = connection.settings_dict
    return {
        "dbname": params["NAME"],
        "user": params["USER"],
        "host": params["HOST"],
        "port": params["PORT"],
        "password": params["PASSWORD"],
    }


def test_a_deadlock_costs_an_attempt_not_the_post(api_client, signer, store, monkeypatch):
    from command_api.webhooks import services

    request = claimed(store, ["ann@example.com"])
    event = sendgrid_event(request, "ann@example.com")
    runs, answers, errors = [], [], []
    monkeypatch.setattr(services, "_store", lambda *a, _store=services._store: runs.append(1) or _store(*a))

    def poster():
        try:
            with connection.cursor() as cursor:
                # Its deadlock check, which Postgres runs once, this long after it starts waiting,
                # must come after the other transaction waits too (superuser only: tests are).
                cursor.execute("SET deadlock_timeout = '3s'")
            answers.append(post(api_client, signer, [event]))
        except Exception as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection

    other = psycopg2.connect(**_dsn())
    try:
        with other.cursor() as cursor:
            # A cycle made up for the test: another transaction holds ann's delivery ...
            cursor.execute("SET deadlock_timeout = '60s'")  # the webhook's side finds the deadlock
            cursor.execute("UPDATE sender_delivery SET updated_at = now() WHERE event_id = %s", [request.event_id])
            thread = threading.Thread(target=poster)
            thread.start()
            # ... the webhook stored the event and waits for the delivery ...
            deadline = time.monotonic() + 10
            while not _blocked_by(cursor, other.get_backend_pid()):
                assert time.monotonic() < deadline, "the webhook never waited for the delivery"
                time.sleep(0.05)
            # ... and the other transaction now wants the event the webhook is storing. Postgres
            # ends the webhook's attempt; the other one goes on, then rolls back.
            cursor.execute(
                """
                INSERT INTO webhook_provider_event (provider_event_id, email_id, request_event_id, recipient, status,
                                                    provider_message_id, reason, reported_at, received_at, payload)
                VALUES (%s, 41, %s, 'ann@example.com', 'processed', '', '', now(), now(), '{}')
                ON CONFLICT DO NOTHING
                """,
                [event["sg_event_id"], request.event_id],
            )
            other.rollback()
        thread.join(timeout=30)
    finally:
        other.close()
    assert errors == []
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert len(runs) == 2  # the deadlocked attempt, and the one that went through
    assert seen(request) == {"ann@example.com": (True, "m1")}


def _blocked_by(cursor, pid: int) -> bool:
    """Whether a session of this database waits for a lock `pid` holds."""
    cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction sees one snapshot of it otherwise
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))",
        [pid],
    )
    return cursor.fetchone()[0] > 0


def test_a_message_id_longer_than_the_delivery_keeps_is_cut_not_the_post_refused(api_client, signer, store):
    request = claimed(store, ["ann@example.com"])
    long_id = "m" * 180  # SendGrid's are about 22 characters; the webhook takes up to 200 in all
    answer = post(api_client, signer, [sendgrid_event(request, "ann@example.com", message_id=long_id)])
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert seen(request) == {"ann@example.com": (True, long_id[:128])}
