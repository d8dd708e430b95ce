"""The read side against the real Postgres and RabbitMQ: projector, query API, webhook,
rebuild and reconcile."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.broker import EVENTS_BATCH
from core.contracts import EmailDeliveryStatus, EmailDeliveryStatuses, EmailRequested, EmailSent
from core.outbox.models import OutboxEvent
from query_api.apply import apply_batch
from query_api.models import ProcessedEvent, SentEmailLog, SentEmailLogEvent
from tests import broker
from tests.conftest import HOOK, client_for
from tests.factories import UserFactory, email_requested

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def iso(moment) -> str:
    return moment.isoformat()


def requested(email_id=1, owner_id=7, recipients=("ann@example.com", "bob@example.org"), at=NOW, template_id=3):
    return email_requested(
        recipients,
        correlation_id="c",
        occurred_at=iso(at),
        email_id=email_id,
        owner_id=owner_id,
        template_id=template_id,
        from_email="f@example.com",
        subject=f"Subject {email_id}",
        body_html="x",
        template_name=f"t{template_id}",
    )


def sent(email_id=1, recipients=("ann@example.com", "bob@example.org"), at=NOW + timedelta(seconds=1)):
    return EmailSent(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at=iso(at),
        email_id=email_id,
        request_event_id="r",
        recipients=tuple(recipients),
        provider="sendgrid",
        provider_message_id="m1",
        attempt=1,
    )


def delivered(email_id=1, recipient="ann@example.com", status="delivered", at=NOW + timedelta(seconds=2)):
    return EmailDeliveryStatus(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at=iso(at),
        email_id=email_id,
        request_event_id="r",
        recipient=recipient,
        status=status,
        provider="sendgrid",
        provider_event_id=str(uuid.uuid4()),
        provider_message_id="m1.0",
        reason="",
        reported_at=iso(at),
    )


@pytest.fixture
def conn():
    from core.db import connect_postgres

    c = connect_postgres(connection.settings_dict, application_name="test-projector", idle_in_transaction_ms=60000)
    yield c
    c.close()


def row(email_id=1) -> SentEmailLog:
    return SentEmailLog.objects.get(pk=email_id)


# The projector --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_projector_applies_a_batch_idempotently(conn):
    events = [requested(), sent()]
    assert apply_batch(conn, events) == (2, 0)
    assert (row().status, row().owner_id, row().recipients) == ("sent", 7, ["ann@example.com", "bob@example.org"])
    assert apply_batch(conn, events + [events[0]]) == (0, 3)  # redelivered, replayed: nothing changes
    assert ProcessedEvent.objects.count() == 2
    assert SentEmailLogEvent.objects.filter(email_id=1).count() == 3  # queued + 2 recipients sent


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_statuses_applies_as_its_items_once(conn):
    batch = EmailDeliveryStatuses(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at=iso(NOW),
        statuses=(delivered().to_dict(), delivered(recipient="bob@example.org").to_dict()),
    )
    assert apply_batch(conn, [requested(), sent(), batch]) == (4, 0)
    assert row().status == "delivered"
    assert apply_batch(conn, [batch]) == (0, 2)  # redelivered: every item is known
    assert SentEmailLogEvent.objects.filter(email_id=1, status="delivered").count() == 2


@pytest.mark.django_db(transaction=True)
def test_out_of_order_and_unknown_emails_end_right(conn):
    late_request = requested(email_id=2)
    apply_batch(conn, [delivered(email_id=2), delivered(email_id=2, recipient="bob@example.org")])
    assert row(2).owner_id is None  # kept, invisible until its request arrives
    apply_batch(conn, [sent(email_id=2)])
    apply_batch(conn, [late_request])
    assert (row(2).status, row(2).owner_id, row(2).subject) == ("delivered", 7, "Subject 2")


@pytest.mark.django_db(transaction=True)
def test_an_email_goes_queued_sent_delivered_in_the_query_api(settings, conn):
    user = UserFactory()
    client = client_for(user)
    settings.ROOT_URLCONF = "query_api.urls"
    apply_batch(conn, [requested(email_id=5, owner_id=user.pk)])
    item = client.get("/api/v1/emails/sent-email/").json()["results"][0]
    assert (item["id"], item["status"]) == (5, "queued")
    assert item["recipients"] == ["ann@example.com", "bob@example.org"]
    apply_batch(conn, [sent(email_id=5)])
    assert client.get("/api/v1/emails/sent-email/").json()["results"][0]["status"] == "sent"
    apply_batch(conn, [delivered(email_id=5), delivered(email_id=5, recipient="bob@example.org")])
    detail = client.get("/api/v1/emails/sent-email/5/").json()
    assert detail["status"] == "delivered"
    assert [h["status"] for h in detail["history"]] == ["queued", "sent", "sent", "delivered", "delivered"]
    assert {r["email"]: r["status"] for r in detail["recipient_status"]} == {
        "ann@example.com": "delivered",
        "bob@example.org": "delivered",
    }


# The query API: filters against hand-made data --------------------------------------------------

LIST = "/api/v1/emails/sent-email/"


@pytest.fixture
def log_rows(db, settings):
    settings.ROOT_URLCONF = "query_api.urls"
    owner, other = UserFactory(), UserFactory()

    def make(pk, owner_id, recipients, created, status="sent", template_id=1):
        return SentEmailLog.objects.create(
            id=pk,
            owner_id=owner_id,
            recipients=recipients,
            created=created,
            status=status,
            template_id=template_id,
            subject=f"s{pk}",
            recipient_status={r: {"status": status, "at": iso(created)} for r in recipients},
        )

    make(1, owner.pk, ["ann@example.com"], NOW - timedelta(days=2))
    make(2, owner.pk, ["bob@example.org", "carl@example.net"], NOW - timedelta(days=1), status="failed")
    make(3, owner.pk, ["ann@example.com", "dora@example.com"], NOW - timedelta(hours=1), template_id=2)
    make(4, owner.pk, ["eve@example.com"], NOW, status="delivered")
    make(5, other.pk, ["ann@example.com"], NOW)
    return client_for(owner), client_for(other)


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [item["id"] for item in response.json()["results"]]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", [4, 3, 2, 1]),
        ("?recipient=ANN@example.com", [3, 1]),
        ("?recipient=bob@example.org&recipient=eve@example.com", [4, 2]),
        ("?start_time=2026-11-26", [4, 3, 2]),
        ("?end_time=2026-11-26", [2, 1]),  # a date: the whole day
        ("?start_time=2026-11-27T11:00:00%2B00:00&end_time=2026-11-27T12:00:00Z", [4, 3]),  # inclusive
        ("?status=failed", [2]),
        ("?status=sent&status=delivered", [4, 3, 1]),
        ("?template=2", [3]),
        ("?recipient=ann@example.com&start_time=2026-11-26&status=sent", [3]),
    ],
)
def test_filters_alone_and_combined(log_rows, query, expected):
    owner_client, _ = log_rows
    assert ids(owner_client.get(LIST + query)) == expected


def test_other_users_emails_never_appear(log_rows):
    owner_client, other_client = log_rows
    assert ids(other_client.get(LIST)) == [5]
    assert other_client.get(LIST + "1/").status_code == 404
    assert owner_client.get(LIST + "5/").status_code == 404
    assert owner_client.get(LIST + "3/").json()["subject"] == "s3"


def test_anonymous_is_refused(log_rows, api_client):
    assert api_client.get(LIST).status_code == 401


@pytest.mark.parametrize(
    "query, field",
    [
        ("?start_time=yesterday", "start_time"),
        ("?end_time=2026-13-01", "end_time"),
        ("?start_time=2026-11-27&end_time=2026-11-26", "end_time"),
        ("?status=lost", "status"),
        ("?template=abc", "template"),
    ],
)
def test_bad_parameters_are_400_naming_them(log_rows, query, field):
    owner_client, _ = log_rows
    response = owner_client.get(LIST + query)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_cursor_pagination(log_rows):
    owner_client, _ = log_rows
    first = owner_client.get(LIST + "?page_size=3").json()
    assert [i["id"] for i in first["results"]] == [4, 3, 2] and first["next"]
    second = owner_client.get(first["next"]).json()
    assert [i["id"] for i in second["results"]] == [1] and second["next"] is None


def test_the_query_api_schema(log_rows):
    owner_client, _ = log_rows
    paths = owner_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    assert "/api/v1/emails/sent-email/{email_id}/" in paths and "/api/v1/emails/sent-email/" in paths


# The SendGrid Event Webhook ---------------------------------------------------------------------


def hook_events(email_id=9, kinds=("processed", "delivered")) -> str:
    return json.dumps(
        [
            {
                "email": "Ann@example.com",
                "timestamp": int(NOW.timestamp()),
                "event": kind,
                "sg_event_id": f"sg-{email_id}-{kind}",
                "sg_message_id": "m1.filter",
                "event_id": str(uuid.uuid4()),
                "email_id": str(email_id),
                "recipient": "Ann@example.com",
            }
            for kind in kinds
        ]
        + [{"email": "x@example.com", "event": "delivered", "sg_event_id": "no-custom-args", "timestamp": 1}]
    )


@pytest.mark.django_db
def test_a_signed_webhook_becomes_outbox_events_once(api_client, signer):
    body = hook_events()
    first = api_client.post(HOOK, body, content_type="application/json", **signer(body))
    assert first.status_code == 200
    assert first.json() == {"accepted": 2, "duplicates": 0, "ignored": 1, "rejected": 0}
    # The email's statuses of the post are one event (one message), its items the statuses.
    (row,) = OutboxEvent.objects.all()
    assert (row.type, row.aggregatetype, row.aggregateid) == ("email.delivery_statuses", "sent_email", "9")
    items = EmailDeliveryStatuses.from_dict(row.payload).items()
    assert sorted(item.status for item in items) == ["delivered", "processed"]
    assert {(item.email_id, item.recipient) for item in items} == {(9, "Ann@example.com")}
    assert len({item.event_id for item in items}) == 2
    again = api_client.post(HOOK, body, content_type="application/json", **signer(body))  # SendGrid retries
    assert again.json() == {"accepted": 0, "duplicates": 2, "ignored": 1, "rejected": 0}
    assert OutboxEvent.objects.count() == 1


@pytest.mark.django_db
def test_a_large_webhook_post_is_split_into_events_of_bounded_size(api_client, signer, settings):
    from command_api.webhooks import services as webhook_services

    body = json.dumps(
        [
            {
                "email": f"r{i}@example.com",
                "timestamp": int(NOW.timestamp()),
                "event": "delivered",
                "sg_event_id": f"sg-big-{i}",
                "event_id": str(uuid.uuid4()),
                "email_id": "7",
                "recipient": f"r{i}@example.com",
            }
            for i in range(webhook_services.STATUSES_PER_EVENT * 2 + 1)
        ]
    )
    assert api_client.post(HOOK, body, content_type="application/json", **signer(body)).status_code == 200
    sizes = sorted(len(row.payload["statuses"]) for row in OutboxEvent.objects.all())
    assert sizes == [1, webhook_services.STATUSES_PER_EVENT, webhook_services.STATUSES_PER_EVENT]
    assert set(OutboxEvent.objects.values_list("aggregateid", flat=True)) == {"7"}


@pytest.mark.django_db
def test_ops_filtering_the_outbox_by_an_email_find_its_delivery_statuses(api_client, signer, user_client, template):
    from core.outbox.selectors import OutboxFilter, outbox_event_list

    emails = [
        user_client.post(
            "/api/v1/emails/sent-email/", {"recipients": ["ann@example.com"], "template": template.pk}, format="json"
        ).json()["id"]
        for _ in range(2)
    ]
    body = json.dumps(
        [
            {
                "email": "ann@example.com",
                "timestamp": int(NOW.timestamp()),
                "event": kind,
                "sg_event_id": f"sg-{email_id}-{kind}",
                "event_id": str(uuid.uuid4()),
                "email_id": str(email_id),
                "recipient": "ann@example.com",
            }
            for email_id in emails
            for kind in ("processed", "delivered")
        ]
    )
    assert api_client.post(HOOK, body, content_type="application/json", **signer(body)).status_code == 200
    for email_id in emails:
        rows = outbox_event_list(selection=OutboxFilter(aggregate_id=str(email_id)))
        assert sorted(row.type for row in rows) == ["email.delivery_statuses", "email.requested"]
        (statuses,) = [row for row in rows if row.type == "email.delivery_statuses"]
        assert {item.email_id for item in EmailDeliveryStatuses.from_dict(statuses.payload).items()} == {email_id}


@pytest.mark.django_db
@pytest.mark.parametrize("tamper", ["body", "missing", "stale", "garbage"])
def test_a_bad_signature_is_403_and_writes_nothing(api_client, signer, tamper):
    body = hook_events()
    headers = signer(body)
    if tamper == "body":
        body = body.replace("delivered", "bounce")
    elif tamper == "missing":
        headers = {}
    elif tamper == "stale":
        headers = signer(body, timestamp=str(int(time.time()) - 3600))
    else:
        headers["HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE"] = "bm90IGEgc2lnbmF0dXJl"
    response = api_client.post(HOOK, body, content_type="application/json", **headers)
    assert response.status_code == 403
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_webhook_without_a_configured_key_refuses(api_client, settings):
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = ""
    assert api_client.post(HOOK, "[]", content_type="application/json").status_code == 503


# Rebuild and reconcile --------------------------------------------------------------------------


def _snapshot():
    rows = list(
        SentEmailLog.objects.order_by("id").values(
            "id", "owner_id", "recipients", "recipient_status", "status", "subject", "template_id"
        )
    )
    history = sorted(SentEmailLogEvent.objects.values_list("email_id", "recipient", "status"))
    return rows, history


@pytest.mark.django_db(transaction=True)
def test_rebuild_after_truncation_gives_the_same_table(conn, signer, api_client):
    from command_api.emails.models import SentEmail
    from core.deliveries.store import DeliveryStore
    from query_api.rebuild import read_model_rebuild

    user = UserFactory()
    client = client_for(user)
    from tests.factories import EmailTemplateFactory

    template = EmailTemplateFactory()
    for n in range(3):
        client.post(
            "/api/v1/emails/sent-email/",
            {"recipients": [f"a{n}@example.com", f"b{n}@example.com"], "template": template.pk},
            format="json",
        )
    requests = [EmailRequested.from_dict(e.payload) for e in OutboxEvent.objects.filter(type="email.requested")]
    store = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)
    try:
        for request in requests[:2]:
            claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
            store.record_sent(
                request, list(request.recipients), token=claim.token, message_id="m", attempt=1, provider="sendgrid"
            )
    finally:
        store.close()
    body = json.dumps(
        [
            {
                "email": requests[0].recipients[0],
                "timestamp": int(time.time()),
                "event": "delivered",
                "sg_event_id": "sg-rebuild-1",
                "sg_message_id": "m.0",
                "event_id": requests[0].event_id,
                "email_id": str(requests[0].email_id),
                "recipient": requests[0].recipients[0],
            }
        ]
    )
    assert api_client.post(HOOK, body, content_type="application/json", **signer(body)).status_code == 200
    events = [OutboxEvent.objects.get(pk=e.pk) for e in OutboxEvent.objects.order_by("created_at")]
    from core.contracts import event_from_dict

    apply_batch(conn, [event_from_dict(e.payload) for e in events])
    before = _snapshot()
    assert [r["status"] for r in before[0]] == ["sent", "sent", "queued"]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE read_sent_email, read_sent_email_event")
    result = read_model_rebuild()
    assert result.emails == SentEmail.objects.count() == 3
    assert _snapshot() == before
    assert read_model_rebuild().emails == 3 and _snapshot() == before  # and again: names were restored
    index_names = {i.name for i in SentEmailLog._meta.indexes}
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'read_sent_email'")
        assert index_names <= {r[0] for r in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_reconcile_reports_and_repairs_missing_and_behind_rows(conn, settings):
    from query_api.rebuild import read_model_reconcile
    from tests.factories import EmailTemplateFactory

    settings.RECONCILE_GRACE_SECONDS = 0
    client = client_for(UserFactory())
    template = EmailTemplateFactory()
    for n in range(2):
        client.post(
            "/api/v1/emails/sent-email/", {"recipients": [f"a{n}@example.com"], "template": template.pk}, format="json"
        )
    requests = [EmailRequested.from_dict(e.payload) for e in OutboxEvent.objects.filter(type="email.requested")]
    apply_batch(conn, requests[:1])  # the second email's row is missing
    from core.deliveries.store import DeliveryStore

    store = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)
    try:
        claim = store.claim(requests[0], lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
        store.record_sent(
            requests[0], list(requests[0].recipients), token=claim.token, message_id="m", attempt=1, provider="sendgrid"
        )
    finally:
        store.close()  # its email.sent never reached the projector: the first row is behind
    report = read_model_reconcile()
    assert (report.missing, report.behind, report.repaired) == ([requests[1].email_id], [requests[0].email_id], 0)
    assert read_model_reconcile(repair=True).repaired == 2
    assert row(requests[0].email_id).status == "sent" and row(requests[1].email_id).status == "queued"
    assert read_model_reconcile().missing == [] and read_model_reconcile().behind == []


@pytest.mark.django_db(transaction=True)
def test_reconcile_mends_a_row_whose_request_never_came_however_old(conn, settings):
    # During an upgrade, an earlier release's relay publishes a request to the senders alone: the
    # projector gets the email's `sent`, which makes its row, without an owner, and never the request.
    from core.deliveries.store import DeliveryStore
    from query_api.rebuild import read_model_reconcile
    from tests.factories import EmailTemplateFactory

    settings.RECONCILE_GRACE_SECONDS = 0
    user = UserFactory()
    body = {"recipients": ["ann@example.com"], "template": EmailTemplateFactory().pk}
    response = client_for(user).post("/api/v1/emails/sent-email/", body, format="json")
    request = EmailRequested.from_dict(OutboxEvent.objects.get(type="email.requested").payload)
    store = DeliveryStore(connection.settings_dict, pool_size=1, notify_channel=None)
    try:
        claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
        store.record_sent(request, ["ann@example.com"], token=claim.token, message_id="m", attempt=1, provider="x")
    finally:
        store.close()
    apply_batch(conn, [sent(email_id=request.email_id, recipients=["ann@example.com"])])
    assert row(request.email_id).owner_id is None  # invisible to its owner
    # Not among the newest emails (limit 0) nor unfinished: found as a row without an owner.
    report = read_model_reconcile(limit=0, repair=True)
    assert report.missing == [request.email_id] and report.repaired == 1
    mended = row(request.email_id)
    assert (mended.owner_id, mended.status, mended.subject) == (user.pk, "sent", request.subject)
    assert response.json()["id"] == request.email_id
    assert read_model_reconcile(limit=0).missing == []


# The projector process --------------------------------------------------------------------------


def publish_packed(topology, events: list, *, message_id: str, raw: bytes | None = None, headers=None) -> None:
    """A packed message, as the relay publishes every batch of rows to the projector."""
    body = raw if raw is not None else json.dumps([e if isinstance(e, dict) else e.to_dict() for e in events]).encode()
    broker.publish(topology, {}, message_id=message_id, routing_key=EVENTS_BATCH, raw=body, headers=headers)


@pytest.mark.django_db(transaction=True)
def test_the_projector_process_dead_letters_bad_events_alone(topology, projectors):
    # Messages of one event each, as an earlier release's relay published them (they may still be
    # in the queue at the upgrade): read as before, straight to the queue.
    one = {"queue": topology.queue("projector")}
    projector = projectors(topology)
    projector.wait_ready()
    good = requested(email_id=11)
    broker.publish(topology, good.to_dict(), message_id=good.event_id, routing_key=good.TYPE, **one)
    broker.publish(topology, {}, message_id="poison", routing_key="email.sent", raw=b"not json", **one)
    bad = delivered(email_id=11)
    bad_dict = bad.to_dict() | {"reported_at": "not a time"}  # parses, then fails in Postgres
    broker.publish(topology, bad_dict, message_id=bad.event_id, routing_key=bad.TYPE, **one)
    bad_batch = {
        "type": "email.delivery_statuses",
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "correlation_id": "c",
        "occurred_at": iso(NOW),
        "statuses": [{"type": "email.delivery_status"}],
    }
    broker.publish(topology, bad_batch, message_id="bad-batch", routing_key="email.delivery_statuses", **one)
    after = sent(email_id=11)
    broker.publish(topology, after.to_dict(), message_id=after.event_id, routing_key=after.TYPE, **one)
    # The projector's keeper records each in outbox_dead_letter for ops: nothing parked silently.
    from core.outbox.models import DeadLetter

    broker.wait_for(lambda: DeadLetter.objects.count() == 3, timeout=15, message="the three kept")
    kept = {d.message_id: d for d in DeadLetter.objects.all()}
    assert sorted(kept) == sorted(["poison", bad.event_id, "bad-batch"])
    assert {d.reason for d in kept.values()} == {"rejected"} and {d.resolution for d in kept.values()} == {"parked"}
    assert kept["poison"].body == "not json" and kept["poison"].queue == topology.queue("projector")
    assert kept[bad.event_id].email_id == 11 and kept[bad.event_id].type == bad.TYPE
    assert broker.queue_depth(topology.dead_letter_queue("projector")) == 0
    broker.wait_for(
        lambda: SentEmailLog.objects.filter(pk=11, status="sent").exists(),
        timeout=10,
        message="the good events applied",
    )
    assert projector.terminate() == 0


@pytest.mark.django_db(transaction=True)
def test_the_projector_parks_the_bad_events_of_a_packed_message_alone_and_applies_the_rest(topology, projectors):
    from core.outbox.models import DeadLetter

    projector = projectors(topology)
    projector.wait_ready()
    good, after = requested(email_id=13), sent(email_id=13)
    in_postgres = delivered(email_id=13).to_dict() | {"reported_at": "not a time"}  # parses, fails in Postgres
    contract = {"type": "email.sent", "event_id": str(uuid.uuid4()), "email_id": 13}  # breaks the contract
    unknown = {"type": "nobody.listens", "event_id": str(uuid.uuid4())}  # a type the projector does not know
    publish_packed(topology, [good, in_postgres, contract, unknown, after], message_id="packed")
    publish_packed(topology, [], message_id="unreadable", raw=b"[not json")
    publish_packed(topology, [], message_id="not-an-array", raw=b'{"type": "email.sent"}')
    broker.wait_for(lambda: DeadLetter.objects.count() == 5, timeout=15, message="the five kept")
    kept = {d.message_id: d for d in DeadLetter.objects.all()}
    assert sorted(kept) == sorted(
        [in_postgres["event_id"], contract["event_id"], unknown["event_id"], "unreadable", "not-an-array"]
    )
    # Each bad event on its own, with its type and body, as the keeper records a message.
    assert json.loads(kept[in_postgres["event_id"]].body) == in_postgres
    assert kept[in_postgres["event_id"]].type == in_postgres["type"] and kept[contract["event_id"]].type == "email.sent"
    assert {kept[i].headers["packed_in"] for i in (in_postgres["event_id"], contract["event_id"])} == {"packed"}
    assert {d.queue for d in kept.values()} == {topology.queue("projector")}
    assert {d.resolution for d in kept.values()} == {"parked"}
    broker.wait_for(
        lambda: SentEmailLog.objects.filter(pk=13, status="sent").exists(), timeout=10, message="the rest applied"
    )
    assert SentEmailLogEvent.objects.filter(email_id=13).count() == 3  # queued, sent to each of 2: nothing twice
    assert broker.queue_depth(topology.queue("projector")) == 0
    assert broker.queue_depth(topology.dead_letter_queue("projector")) == 0
    assert projector.terminate() == 0


@pytest.mark.django_db(transaction=True)
def test_the_projector_refreshes_a_message_on_its_last_delivery_instead_of_risking_it(topology, projectors):
    # RabbitMQ 3.x counts a closed connection's returns towards the delivery limit: a message handed
    # over for the last time is published afresh and acked, then applied from the copy.
    projector = projectors(topology)
    projector.wait_ready()
    event = requested(email_id=12)
    limit = topology.consumer("projector").delivery_limit
    publish_packed(topology, [event], message_id="packed", headers={"x-delivery-count": limit - 1})
    broker.wait_for(
        lambda: SentEmailLog.objects.filter(pk=12, owner_id=7).exists(),
        timeout=15,
        message="applied from the fresh copy",
    )
    assert projector.events().count("message_refreshed_before_delivery_limit") == 1
    assert broker.queue_depth(topology.dead_letter_queue("projector")) == 0
    assert broker.queue_depth(topology.queue("projector")) == 0
    assert SentEmailLogEvent.objects.filter(email_id=12).count() == 1  # applied once


@pytest.mark.django_db(transaction=True)
def test_reconcile_looks_at_every_unfinished_email_finds_the_stuck_and_sends_lost_requests_again(conn, settings):
    from command_api.emails.models import SentEmail
    from query_api.rebuild import read_model_reconcile
    from tests.factories import EmailTemplateFactory

    settings.RECONCILE_GRACE_SECONDS = 0
    settings.EMAIL_STUCK_AFTER_SECONDS = 60
    client = client_for(UserFactory())
    template = EmailTemplateFactory()
    for n in range(3):
        client.post(
            "/api/v1/emails/sent-email/", {"recipients": [f"a{n}@example.com"], "template": template.pk}, format="json"
        )
    requests = sorted(
        (EmailRequested.from_dict(e.payload) for e in OutboxEvent.objects.filter(type="email.requested")),
        key=lambda r: r.email_id,
    )
    apply_batch(conn, requests)  # every read row is there: queued
    old = requests[0]  # accepted two hours ago, published long ago, never reached a sender: lost
    SentEmail.objects.filter(pk=old.email_id).update(created=datetime.now(UTC) - timedelta(hours=2))
    OutboxEvent.objects.filter(id=old.event_id).update(published_at=datetime.now(UTC) - timedelta(hours=2))
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE read_sent_email SET created = created - interval '2 hours' WHERE id = %s", [old.email_id]
        )
    report = read_model_reconcile(limit=1)  # the newest one only, and every unfinished one
    assert report.stuck == [old.email_id] and report.rearmed == []  # found, not mended without --repair
    report = read_model_reconcile(limit=1, repair=True)
    assert report.rearmed == [old.email_id]
    row = OutboxEvent.objects.get(id=old.event_id)
    assert row.published_at is None and "never reached a sender" in row.last_error


@pytest.mark.django_db(transaction=True)
def test_reconcile_never_overwrites_a_row_someone_made_meanwhile(conn):
    from query_api.projection import Row
    from query_api.rebuild import _write

    apply_batch(conn, [requested(email_id=21), sent(email_id=21)])
    with connection.cursor() as cursor:  # reconcile thought 21 missing, built it stale, then writes
        assert (
            _write(
                cursor, "read_sent_email", "read_sent_email_event", {21: Row(id=21, status="queued")}, [], only_new={21}
            )
            == 0
        )
    assert SentEmailLog.objects.get(pk=21).status == "sent"


@pytest.mark.django_db(transaction=True)
def test_the_projector_counts_the_emails_not_finished_in_time(topology, projectors):
    projector = projectors(topology, EMAIL_STUCK_AFTER_SECONDS=0)
    projector.wait_ready()
    publish_packed(topology, [requested(email_id=31), requested(email_id=32), sent(email_id=32)], message_id="p")
    broker.wait_for(
        lambda: "emails_unfinished 1.0" in projector.get("/metrics")[1], timeout=15, message="one email not finished"
    )


@pytest.mark.django_db(transaction=True)
def test_rebuild_and_reconcile_commands(capsys, settings):
    from query_api.__main__ import main as cli
    from tests.factories import EmailTemplateFactory

    settings.RECONCILE_GRACE_SECONDS = 0
    client_for(UserFactory()).post(
        "/api/v1/emails/sent-email/",
        {"recipients": ["a@example.com"], "template": EmailTemplateFactory().pk},
        format="json",
    )
    assert cli(["reconcile"]) == 1  # the projector never ran: one row missing
    assert json.loads(capsys.readouterr().out)["missing"] == 1
    assert cli(["rebuild"]) == 0
    assert "rebuilt the read table: 1 emails" in capsys.readouterr().out
    assert cli(["reconcile"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "missing": 0,
        "behind": 0,
        "repaired": 0,
        "stuck": 0,
        "rearmed": 0,
        "examples": [],
        "stuck_examples": [],
    }


@pytest.mark.django_db
def test_reconcile_is_scheduled_hourly():
    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    job = Schedule.objects.get(name="read_model_reconcile")
    assert job.schedule_type == Schedule.HOURLY and job.repeats < 0
    assert import_string(job.func)() == {"missing": 0, "behind": 0, "repaired": 0, "stuck": 0, "rearmed": 0}
