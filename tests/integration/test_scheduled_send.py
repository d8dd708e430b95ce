"""Scheduled sends and cancelling, against the real Postgres (and, for the relay, RabbitMQ):
`send_at` validation, the write (its request waits in the outbox, `email.scheduled` goes at
once), the cancel API, the sender after a cancel, the read model and its rebuild, the admin."""

import time
from datetime import UTC, datetime, timedelta
from datetime import timezone as timezone_of

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from command_api.emails.models import SentEmail, SentEmailRecipient
from core.contracts import EmailRequested, event_from_dict
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.outbox.models import OutboxEvent
from query_api.apply import apply_batch
from query_api.models import SentEmailLog
from sender.handlers import ACK, Policy, handle_email_requested
from sender.provider import SendGridProvider
from tests.broker import wait_for
from tests.conftest import client_for, golden
from tests.factories import EmailTemplateFactory, UserFactory

URL = "/api/v1/emails/sent-email/"
POLICY = Policy(schedule=(0.05,), lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5, jitter=0)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def send(client, template, send_at=None, recipients=("ann@example.com", "bob@example.org"), **extra):
    body = {"recipients": list(recipients), "template": template.pk, "context": {"name": "Ann"}}
    if send_at is not None:
        body["send_at"] = send_at
    return client.post(URL, body, format="json", **extra)


def cancel(client, email_id):
    return client.post(f"{URL}{email_id}/cancel/", format="json")


def written() -> tuple[int, int, int, int]:
    return (
        SentEmail.objects.count(),
        SentEmailRecipient.objects.count(),
        OutboxEvent.objects.count(),
        (Delivery.objects.count()),
    )


def request_of(email_id) -> EmailRequested:
    row = OutboxEvent.objects.get(type="email.requested", aggregateid=str(email_id))
    return EmailRequested.from_dict(row.payload)


@pytest.fixture
def store():
    store = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel="outbox")
    yield store
    store.close()


# Validation ------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "send_at, says",
    [
        ("2026-12-01T09:00:00", "no UTC offset"),  # naive: whose nine o'clock?
        ("tomorrow", "not an ISO 8601 date-time"),
        ("", "may not be blank"),
        ("2026-02-30T09:00:00Z", "not an ISO 8601 date-time"),  # no such day
        ("2026-12-01T09:00:00+25:00", "not an ISO 8601 date-time"),  # no such offset
        ("9999-12-31T23:59:59-23:59", "not an ISO 8601 date-time"),  # past the calendar in UTC
        ("2020-01-01T00:00:00Z", "in the past"),
        (12345, "not an ISO 8601 date-time"),
        (True, "Not a valid string"),
        (["2026-12-01T09:00:00Z"], "Not a valid string"),
        ("2026-12-01T09:00\n:00Z", "line"),
    ],
)
def test_a_bad_send_at_is_a_400_naming_it_and_nothing_is_written(user_client, template, send_at, says):
    before = written()
    response = send(user_client, template, send_at=send_at)
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert list(errors) == ["send_at"] and says in errors["send_at"][0]
    assert written() == before


@pytest.mark.django_db
def test_more_than_72_hours_ahead_is_a_400_naming_the_limit(user_client, template):
    response = send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=72, minutes=1)))
    assert response.status_code == 400
    assert "at most 72 hours ahead" in response.json()["errors"]["send_at"][0]
    assert written() == (0, 0, 0, 0)
    assert send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=71))).status_code == 202


@pytest.mark.django_db
def test_a_few_seconds_in_the_past_is_clock_skew_and_goes_at_once(user_client, template):
    response = send(user_client, template, send_at=iso(timezone.now() - timedelta(seconds=2)))
    assert response.status_code == 202
    row = OutboxEvent.objects.get(type="email.requested")
    assert row.not_before <= timezone.now()


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{"send_at": None}, {}])
def test_null_or_absent_send_at_sends_at_once_with_the_one_statement(user_client, template, body):
    body |= {"recipients": ["ann@example.com"], "template": template.pk}
    with CaptureQueriesContext(connection) as queries:
        assert user_client.post(URL, body, format="json").status_code == 202
    writes = [q["sql"] for q in queries.captured_queries if "sent_email_write" in q["sql"]]
    assert writes and not any("scheduled" in sql for sql in writes)  # the send-now statement, unchanged
    (row,) = OutboxEvent.objects.all()
    assert row.type == "email.requested" and row.payload["send_at"] == ""
    assert SentEmail.objects.get().send_at is None


