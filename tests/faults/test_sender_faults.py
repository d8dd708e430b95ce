"""The sender killed with SIGKILL while emails flow: every email reaches the fake SendGrid.
Here no Event Webhook reports what SendGrid took, so a send in doubt is sent again when its grace
runs out: a duplicate is possible only for a call that SendGrid answered before the killed sender
recorded it, and the test counts them. (With the webhook on, the fault run in tests/chaos.py
proves none.)"""

import collections
import time

import pytest

from core.deliveries.models import Delivery
from tests import broker
from tests.factories import email_requested

pytestmark = pytest.mark.django_db(transaction=True)


def test_sigkill_a_sender_while_2000_emails_flow(topology, senders, relays, fake_sendgrid):
    fake, _ = fake_sendgrid
    relays(topology)  # it brings back the deliveries a dead sender left, when they are due
    fake.faults.update({"latency_ms": 20})
    events = [email_requested([f"r{i}@example.com"], correlation_id="kill", email_id=i) for i in range(2000)]
    conn = broker.blocking_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    import json

    import pika

    for event in events:
        channel.basic_publish(
            topology.exchange,
            "email.requested",
            json.dumps(event.to_dict()).encode(),
            pika.BasicProperties(message_id=event.event_id, delivery_mode=2),
        )
    conn.close()

    sender = senders(topology, SENDER_LEASE_SECONDS=3)
    kills = at_risk = 0
    for threshold in (400, 1000):
        broker.wait_for(
            lambda n=threshold: fake.stats["messages"] >= n, timeout=60, interval=0.01, message=f"{threshold} sent"
        )
        sender.kill()
        kills += 1
        # What the dead sender held: claimed, its call made or not, its outcome not recorded.
        in_flight = Delivery.objects.filter(state="sending").count()
        at_risk += in_flight
        sender = senders(topology, SENDER_LEASE_SECONDS=3)

    try:
        broker.wait_for(
            lambda: Delivery.objects.filter(state="sent").count() == 2000,
            timeout=120,
            interval=0.2,
            message="all 2,000 sent",
        )
    except AssertionError:
        from django.db.models import Count

        print(
            list(Delivery.objects.values("state").annotate(n=Count("id"))),
            Delivery.objects.count(),
            {q: broker.queue_depth(q) for q in topology.all_queues()},
            dict(fake.stats),
        )
        print(sender.logs()[-3000:])
        raise
    calls = collections.Counter(r["custom_args"]["event_id"] for m in fake.messages for r in m["recipients"])
    assert set(calls) == {e.event_id for e in events}, "an email never reached SendGrid"
    duplicates = sum(n - 1 for n in calls.values())
    # A duplicate needs a call answered before a kill and not yet recorded: at most the deliveries
    # the dead sender held (up to SENDER_CONCURRENCY calls in flight each time), never one it had
    # recorded.
    assert duplicates <= at_risk
    assert not Delivery.objects.exclude(state="sent").exists()
    print(
        f"\n[sender-sigkill] emails=2000 kills={kills} duplicates={duplicates} "
        f"held_at_the_kills={at_risk} calls={sum(calls.values())}"
    )
    time.sleep(0.1)
