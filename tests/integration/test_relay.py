"""The relay against the real Postgres and RabbitMQ. These tests commit (transaction=True): the
relay reads with a connection of its own."""

import json
import re
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection

from core.broker import EVENTS_BATCH
from core.contracts import EmailRequested
from core.db import connect_postgres
from core.outbox.models import OutboxEvent
from outbox_relay import publisher as publisher_module
from outbox_relay.publisher import ConfirmingPublisher
from outbox_relay.relay import relay_batch
from tests import broker
from tests.conftest import client_for
from tests.factories import EmailTemplateFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def publisher(topology):
    publisher = ConfirmingPublisher(url=settings.RABBITMQ_URL, topology=topology)
    publisher.connect()
    yield publisher
    publisher.close()


@pytest.fixture
def relay_conn():
    conn = connect_postgres(connection.settings_dict, application_name="test-relay", idle_in_transaction_ms=60000)
    yield conn
    conn.close()


def test_an_accepted_email_arrives_with_its_id_headers_and_payload(topology, publisher, relay_conn):
    client = client_for(UserFactory())
    response = client.post(
        "/api/v1/emails/sent-email/",
        {
            "recipients": ["ann@example.com", "bob@example.org"],
            "template": EmailTemplateFactory().pk,
            "context": {"name": "Ann"},
        },
        format="json",
        HTTP_X_CORRELATION_ID="corr-relay-1",
    )
    assert response.status_code == 202
    row = OutboxEvent.objects.get()

    outcome = relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5)
    assert (outcome.claimed, outcome.published) == (1, 1)

    received = broker.collect(topology.queue("sender"), expect_ids={str(row.id)})
    properties, body = received.messages[0]
    assert properties.message_id == str(row.id)
    assert properties.type == "email.requested"
    assert properties.delivery_mode == 2
    assert properties.correlation_id == "corr-relay-1"
    assert properties.headers == {
        "schema_version": 1,
        "correlation_id": "corr-relay-1",
        "aggregateid": str(response.json()["id"]),
    }
    event = EmailRequested.from_dict(json.loads(body))
    assert event.event_id == str(row.id) and event.email_id == response.json()["id"]
    assert json.loads(body) == row.payload
    row.refresh_from_db()
    assert row.published_at is not None and row.attempts == 1


def test_a_full_backlog_goes_in_batches_oldest_first(topology, publisher, relay_conn):
    ids = broker.fill_outbox(25)
    sizes = []
    while outcome := relay_batch(relay_conn, publisher, limit=10, confirm_timeout=5):
        if not outcome.claimed:
            break
        sizes.append(outcome.published)
    assert sizes == [10, 10, 5]
    assert broker.collect(topology.queue("sender"), expect_ids=set(ids)).ids == ids


def test_rows_not_due_yet_wait(topology, publisher, relay_conn):
    later = broker.fill_outbox(2, not_before_sql="now() + interval '1 hour'")
    now = broker.fill_outbox(1)
    assert relay_batch(relay_conn, publisher, limit=10, confirm_timeout=5).published == 1
    assert broker.published_count(later) == 0 and broker.published_count(now) == 1


def test_each_batch_reaches_the_projector_packed_and_the_sender_gets_its_requests_alone(
    topology, publisher, relay_conn
):
    requests = broker.fill_outbox(2)
    others = broker.fill_outbox(2, event_type="email.sent") + broker.fill_outbox(1, event_type="email.scheduled")
    outcome = relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5)
    assert (outcome.claimed, outcome.published) == (5, 5)
    assert broker.collect(topology.queue("sender"), expect_ids=set(requests)).ids == requests  # nothing else
    conn = broker.blocking_connection()
    try:
        method, properties, body = conn.channel().basic_get(topology.queue("projector"), auto_ack=True)
    finally:
        conn.close()
    assert properties.type == EVENTS_BATCH and properties.delivery_mode == 2 and properties.headers["events"] == 5
    payloads = {str(row.id): row.payload for row in OutboxEvent.objects.all()}
    # One message, every row's payload in claim order.
    assert json.loads(body) == [payloads[i] for i in [*requests[:1], *requests[1:], *others]]
    assert broker.queue_depth(topology.queue("projector")) == 0


def test_a_long_batch_is_packed_in_several_messages(topology, publisher, relay_conn, monkeypatch):
    monkeypatch.setattr(publisher_module, "EVENTS_PER_MESSAGE", 4)
    monkeypatch.setattr(publisher_module, "BYTES_PER_MESSAGE", 5000)
    small = broker.fill_outbox(9, event_type="email.sent", payload_bytes=100)
    large = broker.fill_outbox(2, event_type="email.sent", payload_bytes=6000)  # each over the byte cap
    assert relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5).published == 11
    conn = broker.blocking_connection()
    sizes = []
    try:
        channel = conn.channel()
        while (got := channel.basic_get(topology.queue("projector"), auto_ack=True))[0] is not None:
            sizes.append(len(json.loads(got[2])))
    finally:
        conn.close()
    assert sizes == [4, 4, 1, 1, 1]
    assert broker.published_count(small + large) == 11