# The write -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_scheduled_send_waits_in_the_outbox_and_tells_the_read_model_at_once(user_client, user, template):
    at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    in_paris = at.astimezone(timezone_of(timedelta(hours=2))).isoformat()  # any offset will do
    response = send(user_client, template, send_at=in_paris)
    assert response.status_code == 202
    email = SentEmail.objects.get(pk=response.json()["id"])
    assert email.send_at == at
    request = OutboxEvent.objects.get(type="email.requested")
    # Published for the hand-off, SCHEDULED_HANDOFF_SECONDS (by default 2 minutes) before send_at.
    assert request.not_before == at - timedelta(seconds=120) and request.payload["send_at"] == at.isoformat()
    scheduled = OutboxEvent.objects.get(type="email.scheduled")
    assert scheduled.not_before <= timezone.now() < at  # published at once
    assert (scheduled.aggregatetype, scheduled.aggregateid) == ("sent_email", str(email.pk))
    assert scheduled.headers["aggregateid"] == str(email.pk)
    payload = scheduled.payload
    assert set(payload) == set(golden("email.scheduled", 1))  # the producer side of the contract
    assert (payload["email_id"], payload["owner_id"], payload["request_event_id"]) == (
        email.pk,
        user.pk,
        str(request.id),
    )
    assert payload["send_at"] == at.isoformat() and payload["recipients"] == ["ann@example.com", "bob@example.org"]
    assert "body_html" not in payload


@pytest.mark.django_db
def test_a_retry_with_the_same_key_and_time_is_the_same_email_and_another_time_is_a_422(user_client, template):
    at = iso(timezone.now() + timedelta(hours=1))
    first = send(user_client, template, send_at=at, HTTP_IDEMPOTENCY_KEY="k1")
    again = send(user_client, template, send_at=at, HTTP_IDEMPOTENCY_KEY="k1")
    assert (first.status_code, again.status_code) == (202, 202) and first.json()["id"] == again.json()["id"]
    other = send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=2)), HTTP_IDEMPOTENCY_KEY="k1")
    assert other.status_code == 422
    assert SentEmail.objects.count() == 1 and OutboxEvent.objects.count() == 2


@pytest.mark.django_db
def test_a_retry_after_send_at_passed_still_answers_the_first_email(user_client, template):
    from command_api.emails import services

    first = send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=1)), HTTP_IDEMPOTENCY_KEY="k2")
    email = SentEmail.objects.get(pk=first.json()["id"])
    # As if it had been sent for an hour ago: the key's first request named that time.
    past = (timezone.now() - timedelta(hours=1)).replace(microsecond=0)
    email.request_fingerprint = services._fingerprint(
        template_id=template.pk,
        recipients=["ann@example.com", "bob@example.org"],
        context={"name": "Ann"},
        send_at=past,
    )
    email.save(update_fields=["request_fingerprint"])
    again = send(user_client, template, send_at=iso(past), HTTP_IDEMPOTENCY_KEY="k2")
    assert again.status_code == 202 and again.json()["id"] == email.pk
    assert send(user_client, template, send_at=iso(past)).status_code == 400  # without the key: in the past


