"""The sender against the real Postgres and RabbitMQ, and the fake SendGrid. These tests commit
(transaction=True): the sender's store and processes use connections of their own."""

import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from core.contracts import (
    EmailDeliveryStatus,
    EmailDeliveryStatuses,
    EmailFailed,
    EmailRequested,
    EmailSent,
    event_from_dict,
)
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.outbox.models import OutboxEvent
from sender.handlers import ACK, BAD_KEY_PAUSE, RETRY, Policy, handle_email_requested, next_delay
from sender.provider import SendGridProvider
from tests import broker
from tests.broker import free_port
from tests.conftest import HOOK, client_for, golden
from tests.factories import EmailTemplateFactory, UserFactory, email_requested, sendgrid_event

pytestmark = pytest.mark.django_db(transaction=True)
# Short waits: a schedule of 3 tiers (4 attempts), no jitter, a grace of 0.5 s.
POLICY = Policy(schedule=(0.05, 0.05, 0.05), lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5, jitter=0)


@pytest.fixture
def store():
    store = DeliveryStore(connection.settings_dict, pool_size=4, notify_channel="outbox")
    yield store
    store.close()


@pytest.fixture
def provider(fake_sendgrid):
    fake, url = fake_sendgrid
    return SendGridProvider(api_key="SG.fake-key", host=url, timeout=2)


def request(recipients=("ann@example.com", "bob@example.org", "carl@example.net"), email_id=1) -> EmailRequested:
    return email_requested(recipients, email_id=email_id, reply_to="owner@example.com")


def calls(fake) -> list[dict]:
    return list(fake.messages)


def status_events(kind=None) -> list:
    rows = OutboxEvent.objects.exclude(type="email.requested").order_by("created_at")
    return [event_from_dict(row.payload) for row in rows if kind is None or row.type == kind]


def states(event) -> dict[str, tuple[str, int]]:
    return {d.recipient: (d.state, d.attempts) for d in Delivery.objects.filter(event_id=event.event_id)}


def armed(event) -> OutboxEvent | None:
    """The request's outbox row, when it waits to be published again."""
    return OutboxEvent.objects.filter(id=event.event_id, published_at__isnull=True, failed_at__isnull=True).first()


def handle(event, provider, store, policy=POLICY):
    return handle_email_requested(event, provider=provider, store=store, policy=policy)


# The handler: claim, call, record -----------------------------------------------------------