def test_an_event_whose_queue_is_gone_is_marked_dead_and_does_not_wedge_its_batch(topology, publisher, relay_conn):
    conn = broker.blocking_connection()
    conn.channel().queue_unbind(topology.queue("sender"), topology.exchange, routing_key="email.requested")
    conn.close()
    good = broker.fill_outbox(3, event_type="email.sent")
    (bad,) = broker.fill_outbox(1)  # a request: no queue takes it alone now
    more = broker.fill_outbox(2, event_type="email.sent")
    outcome = relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5)
    assert (outcome.claimed, outcome.published, outcome.dead) == (6, 5, 1)
    dead = OutboxEvent.objects.get(id=bad)
    assert dead.published_at is None and dead.failed_at is not None
    assert "NO_ROUTE" in dead.last_error and dead.attempts == 1
    assert broker.published_count(good + more) == 5
    # A dead row is not claimed again until ops replays it.
    assert relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5).claimed == 0


def test_packed_events_no_queue_takes_wait_for_the_topology_and_are_not_dead(topology, publisher, relay_conn):
    conn = broker.blocking_connection()
    conn.channel().queue_unbind(topology.queue("projector"), topology.exchange, routing_key=EVENTS_BATCH)
    conn.close()
    rows = broker.fill_outbox(2) + broker.fill_outbox(1, event_type="email.sent")
    outcome = relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5)
    assert (outcome.claimed, outcome.published, outcome.dead, outcome.unconfirmed) == (3, 0, 0, 3)
    assert "packed events were returned" in outcome.error and "NO_ROUTE" in outcome.error
    assert not publisher.is_open  # the relay reconnects, which declares the topology again
    assert OutboxEvent.objects.filter(failed_at__isnull=False).count() == 0
    publisher.connect()
    assert relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5).published == 3
    assert broker.published_count(rows) == 3
    assert broker.queue_depth(topology.queue("projector")) == 1  # the three, packed


def test_a_claim_in_progress_is_skipped_by_another_relay(topology, publisher, relay_conn):
    broker.fill_outbox(4)
    other = connect_postgres(connection.settings_dict, application_name="other", idle_in_transaction_ms=60000)
    try:
        with other.cursor() as cursor:  # another relay holds two rows mid-batch
            cursor.execute("SELECT id FROM outbox ORDER BY not_before LIMIT 2 FOR UPDATE SKIP LOCKED")
            held = {str(r[0]) for r in cursor.fetchall()}
        outcome = relay_batch(relay_conn, publisher, limit=100, confirm_timeout=5)
        assert outcome.published == 2
        assert broker.published_count(held) == 0
    finally:
        other.rollback()
        other.close()


def test_the_relay_process_wakes_on_notify_not_on_its_poll(topology, relays):
    # A 30 s poll interval: only NOTIFY can explain a prompt publish.
    relay = relays(topology, OUTBOX_POLL_INTERVAL_MS=30000)
    relay.wait_ready()
    time.sleep(0.3)  # the relay is idle, waiting
    client = client_for(UserFactory())
    template = EmailTemplateFactory()
    started = time.monotonic()
    response = client.post(
        "/api/v1/emails/sent-email/", {"recipients": ["ann@example.com"], "template": template.pk}, format="json"
    )
    row = OutboxEvent.objects.get(aggregateid=str(response.json()["id"]))
    broker.collect(topology.queue("sender"), expect_ids={str(row.id)}, timeout=5, settle=0.05)
    assert time.monotonic() - started < 2.0
    assert relay.terminate() == 0


def commits_apart(count: int, gap: float) -> list[str]:
    """`count` transactions of one row each, each notifying, `gap` seconds apart."""
    ids = []
    for _ in range(count):
        ids += broker.fill_outbox(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [settings.OUTBOX_NOTIFY_CHANNEL])
        time.sleep(gap)
    return ids


def batches(ids: list[str]) -> int:
    """How many batches published `ids` (a batch's rows share their published_at)."""
    broker.wait_for(lambda: broker.published_count(ids) == len(ids), timeout=10, message="all published")
    return OutboxEvent.objects.filter(id__in=ids).values("published_at").distinct().count()


def test_the_relay_gathers_a_burst_of_commits_into_one_batch(topology, relays):
    relay = relays(topology, OUTBOX_GATHER_MS=400)
    relay.wait_ready()
    time.sleep(0.3)  # idle, waiting for a NOTIFY
    assert batches(commits_apart(8, gap=0.01)) == 1
    assert relay.terminate() == 0


def test_the_relay_gathers_longer_only_while_its_batches_move_more_than_one_row(topology, relays):
    relay = relays(topology, OUTBOX_GATHER_MS=0, OUTBOX_GATHER_BUSY_MS=1000)
    relay.wait_ready()
    time.sleep(0.3)  # idle, waiting for a NOTIFY
    # Quiet: each lone commit goes at once (OUTBOX_GATHER_MS=0), in a batch of its own.
    assert batches(commits_apart(3, gap=0.15)) == 3
    # A batch of two rows (one transaction): the relay is busy, stops listening and claims every
    # OUTBOX_GATHER_BUSY_MS, so the next commits go in one batch.
    two = broker.fill_outbox(2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [settings.OUTBOX_NOTIFY_CHANNEL])
    assert batches(two) == 1
    assert batches(commits_apart(6, gap=0.02)) == 1
    assert relay.terminate() == 0