# Cancel ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_before_the_claim_cancels_every_recipient_once(user_client, user, template, store):
    email_id = send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=1))).json()["id"]
    response = cancel(user_client, email_id)
    assert response.status_code == 202
    assert response.json() == {"id": email_id, "status": "cancelled", "message": "Email cancelled."}
    request = request_of(email_id)
    assert {d.recipient: d.state for d in Delivery.objects.filter(event_id=request.event_id)} == {
        "ann@example.com": "cancelled",
        "bob@example.org": "cancelled",
    }
    (event,) = OutboxEvent.objects.filter(type="email.cancelled")
    assert set(event.payload) == set(golden("email.cancelled", 1))
    assert (event.payload["cancelled_by"], event.payload["request_event_id"]) == (user.pk, request.event_id)
    # Again: idempotent, 200, nothing new.
    again = cancel(user_client, email_id)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert OutboxEvent.objects.filter(type="email.cancelled").count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_email_sent_at_once_can_be_cancelled_until_the_sender_claims_it(user_client, template):
    email_id = send(user_client, template).json()["id"]
    assert cancel(user_client, email_id).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_cancel_after_the_claim_is_a_409_and_changes_nothing(user_client, template, store):
    email_id = send(user_client, template, send_at=iso(timezone.now() + timedelta(seconds=3))).json()["id"]
    request = request_of(email_id)
    claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    assert len(claim.claimed) == 2
    before = written()
    response = cancel(user_client, email_id)
    assert response.status_code == 409
    assert "already taken" in response.json()["message"] and "sending" in response.json()["errors"]["id"][0]
    store.record_sent(request, list(request.recipients), token=claim.token, message_id="m", attempt=1, provider="x")
    assert cancel(user_client, email_id).status_code == 409  # and once sent
    assert written()[2] == before[2] + 1  # the email.sent only: no email.cancelled
    assert not Delivery.objects.filter(state="cancelled").exists()


@pytest.mark.django_db(transaction=True)
def test_a_send_due_within_the_hand_off_is_published_at_once(user_client, template):
    at = timezone.now() + timedelta(seconds=30)  # inside the default 2 minutes
    email_id = send(user_client, template, send_at=iso(at)).json()["id"]
    row = OutboxEvent.objects.get(type="email.requested", aggregateid=str(email_id))
    assert row.not_before <= timezone.now() and row.payload["send_at"] == at.isoformat()


@pytest.mark.django_db(transaction=True)
def test_a_scheduled_hand_off_in_doubt_waits_its_grace_from_send_at_not_from_the_call(user_client, template, store):
    """SendGrid holds a scheduled mail until send_at and may say nothing of it (no `processed`)
    before then: a hand-off whose outcome is in doubt is not sent again until the grace has
    passed after send_at, while a send at once in doubt is after the grace from its call."""
    scheduled = request_of(send(user_client, template, send_at=iso(timezone.now() + timedelta(minutes=3))).json()["id"])
    at_once = request_of(send(user_client, template, recipients=("carl@example.net",)).json()["id"])
    for request in (scheduled, at_once):
        claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5)
        store.release(request, list(claim.claimed), token=claim.token, state="unknown", error="timeout")
    time.sleep(1.0)  # past the grace from the calls

    again = store.claim(scheduled, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5)
    assert again.claimed == {} and sorted(again.waiting) == ["ann@example.com", "bob@example.org"]
    OutboxEvent.objects.filter(id=scheduled.event_id).update(published_at=timezone.now())  # the relay did
    armed = store.rearm(scheduled, in_doubt_grace=0.5, reason="next attempt")
    send_at = datetime.fromisoformat(scheduled.send_at)
    assert abs((armed - send_at).total_seconds() - 0.5) < 0.01  # its grace starts at send_at
    assert store.claim(at_once, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5).claimed == {
        "carl@example.net": 2
    }


@pytest.mark.django_db(transaction=True)
def test_only_the_owner_can_cancel(user_client, template, api_client):
    email_id = send(user_client, template, send_at=iso(timezone.now() + timedelta(hours=1))).json()["id"]
    other = client_for(UserFactory())
    assert other.post(f"{URL}{email_id}/cancel/").status_code == 404
    assert other.post(f"{URL}99999999/cancel/").status_code == 404
    assert api_client.post(f"{URL}{email_id}/cancel/").status_code == 401
    assert user_client.post(f"{URL}{2**63}/cancel/").status_code == 404  # not an id
    assert user_client.get(f"{URL}{email_id}/cancel/").status_code == 405
    assert not Delivery.objects.exists() and not OutboxEvent.objects.filter(type="email.cancelled").exists()