def test_three_recipients_go_in_one_call_with_three_personalizations(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    event = request()
    assert handle(event, provider, store).action == ACK
    (call,) = calls(fake)
    assert [p["to"] for p in call["personalizations"]] and len(call["personalizations"]) == 3
    assert all(len(p["to"]) == 1 for p in call["personalizations"])
    assert {r["custom_args"]["event_id"] for r in call["recipients"]} == {event.event_id}
    assert states(event) == {r: ("sent", 1) for r in event.recipients}
    (sent,) = status_events()
    assert isinstance(sent, EmailSent) and sent.provider_message_id == call["message_id"]
    assert set(sent.recipients) == set(event.recipients) and sent.request_event_id == event.event_id
    row = OutboxEvent.objects.get(type="email.sent")
    assert set(row.payload) == set(golden("email.sent", 1))  # the producer side of the contract
    assert row.aggregateid == str(event.email_id) and row.headers["correlation_id"] == "corr-1"
    assert armed(event) is None  # nothing left to do: no outbox row armed for it


def test_the_consumer_reads_the_golden_request():
    event = EmailRequested.from_dict(golden("email.requested", 1))
    assert event.recipients == ("ann@example.com", "bob@example.org")


def test_the_same_event_twice_makes_one_call(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    event = request()
    handle(event, provider, store)
    assert handle(event, provider, store).action == ACK
    assert len(calls(fake)) == 1 and len(status_events()) == 1


def test_429_pauses_every_sender_gives_the_attempt_back_and_arms_the_retry(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    fake.faults.update({"script": [429], "retry_after": 1})
    event = request(["ann@example.com"])
    assert handle(event, provider, store).action == ACK
    assert states(event) == {"ann@example.com": ("retry", 0)}  # Retry-After spends no attempt
    delivery = Delivery.objects.get(event_id=event.event_id)
    assert 0.8 <= (delivery.next_attempt_at - datetime.now(UTC)).total_seconds() <= 1.1
    assert abs((armed(event).not_before - delivery.next_attempt_at).total_seconds()) < 0.01
    other_sender = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)
    try:
        assert other_sender.paused_for() > 0  # a second sender honours the pause too
        paused = handle(request(["zed@example.com"]), provider, other_sender)
        assert paused.action == RETRY and "wait" in paused.reason
    finally:
        other_sender.close()
    assert handle(event, provider, store).action == RETRY and states(event)["ann@example.com"] == ("retry", 0)
    assert fake.stats["status_429"] == 1 and fake.stats["messages"] == 0
    time.sleep(1.2)
    assert handle(event, provider, store).action == ACK
    assert states(event) == {"ann@example.com": ("sent", 1)}


def test_500_twice_then_success_each_retry_armed_in_the_outbox(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    fake.faults.update({"script": [500, 500]})
    event = request(["ann@example.com"])
    # Tiers long enough that "not due yet" holds on a loaded machine, short enough to wait out.
    policy = Policy(schedule=(0.5, 0.5, 0.5), lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5, jitter=0)
    for attempt in (1, 2):
        assert handle(event, provider, store, policy).action == ACK
        assert states(event) == {"ann@example.com": ("retry", attempt)}
        assert armed(event) is not None and armed(event).last_error == "next attempt"
        early = handle(event, provider, store, policy)
        assert early.action == ACK and fake.stats.get("status_500", 0) == attempt  # not due yet: no call
        time.sleep(0.55)
    assert handle(event, provider, store, policy).action == ACK
    assert states(event) == {"ann@example.com": ("sent", 3)}
    assert [type(e) for e in status_events()] == [EmailSent] and status_events()[0].attempt == 3


def test_the_default_schedule_rides_out_a_day_and_retries_never_sooner_than_asked():
    from django.conf import settings

    default = Policy(schedule=settings.SENDER_RETRY_SCHEDULE)
    assert sum(default.schedule) * (1 - default.jitter) >= 24 * 3600
    assert default.max_attempts == len(default.schedule) + 1 == 13
    assert all(8 <= next_delay(1, default) <= 12 for _ in range(50))  # 10 s, ±20%
    assert all(0.8 * 28800 <= next_delay(40, default) <= 1.2 * 28800 for _ in range(50))  # the last tier
    assert next_delay(1, default, retry_after=60) == 60


def test_a_permanent_400_fails_the_email_with_the_reason(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    fake.faults.update({"reject_pattern": "^bob@"})
    event = request(["ann@example.com", "bob@example.org"])
    assert handle(event, provider, store).action == ACK
    (failed,) = status_events()
    assert isinstance(failed, EmailFailed) and failed.permanent
    assert failed.reason == "400: The to email does not contain a valid address."
    assert states(event) == {"ann@example.com": ("failed", 1), "bob@example.org": ("failed", 1)}
    row = OutboxEvent.objects.get(type="email.failed")
    assert set(row.payload) == set(golden("email.failed", 1))


def test_a_bad_key_stops_sending_and_fails_nothing(fake_sendgrid, store):
    fake, url = fake_sendgrid
    bad = SendGridProvider(api_key="SG.revoked", host=url, timeout=2)
    event = request(["ann@example.com"])
    assert handle(event, bad, store).action == BAD_KEY_PAUSE
    assert states(event) == {"ann@example.com": ("retry", 0)}  # the attempt is given back
    assert status_events() == []
    assert bad.check_key() is False
    assert SendGridProvider(api_key="SG.read-only", host=url, timeout=2).check_key() is False
    assert SendGridProvider(api_key="SG.fake-key", host=url, timeout=2).check_key() is True


def test_the_schedule_runs_out_then_the_email_fails_with_the_reason(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    fake.faults.update({"rate_500": 1.0})
    event = request(["ann@example.com"])
    for _ in range(POLICY.max_attempts):
        assert handle(event, provider, store).action == ACK
        time.sleep(0.06)
    (failed,) = status_events()
    assert not failed.permanent and failed.reason.startswith("gave up after 4 attempts: 500")
    assert states(event) == {"ann@example.com": ("failed", 4)} and fake.stats["status_500"] == 4


class CrashingProvider:
    """A provider with a bug: its send raises before any request goes out."""

    name = "sendgrid"

    def __init__(self):
        self.calls = 0

    def send(self, event, recipients):
        self.calls += 1
        raise RuntimeError("a bug in the provider adapter")


def test_an_exception_after_the_claim_counts_as_an_attempt_and_the_schedule_ends_it(store):
    crashing = CrashingProvider()
    event = request(["ann@example.com"])
    no_grace = Policy(schedule=(0.05, 0.05), lease_seconds=30, in_doubt_grace=0, jitter=0)
    for _ in range(no_grace.max_attempts + 2):
        assert handle(event, crashing, store, no_grace).action == ACK
        time.sleep(0.06)
    assert crashing.calls == no_grace.max_attempts  # then the claim itself gives up
    (failed,) = status_events()
    assert failed.reason.startswith("gave up after 3 attempts: crashed: RuntimeError")
    assert states(event) == {"ann@example.com": ("failed", 3)}


def test_an_outcome_write_of_a_claim_that_lost_its_lease_is_fenced(fake_sendgrid, provider, store):
    event = request(["ann@example.com"])
    stalled = store.claim(event, lease_seconds=0.1, resend_in_doubt=True, in_doubt_grace=0)  # then it stalls
    time.sleep(0.2)
    assert handle(event, provider, store, Policy(in_doubt_grace=0)).action == ACK  # another sender takes over
    assert states(event) == {"ann@example.com": ("sent", 2)}
    # The stalled sender wakes up and records its own (different) outcome: refused.
    assert (
        store.record_failed(
            event,
            ["ann@example.com"],
            token=stalled.token,
            reason="late",
            permanent=True,
            attempt=1,
            provider="sendgrid",
        )
        == 0
    )
    assert states(event) == {"ann@example.com": ("sent", 2)} and len(status_events("email.failed")) == 0


def test_a_send_in_doubt_the_provider_reported_on_is_sent_never_resent(
    fake_sendgrid, provider, store, api_client, signer
):
    fake, _ = fake_sendgrid
    event = request(["ann@example.com", "bob@example.org"])
    claim = store.claim(event, lease_seconds=0.2, resend_in_doubt=True, in_doubt_grace=0)
    answer = provider.send(event, list(event.recipients))  # SendGrid took it (202) ...
    assert answer.kind == "sent"  # ... and the sender died before its commit
    # The provider's Event Webhook posts `processed` for ann: stored, and noted on her delivery in
    # the same transaction.
    body = json.dumps([sendgrid_event(event, "ann@example.com", "processed", message_id=answer.message_id)])
    assert api_client.post(HOOK, body, content_type="application/json", **signer(body)).json()["accepted"] == 1
    ann = Delivery.objects.get(event_id=event.event_id, recipient="ann@example.com")
    assert ann.provider_seen_at is not None and ann.provider_message_id == answer.message_id
    time.sleep(0.3)  # the dead sender's lease runs out
    assert handle(event, provider, store).action == ACK
    assert states(event)["ann@example.com"] == ("sent", 1) and len(calls(fake)) == 1
    (sent,) = status_events("email.sent")
    assert sent.recipients == ("ann@example.com",) and sent.provider_message_id == answer.message_id
    # bob: no word yet, within the grace: not resent, the event armed for when the grace ends.
    assert states(event)["bob@example.org"][0] == "sending" and armed(event) is not None
    assert claim.token  # (the dead sender's claim)
    time.sleep(0.5)
    assert handle(event, provider, store).action == ACK  # the grace passed with no word: sent again
    assert states(event)["bob@example.org"] == ("sent", 2) and len(calls(fake)) == 2


def test_a_timeout_is_in_doubt_and_held_for_ops_under_the_hold_policy(fake_sendgrid, store):
    fake, url = fake_sendgrid
    fake.faults.update({"script": ["timeout"], "timeout_seconds": 0.6})
    provider = SendGridProvider(api_key="SG.fake-key", host=url, timeout=0.3)
    hold = Policy(lease_seconds=30, resend_in_doubt=False, in_doubt_grace=0.2)
    event = request(["ann@example.com"])
    assert handle(event, provider, store, hold).action == ACK
    assert states(event) == {"ann@example.com": ("unknown", 1)} and armed(event) is not None
    time.sleep(0.3)
    assert handle(event, provider, store, hold).action == ACK
    assert states(event) == {"ann@example.com": ("held", 1)}
    assert handle(event, provider, store, hold).action == ACK
    assert len(calls(fake)) <= 1 and status_events() == []


def test_a_crash_after_the_call_leaves_a_lease_that_another_sender_waits_out(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    event = request(["ann@example.com"])
    store.claim(event, lease_seconds=0.5, resend_in_doubt=True, in_doubt_grace=0)  # a sender claimed, then died
    assert handle(event, provider, store, Policy(lease_seconds=0.5, in_doubt_grace=0)).action == ACK
    assert calls(fake) == [] and armed(event) is not None  # due again when the lease runs out
    assert armed(event).not_before == Delivery.objects.get(event_id=event.event_id).lease_until
    time.sleep(0.6)
    assert handle(event, provider, store, Policy(lease_seconds=0.5, in_doubt_grace=0)).action == ACK
    assert states(event) == {"ann@example.com": ("sent", 2)}


@override_settings(SEND_MAX_RECIPIENTS=2000)
def test_1500_recipients_go_in_two_calls_of_at_most_1000(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    client = client_for(UserFactory())
    recipients = [f"r{i}@example.com" for i in range(1500)]
    response = client.post(
        "/api/v1/emails/sent-email/",
        {"recipients": recipients, "template": EmailTemplateFactory().pk, "context": {"name": "All"}},
        format="json",
    )
    assert response.status_code == 202
    event = EmailRequested.from_dict(OutboxEvent.objects.get(type="email.requested").payload)
    assert handle(event, provider, store).action == ACK
    sizes = sorted(len(call["personalizations"]) for call in calls(fake))
    assert sizes == [500, 1000]
    assert {r["email"] for call in calls(fake) for r in call["recipients"]} == set(recipients)
    assert sorted(len(e.recipients) for e in status_events()) == [500, 1000]


# The process: AMQP, retries through delay queues, pauses, SIGTERM -----------------------------


def send_event(topology, event: EmailRequested, times: int = 1) -> None:
    for _ in range(times):
        broker.publish(topology, event.to_dict(), message_id=event.event_id)


def processed_report(event, provider_message_id: str) -> EmailDeliveryStatus:
    """SendGrid's `processed` for ann@example.com of `event`, as the webhook relays it."""
    return EmailDeliveryStatus(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at="2026-11-30T10:00:01+00:00",
        email_id=1,
        request_event_id=event.event_id,
        recipient="ann@example.com",
        status="processed",
        provider="sendgrid",
        provider_event_id="sg-1",
        provider_message_id=provider_message_id,
        reason="",
        reported_at="2026-11-30T10:00:00+00:00",
    )


def delivered(event) -> bool:
    now = states(event)  # read once: a claim's rows may appear between two reads
    return len(now) == len(event.recipients) and all(state == "sent" for state, _ in now.values())


def test_the_sender_process_delivers_once_even_when_the_event_comes_twice(topology, senders, fake_sendgrid):
    fake, _ = fake_sendgrid
    sender = senders(topology)
    sender.wait_ready()
    event = request()
    send_event(topology, event, times=2)
    broker.wait_for(lambda: delivered(event), timeout=15, message="delivery")
    broker.wait_for(lambda: broker.queue_depth(topology.queue("sender")) == 0, timeout=10, message="acks")
    time.sleep(0.5)
    assert len(calls(fake)) == 1
    assert sender.get("/readyz")[0] == 200
    assert "sender_sent_recipients_total 3.0" in sender.get("/metrics")[1]


def test_a_replay_through_the_relay_makes_no_second_call(topology, senders, relays, fake_sendgrid):
    fake, _ = fake_sendgrid
    senders(topology).wait_ready()
    relays(topology).wait_ready()
    response = client_for(UserFactory()).post(
        "/api/v1/emails/sent-email/",
        {"recipients": ["ann@example.com"], "template": EmailTemplateFactory().pk},
        format="json",
    )
    email_id = str(response.json()["id"])
    broker.wait_for(
        lambda: OutboxEvent.objects.filter(type="email.sent", published_at__isnull=False).exists(),
        timeout=20,
        message="sent and its status published",
    )
    from core.outbox.selectors import OutboxFilter
    from core.outbox.services import outbox_replay

    assert (
        outbox_replay(
            selection=OutboxFilter(aggregate_id=email_id, event_type="email.requested"), actor="test", via="cli"
        ).count
        == 1
    )
    broker.wait_for(
        lambda: OutboxEvent.objects.get(type="email.requested").published_at is not None,
        timeout=10,
        message="the replay published",
    )
    broker.wait_for(lambda: broker.queue_depth(topology.queue("sender")) == 0, timeout=10, message="replay consumed")
    time.sleep(0.5)
    assert len(calls(fake)) == 1
    assert OutboxEvent.objects.filter(type="email.sent").count() == 1


def test_a_poison_message_goes_to_the_dead_letter_queue_at_once_and_is_kept(topology, senders, fake_sendgrid):
    from core.outbox.models import DeadLetter

    sender = senders(topology)
    sender.wait_ready()
    broker.publish(topology, {}, message_id="poison-1", raw=b"{not json")
    broker.publish(topology, {"type": "email.requested", "schema_version": 99}, message_id="poison-2")
    broker.wait_for(lambda: DeadLetter.objects.count() == 2, timeout=15, message="both kept")
    assert sorted(DeadLetter.objects.values_list("message_id", "reason", "resolution")) == [
        ("poison-1", "rejected", "parked"),
        ("poison-2", "rejected", "parked"),
    ]
    assert sender.events().count("poison_message_dead_lettered") == 2
    assert broker.queue_depth(topology.dead_letter_queue("sender")) == 0


def test_a_request_that_reached_the_delivery_limit_fails_its_recipients_with_the_reason(
    topology, senders, fake_sendgrid
):
    # A message that breaks its consumer every time (here: a consumer that returns it) dies after
    # the queue's delivery limit, as RabbitMQ itself decides; the sender's keeper then fails its
    # unfinished recipients with the reason, so the email does not wait forever, and keeps it.
    from core.outbox.models import DeadLetter

    event = request(["ann@example.com", "bob@example.org"])
    send_event(topology, event)
    conn = broker.blocking_connection()
    try:
        channel = conn.channel()
        for _ in range(topology.consumer("sender").delivery_limit + 1):
            method, _, _ = channel.basic_get(topology.queue("sender"))
            if method is None:
                break
            channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        conn.close()
    broker.wait_for(
        lambda: broker.queue_depth(topology.dead_letter_queue("sender")) == 1,
        timeout=10,
        message="dead-lettered by RabbitMQ",
    )
    senders(topology).wait_ready()
    broker.wait_for(lambda: DeadLetter.objects.exists(), timeout=15, message="kept")
    kept = DeadLetter.objects.get()
    assert (kept.message_id, kept.reason, kept.resolution, kept.email_id) == (
        event.event_id,
        "delivery_limit",
        "failed",
        1,
    )
    assert states(event) == {"ann@example.com": ("failed", 0), "bob@example.org": ("failed", 0)}
    (failed,) = status_events("email.failed")
    assert failed.reason.startswith("dead-lettered (delivery_limit") and set(failed.recipients) == set(event.recipients)
    assert calls(fake_sendgrid[0]) == []


def test_transient_errors_retry_through_the_outbox(topology, senders, relays, fake_sendgrid):
    fake, _ = fake_sendgrid
    fake.faults.update({"script": [429, 500], "retry_after": 1})
    sender = senders(topology)
    relays(topology).wait_ready()
    sender.wait_ready()
    event = request(["ann@example.com"])
    send_event(topology, event)
    broker.wait_for(lambda: delivered(event), timeout=30, message="delivery after retries")
    assert states(event) == {"ann@example.com": ("sent", 2)}  # the 429 gave its attempt back
    assert fake.stats["status_429"] == 1 and fake.stats["status_500"] == 1 and len(calls(fake)) == 1
    assert sender.events().count("email_retry_scheduled") == 1 and "email_rate_limited" in sender.events()
    # The retries went out as the same event, through the request's own outbox row.
    assert OutboxEvent.objects.get(id=event.event_id).published_at is not None


def test_a_message_on_its_last_delivery_is_refreshed_not_dead_lettered(topology, senders, fake_sendgrid):
    # RabbitMQ 3.x counts every return towards the delivery limit, a closed connection's too: a
    # message handed over near the limit is published afresh (confirmed) and acked as it arrives.
    fake, _ = fake_sendgrid
    sender = senders(topology)
    sender.wait_ready()
    event = request(["ann@example.com"])
    limit = topology.consumer("sender").delivery_limit
    broker.publish(topology, event.to_dict(), message_id=event.event_id, headers={"x-delivery-count": limit - 1})
    broker.wait_for(lambda: delivered(event), timeout=20, message="the fresh copy delivered")
    assert sender.events().count("message_refreshed_before_delivery_limit") == 1
    assert len(calls(fake)) == 1 and broker.queue_depth(topology.dead_letter_queue("sender")) == 0


def test_a_connection_the_broker_closes_during_a_refresh_is_an_outage_not_a_crash(
    topology, fake_sendgrid, store, provider, monkeypatch
):
    # The refresh's publish meets the broker's close inside the delivery callback and handles it
    # there; the loop must then reconnect, not call into the closed connection and die.
    import subprocess

    from core.worker_http import Health
    from sender import consumer

    fake, _ = fake_sendgrid
    closes = []

    def refresh_as_the_broker_closes(channel, queue, properties, body):
        if not closes:
            closes.append(
                subprocess.run(
                    ["rabbitmqctl", "-q", "close_all_connections", "test: close during refresh"],
                    capture_output=True,
                    timeout=60,
                ).returncode
            )
        return real_refresh(channel, queue, properties, body)

    real_refresh = consumer.refresh
    monkeypatch.setattr(consumer, "refresh", refresh_as_the_broker_closes)
    config = consumer.SenderWorkerConfig(broker_url=settings.RABBITMQ_URL, prefetch=10, concurrency=2)
    worker = consumer.SenderWorker(
        config=config, topology=topology, provider=provider, store=store, policy=POLICY, health=Health()
    )
    worker._keeper.interval = 3600  # its first poll only: no later frame of its own finds the closed connection
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("exit", worker.run()), daemon=True)
    thread.start()
    event = request(["ann@example.com"])
    try:
        broker.wait_for(lambda: broker.consumer_count(topology.queue("sender")) == 1, timeout=10, message="consuming")
        time.sleep(0.5)
        broker.publish(
            topology,
            event.to_dict(),
            message_id=event.event_id,
            headers={"x-delivery-count": topology.consumer("sender").delivery_limit - 1},
        )
        broker.wait_for(lambda: delivered(event) or not thread.is_alive(), timeout=30, message="delivered")
        assert thread.is_alive(), "the sender's loop died on the closed connection"
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert closes == [0] and outcome == {"exit": 0}
    assert delivered(event) and len(calls(fake)) == 1


def test_a_report_an_earlier_release_queued_on_its_last_delivery_is_refreshed_not_dead_lettered(
    topology, senders, fake_sendgrid, store
):
    sender = senders(topology)
    sender.wait_ready()
    event = request(["ann@example.com"])
    store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    report = processed_report(event, "m9.filter0001.1.0")
    limit = topology.consumer("sender-receipts").delivery_limit
    broker.publish(
        topology,
        report.to_dict(),
        message_id=report.event_id,
        routing_key=report.TYPE,
        headers={"x-delivery-count": limit - 1},
        queue=topology.queue("sender-receipts"),
    )
    broker.wait_for(
        lambda: Delivery.objects.get(event_id=event.event_id).provider_seen_at is not None,
        timeout=15,
        message="noted from the fresh copy",
    )
    assert sender.events().count("message_refreshed_before_delivery_limit") == 1
    assert broker.queue_depth(topology.dead_letter_queue("sender-receipts")) == 0


def test_the_reports_an_earlier_release_queued_for_the_sender_still_reach_the_deliveries(
    topology, senders, fake_sendgrid, store, provider
):
    # Earlier releases routed the webhook's statuses to the sender-receipts queue; the sender
    # drains what is left there (the webhook now notes the reports itself).
    sender = senders(topology)
    sender.wait_ready()
    event = request(["ann@example.com", "bob@example.org"])
    store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    items = [processed_report(event, "m123.filter0001.1.0").to_dict()]
    batch = EmailDeliveryStatuses(
        event_id=str(uuid.uuid4()), correlation_id="c", occurred_at="2026-11-30T10:00:01+00:00", statuses=tuple(items)
    )
    broker.publish(
        topology,
        batch.to_dict(),
        message_id=batch.event_id,
        routing_key="email.delivery_statuses",
        queue=topology.queue("sender-receipts"),
    )
    broker.wait_for(
        lambda: Delivery.objects.get(event_id=event.event_id, recipient="ann@example.com").provider_seen_at is not None,
        timeout=10,
        message="the report noted",
    )
    ann = Delivery.objects.get(event_id=event.event_id, recipient="ann@example.com")
    assert ann.provider_message_id == "m123" and ann.state == "sending"  # its sender may still be at it
    assert Delivery.objects.get(event_id=event.event_id, recipient="bob@example.org").provider_seen_at is None
    broker.wait_for(lambda: broker.queue_depth(topology.queue("sender-receipts")) == 0, timeout=10, message="acked")


def test_a_bad_key_pauses_consuming_until_the_key_works(topology, senders, fake_sendgrid):
    fake, _ = fake_sendgrid
    sender = senders(topology, SENDGRID_API_KEY="SG.rotating")
    sender.wait_ready()
    events = [request([f"r{i}@example.com"]) for i in range(5)]
    for event in events:
        send_event(topology, event)
    broker.wait_for(lambda: sender.get("/readyz")[0] == 503, timeout=15, message="unready")
    assert json.loads(sender.get("/readyz")[1])["provider_key"] is False
    time.sleep(1.5)
    assert Delivery.objects.filter(state="failed").count() == 0 and status_events() == []
    fake.keys["SG.rotating"] = {"mail.send"}  # the key is fixed on the provider's side
    broker.wait_for(lambda: all(delivered(e) for e in events), timeout=60, message="delivery after the key works")
    assert sender.get("/readyz")[0] == 200
    assert "sending_resumed_key_accepted" in sender.events()


def test_sigterm_finishes_in_flight_work_and_exits_0(topology, senders, fake_sendgrid):
    fake, _ = fake_sendgrid
    fake.faults.update({"latency_ms": 300})
    sender = senders(topology)
    sender.wait_ready()
    events = [request([f"r{i}@example.com"]) for i in range(20)]
    for event in events:
        send_event(topology, event)
    broker.wait_for(
        lambda: fake.stats["messages"] or Delivery.objects.filter(state="sending").exists(),
        timeout=10,
        message="work in flight",
    )
    assert sender.terminate(timeout=30) == 0
    assert "sender_drained" in sender.events()
    # Nothing is left half-done: every delivery is sent or waiting in a queue for the next sender.
    assert not Delivery.objects.filter(state="sending").exists()
    sender2 = senders(topology)
    broker.wait_for(lambda: all(delivered(e) for e in events), timeout=30, message="the rest delivered")
    assert fake.stats["messages"] == 20
    sender2.terminate()


def test_more_threads_than_pooled_connections_wait_instead_of_failing(fake_sendgrid, provider):
    from concurrent.futures import ThreadPoolExecutor

    small = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel=None)
    try:
        events = [request([f"r{i}@example.com"]) for i in range(40)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            actions = list(
                pool.map(
                    lambda e: handle_email_requested(e, provider=provider, store=small, policy=POLICY).action, events
                )
            )
        assert actions == [ACK] * 40
        assert Delivery.objects.filter(state="sent").count() == 40
    finally:
        small.close()


# The provider's connections ---------------------------------------------------------------------


def test_calls_share_one_kept_alive_connection(fake_sendgrid, provider):
    fake, _ = fake_sendgrid
    results = [provider.send(request([f"r{i}@example.com"], email_id=i), [f"r{i}@example.com"]) for i in range(5)]
    assert [r.kind for r in results] == ["sent"] * 5
    assert len({r.message_id for r in results}) == 5
    assert fake.stats["connections"] == 1


def test_a_connection_the_far_end_closed_is_replaced_before_the_call():
    # A server that answers one call per connection and then hangs up without saying so (as a
    # load balancer closing an idle connection does): every call must still go through, once.
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {"connections": 0, "calls": 0}

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen["connections"] += 1
            with conn, conn.makefile("rb") as reader:
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                seen["calls"] += 1
                conn.sendall(
                    f"HTTP/1.1 202 Accepted\r\nX-Message-Id: m{seen['calls']}\r\nContent-Length: 0\r\n\r\n".encode()
                )

    threading.Thread(target=serve, daemon=True).start()
    try:
        provider = SendGridProvider(api_key="SG.any", host=f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=2)
        results = []
        for i in range(3):
            results.append(provider.send(request(["ann@example.com"], email_id=i), ["ann@example.com"]))
            time.sleep(0.05)  # the server's hang-up arrives while the connection is idle
        assert [(r.kind, r.message_id) for r in results] == [("sent", "m1"), ("sent", "m2"), ("sent", "m3")]
        assert seen == {"connections": 3, "calls": 3}
    finally:
        listener.close()


def test_an_unreachable_provider_is_transient():
    port = free_port()  # nothing listens there
    result = SendGridProvider(api_key="SG.any", host=f"http://127.0.0.1:{port}", timeout=1).send(
        request(["ann@example.com"]), ["ann@example.com"]
    )
    assert result.kind == "transient" and "cannot reach" in result.reason


def test_a_sender_started_while_postgres_is_down_waits_for_it_instead_of_exiting(topology, senders):
    # A sender (re)started during a Postgres restart must not die: it is not ready, and it keeps
    # trying, as it does for an outage that starts later.
    sender = senders(topology, POSTGRES_PORT=free_port())  # nothing listens there
    time.sleep(3)
    assert sender.process.poll() is None, sender.logs()[-2000:]
    assert sender.get("/healthz")[0] == 200
    assert sender.get("/readyz")[0] == 503
    assert "postgres_unavailable" in sender.events()
    assert sender.terminate() == 0