def test_the_relay_process_serves_probes_and_metrics_and_exits_0_on_sigterm(topology, relays):
    relay = relays(topology)
    relay.wait_ready()
    ids = broker.fill_outbox(3)
    broker.wait_for(lambda: broker.published_count(ids) == 3, timeout=10, message="3 published")
    assert relay.get("/healthz")[0] == 200
    status, body = relay.get("/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "postgres": True, "rabbitmq": True, "migrations": True}

    def published_metric():
        metrics = relay.get("/metrics")[1]
        return metrics if "outbox_relay_published_total 3.0" in metrics else None

    metrics = broker.wait_for(published_metric, timeout=5, message="published metric")
    for name in [
        "outbox_backlog",
        "outbox_oldest_unpublished_age_seconds",
        "outbox_dead_rows",
        "outbox_relay_batch_duration_seconds_count",
        "outbox_relay_batch_size_count",
        "outbox_relay_failures_total",
        "dead_letters_parked",
    ]:
        assert name in metrics
    updated = float(re.search(r"^outbox_stats_updated_timestamp_seconds (\S+)$", metrics, re.M).group(1))
    assert time.time() - updated < 10  # the gauges are fresh
    started = time.monotonic()
    assert relay.terminate() == 0
    assert time.monotonic() - started < 5
    assert '"event": "relay_stopped"' in relay.logs()


@pytest.fixture
def broker_max_message_size():
    """Lower RabbitMQ's message size limit (for channels opened from now on); restore it after."""
    import subprocess

    def set_limit(size: int) -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "eval", f"application:set_env(rabbit, max_message_size, {size})."],
            check=True,
            capture_output=True,
            timeout=60,
        )

    set_limit(16 * 1024)
    yield
    set_limit(128 * 1024 * 1024)  # RabbitMQ's default


def test_a_message_the_broker_refuses_is_isolated_its_email_failed_and_the_rest_flows(
    topology, relays, broker_max_message_size
):
    from core.deliveries.models import Delivery

    client = client_for(UserFactory())
    template = EmailTemplateFactory(body="<p>{{ text }}</p>")

    def send(text):
        response = client.post(
            "/api/v1/emails/sent-email/",
            {"recipients": ["ann@example.com", "bob@example.org"], "template": template.pk, "context": {"text": text}},
            format="json",
        )
        assert response.status_code == 202
        return OutboxEvent.objects.get(aggregateid=str(response.json()["id"]), type="email.requested")

    before = [send("small") for _ in range(3)]
    too_large = send("x" * 40_000)  # over the broker's limit once rendered
    after = [send("small") for _ in range(3)]
    relays(topology).wait_ready()
    broker.wait_for(
        lambda: broker.published_count({str(r.id) for r in before + after}) == 6,
        timeout=30,
        message="the rows around it published",
    )
    broker.wait_for(
        lambda: OutboxEvent.objects.get(id=too_large.id).failed_at is not None,
        timeout=30,
        message="the refused row dead",
    )
    dead = OutboxEvent.objects.get(id=too_large.id)
    assert dead.published_at is None and "refused by the broker: 406" in dead.last_error
    assert "larger than configured max size" in dead.last_error
    failed = OutboxEvent.objects.get(type="email.failed")
    assert failed.aggregateid == too_large.aggregateid and failed.payload["permanent"] is True
    assert sorted(failed.payload["recipients"]) == ["ann@example.com", "bob@example.org"]
    assert failed.payload["reason"].startswith("refused by the broker")
    assert set(Delivery.objects.filter(email_id=int(too_large.aggregateid)).values_list("state", flat=True)) == {
        "failed"
    }


def test_the_relay_survives_a_refused_declaration_and_recovers_when_it_is_allowed(topology, relays):
    # A broker error while the relay declares its topology (here: the user may not configure
    # anything yet) is an outage like any other: not ready, retrying, never a crash.
    import subprocess

    def rabbitmqctl(*args):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    user = f"relay-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_user", user, "relay-pass")
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, "^$", ".*", ".*")  # may not declare
        relay = relays(topology, RABBITMQ_URL=f"amqp://{user}:relay-pass@127.0.0.1:5672/%2F")
        broker.wait_for(lambda: "rabbitmq_unavailable" in relay.events(), timeout=15, message="an outage")
        time.sleep(1)
        assert relay.process.poll() is None, relay.logs()[-2000:]
        assert relay.get("/readyz")[0] == 503
        assert "cannot declare the topology" in relay.logs() and "ACCESS_REFUSED" in relay.logs()
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        relay.wait_ready(timeout=60)
        ids = broker.fill_outbox(2)
        broker.wait_for(lambda: broker.published_count(ids) == 2, timeout=20, message="published once allowed")
    finally:
        rabbitmqctl("delete_user", user)