@pytest.mark.django_db(transaction=True)
def test_the_sender_takes_nothing_of_a_cancelled_email_acks_and_does_not_rearm(
    user_client, template, store, fake_sendgrid
):
    fake, url = fake_sendgrid
    email_id = send(user_client, template, send_at=iso(timezone.now() + timedelta(seconds=1))).json()["id"]
    assert cancel(user_client, email_id).status_code == 202
    request = request_of(email_id)
    OutboxEvent.objects.filter(id=request.event_id).update(published_at=timezone.now())  # the relay published it
    provider = SendGridProvider(api_key="SG.fake-key", host=url, timeout=2)
    decision = handle_email_requested(request, provider=provider, store=store, policy=POLICY)
    assert decision.action == ACK
    assert list(fake.messages) == []  # never reached SendGrid
    assert not OutboxEvent.objects.filter(id=request.event_id, published_at__isnull=True).exists()  # not re-armed
    assert set(Delivery.objects.filter(email_id=email_id).values_list("state", flat=True)) == {"cancelled"}


@pytest.mark.django_db(transaction=True)
def test_a_dead_lettered_request_does_not_turn_cancelled_into_failed(user_client, template, store):
    email_id = send(user_client, template).json()["id"]
    assert cancel(user_client, email_id).status_code == 202
    assert store.fail_dead_request(request_of(email_id), reason="poison", provider="sendgrid") == 0
    assert set(Delivery.objects.filter(email_id=email_id).values_list("state", flat=True)) == {"cancelled"}


# The read model, its rebuild and reconcile --------------------------------------------------------


@pytest.fixture
def conn():
    from core.db import connect_postgres

    c = connect_postgres(connection.settings_dict, application_name="test-projector", idle_in_transaction_ms=60000)
    yield c
    c.close()


def project(conn, types=None) -> None:
    """Apply the outbox rows that are due (what the relay would have published), in order."""
    rows = OutboxEvent.objects.filter(not_before__lte=timezone.now()).order_by("created_at")
    apply_batch(conn, [event_from_dict(r.payload) for r in rows if types is None or r.type in types])


def snapshot(ids) -> list[tuple]:
    rows = SentEmailLog.objects.filter(id__in=ids).order_by("id")
    return [(r.id, r.status, r.send_at, {k: v["status"] for k, v in r.recipient_status.items()}) for r in rows]


@pytest.mark.django_db(transaction=True)
def test_read_model_scheduled_then_queued_then_sent_and_cancelled_and_the_rebuild_agrees(
    user_client, template, store, conn, settings
):
    from query_api.rebuild import read_model_rebuild, read_model_reconcile

    later = iso(timezone.now() + timedelta(hours=1))
    waiting = send(user_client, template, send_at=later).json()["id"]
    gone = send(user_client, template, send_at=later).json()["id"]
    due = send(user_client, template, send_at=iso(timezone.now() + timedelta(seconds=1))).json()["id"]
    handed = send(user_client, template, send_at=iso(timezone.now() + timedelta(seconds=60))).json()["id"]
    project(conn, types={"email.scheduled"})
    assert [s[1] for s in snapshot([waiting, gone, due, handed])] == ["scheduled"] * 4
    assert cancel(user_client, gone).status_code == 202

    wait_for(lambda: timezone.now() > SentEmail.objects.get(pk=due).send_at, timeout=5)
    request = request_of(due)
    claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    store.record_sent(request, list(request.recipients), token=claim.token, message_id="m", attempt=1, provider="x")
    project(conn)  # the rest: the requests (as if published), the cancel, the sent
    live = snapshot([waiting, gone, due, handed])
    # `handed` is due within the hand-off: its request is published, a sender has yet to take it.
    assert [s[1] for s in live] == ["scheduled", "cancelled", "sent", "queued"]
    assert live[0][2] == SentEmail.objects.get(pk=waiting).send_at
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE read_sent_email, read_sent_email_event")
    read_model_rebuild()
    assert [s[1] for s in snapshot([waiting, gone, due, handed])] == ["scheduled", "cancelled", "sent", "queued"]
    settings.RECONCILE_GRACE_SECONDS = 0
    report = read_model_reconcile()
    assert not (set(report.behind) | set(report.missing) | set(report.stuck)) & {waiting, gone, due, handed}


@pytest.mark.django_db
def test_the_query_api_shows_send_at_and_filters_by_the_new_statuses(settings, user):
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    for pk, status in ((1, "scheduled"), (2, "cancelled"), (3, "sent")):
        SentEmailLog.objects.create(
            id=pk,
            owner_id=user.pk,
            recipients=["ann@example.com"],
            created=at - timedelta(hours=pk),
            status=status,
            send_at=at if status != "sent" else None,
            recipient_status={"ann@example.com": {"status": status, "at": iso(at)}},
        )
    settings.ROOT_URLCONF = "query_api.urls"
    reader = client_for(user)
    page = reader.get(URL, {"status": ["scheduled", "cancelled"]}).json()["results"]
    assert [(e["id"], e["status"], e["send_at"]) for e in page] == [
        (1, "scheduled", "2026-12-01T09:00:00Z"),
        (2, "cancelled", "2026-12-01T09:00:00Z"),
    ]
    assert reader.get(URL, {"status": "sent"}).json()["results"][0]["send_at"] is None
    refused = reader.get(URL, {"status": "postponed"})
    assert refused.status_code == 400 and "status" in refused.json()["errors"]


# The schema ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_documents_send_at_and_the_cancel(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    send_at = schema["components"]["schemas"]["SentEmailInputRequest"]["properties"]["send_at"]
    assert (send_at["type"], send_at["format"], send_at.get("nullable")) == ("string", "date-time", True)
    assert "send_at" not in schema["components"]["schemas"]["SentEmailInputRequest"].get("required", [])
    operation = schema["paths"]["/api/v1/emails/sent-email/{email_id}/cancel/"]["post"]
    assert {"200", "202", "404", "409"} <= set(operation["responses"])
    assert "requestBody" not in operation
    cancelled = operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    assert cancelled.endswith("/SentEmailCancelled")


# The admin -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_admin_shows_send_at_and_cancelled(user_client, template):
    from django.test import Client

    at = timezone.now() + timedelta(hours=1)
    email_id = send(user_client, template, send_at=iso(at)).json()["id"]
    assert cancel(user_client, email_id).status_code == 202
    admin = UserFactory(is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(admin)
    page = browser.get("/admin/emails/sentemail/?scheduled=yes")
    assert page.status_code == 200
    html = page.content.decode()
    assert "column-send_at" in html and "column-cancelled" in html and 'alt="True"' in html
    assert browser.get("/admin/emails/sentemail/?scheduled=no").content.decode().count('alt="True"') == 0
    assert browser.get(f"/admin/emails/sentemail/{email_id}/change/").status_code == 200
    deliveries = browser.get("/admin/sender/delivery/?state__exact=cancelled")
    assert deliveries.status_code == 200 and "cancelled" in deliveries.content.decode()


# The relay -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_relay_publishes_each_request_at_its_time_not_before_and_not_on_its_poll(topology, relays, user, settings):
    from tests import broker

    settings.SCHEDULED_HANDOFF_SECONDS = 0  # published at send_at: the relay's timing alone
    # A 30 s poll interval: only the wake-up at the due time can explain a publish on time.
    relay = relays(topology, OUTBOX_POLL_INTERVAL_MS=30000)
    relay.wait_ready()
    client, template = client_for(user), EmailTemplateFactory()
    start = timezone.now()
    ids = [
        send(client, template, send_at=iso(start + timedelta(seconds=delay))).json()["id"]
        for delay in (2.0, 3.0)  # the second is due after the relay woke for the first
    ]
    requests = [OutboxEvent.objects.get(type="email.requested", aggregateid=str(i)) for i in ids]
    scheduled = {str(r.id) for r in OutboxEvent.objects.filter(type="email.scheduled")}
    # email.scheduled goes at once, to the projector only (the sender binds email.requested).
    got = broker.collect(topology.queue("projector"), expect_ids=scheduled, timeout=5, settle=0.05)
    assert {p.message_id for p, _ in got.messages} == scheduled
    assert all(r.published_at is None for r in OutboxEvent.objects.filter(type="email.requested"))  # not yet

    got = broker.collect(topology.queue("sender"), expect_ids={str(r.id) for r in requests}, timeout=10, settle=0.05)
    assert sorted(p.message_id for p, _ in got.messages) == sorted(str(r.id) for r in requests)  # nothing else
    for request in requests:
        request.refresh_from_db()
        late = (request.published_at - request.not_before).total_seconds()
        assert 0 <= late < 0.5, late  # at its time, not before, and not on the next poll
    assert relay.terminate() == 0
