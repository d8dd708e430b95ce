"""Re-drive: failed and held deliveries sent again, from the CLI, the staff API and the admin;
and the dead letters the consumers kept, re-driven or dismissed."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from core.broker import EVENTS_BATCH
from core.contracts import EmailRequested, EmailSent, event_from_dict
from core.deliveries.models import Delivery, Redrive
from core.deliveries.services import RedriveSelection, deliveries_redrive
from core.outbox.models import DeadLetter, OutboxEvent
from outbox_relay.__main__ import main as cli
from tests import broker
from tests.conftest import client_for
from tests.factories import email_requested

pytestmark = pytest.mark.django_db


def request_row(recipients=("ann@example.com", "bob@example.org"), email_id=5) -> EmailRequested:
    """A request the relay published long ago, as the outbox keeps it."""
    event = email_requested(recipients, correlation_id="c", email_id=email_id, from_email="f@example.com", subject="Hi")
    OutboxEvent.objects.create(
        id=event.event_id,
        aggregatetype="sent_email",
        aggregateid=str(email_id),
        type=event.TYPE,
        payload=event.to_dict(),
        published_at=datetime.now(UTC),
    )
    return event


def delivery(event, recipient, state, **extra) -> Delivery:
    return Delivery.objects.create(
        event_id=event.event_id,
        recipient=recipient,
        email_id=event.email_id,
        state=state,
        attempts=13,
        last_error="gave up after 13 attempts: 503",
        **extra,
    )


def armed(event) -> bool:
    return OutboxEvent.objects.filter(id=event.event_id, published_at__isnull=True).exists()


def test_failed_recipients_go_again_with_a_fresh_schedule_and_their_request_armed():
    event = request_row()
    delivery(event, "ann@example.com", "failed")
    delivery(event, "bob@example.org", "sent")
    dry = deliveries_redrive(selection=RedriveSelection(email_ids=(5,)), actor="ops", via="cli", dry_run=True)
    assert (dry.retried, dry.settled, Redrive.objects.count(), armed(event)) == (1, 0, 0, False)
    result = deliveries_redrive(selection=RedriveSelection(email_ids=(5,)), actor="ops", via="cli", reason="fixed")
    assert (result.retried, result.settled, result.unavailable) == (1, 0, 0)
    ann = Delivery.objects.get(recipient="ann@example.com")
    assert (ann.state, ann.attempts, ann.last_redrive_id) == ("retry", 0, result.redrive.pk)
    assert ann.last_error.startswith("re-driven: gave up") and ann.next_attempt_at is not None
    assert Delivery.objects.get(recipient="bob@example.org").state == "sent"  # untouched
    assert armed(event)
    audit = Redrive.objects.get()
    assert (audit.actor, audit.via, audit.reason, audit.retried, audit.filters) == (
        "ops",
        "cli",
        "fixed",
        1,
        {"email_ids": [5], "states": ["failed", "held"]},
    )
    # Idempotent: the same re-drive again finds nothing failed or held.
    assert deliveries_redrive(selection=RedriveSelection(email_ids=(5,)), actor="ops", via="cli").retried == 0


def test_held_deliveries_the_provider_reported_on_are_marked_sent_never_resent():
    event = request_row()
    delivery(event, "ann@example.com", "held", provider_seen_at=datetime.now(UTC), provider_message_id="m9")
    delivery(event, "bob@example.org", "held")
    result = deliveries_redrive(selection=RedriveSelection(event_ids=(event.event_id,)), actor="ops", via="api")
    assert (result.retried, result.settled) == (1, 1)
    assert dict(Delivery.objects.values_list("recipient", "state")) == {
        "ann@example.com": "sent",
        "bob@example.org": "retry",
    }
    (sent,) = [event_from_dict(r.payload) for r in OutboxEvent.objects.filter(type="email.sent")]
    assert isinstance(sent, EmailSent) and sent.recipients == ("ann@example.com",) and sent.provider_message_id == "m9"


def test_a_request_that_is_gone_is_left_alone_unless_a_dead_letter_kept_it():
    event = request_row()
    delivery(event, "ann@example.com", "failed")
    OutboxEvent.objects.filter(id=event.event_id).delete()  # purged
    result = deliveries_redrive(selection=RedriveSelection(email_ids=(5,)), actor="ops", via="cli")
    assert (result.retried, result.unavailable) == (0, 1)
    assert Delivery.objects.get().state == "failed"
    DeadLetter.objects.create(
        queue="q",
        reason="delivery_limit",
        died_at=datetime.now(UTC),
        message_id=event.event_id,
        type=event.TYPE,
        email_id=5,
        body=json.dumps(event.to_dict()),
    )
    result = deliveries_redrive(selection=RedriveSelection(email_ids=(5,)), actor="ops", via="cli")
    assert (result.retried, result.unavailable) == (1, 0) and armed(event)


def test_an_empty_selection_or_a_state_that_cannot_be_redriven_is_refused(staff_client, user_client):
    url = "/api/v1/ops/deliveries/redrive/"
    assert staff_client.post(url, {}, format="json").status_code == 400
    response = staff_client.post(url, {"email_ids": [5], "states": ["sent"]}, format="json")
    assert response.status_code == 400 and "states.0" in response.json()["errors"]
    assert user_client.post(url, {"email_ids": [5]}, format="json").status_code == 403
    assert Redrive.objects.count() == 0


def test_the_staff_api_lists_and_redrives(staff_client):
    event = request_row()
    delivery(event, "ann@example.com", "failed")
    listed = staff_client.get("/api/v1/ops/deliveries/", {"state": "failed"}).json()
    assert [d["recipient"] for d in listed["results"]] == ["ann@example.com"]
    dry = staff_client.post("/api/v1/ops/deliveries/redrive/", {"email_ids": [5], "dry_run": True}, format="json")
    assert dry.json()["retried"] == 1 and dry.json()["redrive_id"] is None and not armed(event)
    done = staff_client.post(
        "/api/v1/ops/deliveries/redrive/", {"email_ids": [5], "reason": "provider back"}, format="json"
    ).json()
    assert done["retried"] == 1 and Redrive.objects.get(pk=done["redrive_id"]).via == "api" and armed(event)


def test_the_cli_redrives_with_a_dry_run_first(capsys):
    event = request_row()
    delivery(event, "ann@example.com", "failed")
    assert cli(["redrive", "--email", "5", "--dry-run", "--actor", "ops"]) == 0
    assert "1 to send again" in capsys.readouterr().out and not armed(event)
    assert cli(["redrive", "--email", "5", "--reason", "provider back", "--actor", "ops"]) == 0
    assert "1 sent again" in capsys.readouterr().out and armed(event)
    assert cli(["redrive"]) == 2  # no selection


def test_the_admin_action_redrives_the_selected(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="boss", email="boss@example.com", password="x-Pw-12345")
    client.force_login(admin)
    event = request_row()
    failed = delivery(event, "ann@example.com", "failed")
    response = client.post(
        "/admin/sender/delivery/", {"action": "redrive_selected", "_selected_action": [failed.pk]}, follow=True
    )
    assert response.status_code == 200 and Delivery.objects.get().state == "retry" and armed(event)
    assert Redrive.objects.get().via == "admin"


# Dead letters ---------------------------------------------------------------------------------


def dead_letter(body, **extra) -> DeadLetter:
    return DeadLetter.objects.create(
        queue="emails.projector", reason="rejected", died_at=datetime.now(UTC), body=body, **extra
    )


def test_dead_letters_are_listed_redriven_through_the_outbox_and_dismissed(staff_client):
    event_id = str(uuid.uuid4())
    status = {
        "type": "email.delivery_statuses",
        "schema_version": 1,
        "event_id": event_id,
        "correlation_id": "c",
        "occurred_at": "2026-11-30T10:00:00+00:00",
        "statuses": [],
    }
    good = dead_letter(json.dumps(status), message_id=event_id, type="email.delivery_statuses")
    junk = dead_letter("not json", message_id="x")
    listed = staff_client.get("/api/v1/ops/dead-letters/").json()["results"]
    assert sorted(d["id"] for d in listed) == sorted([good.pk, junk.pk])
    url = "/api/v1/ops/dead-letters/redrive/"
    dry = staff_client.post(url, {"ids": [good.pk, junk.pk], "dry_run": True}, format="json").json()
    assert dry["count"] == 1 and "not a JSON event" in dry["skipped"][0] and not OutboxEvent.objects.exists()
    assert staff_client.post(url, {"ids": [good.pk, junk.pk]}, format="json").json()["count"] == 1
    row = OutboxEvent.objects.get(id=event_id)
    assert row.published_at is None and row.type == "email.delivery_statuses" and row.payload == status
    assert DeadLetter.objects.get(pk=good.pk).resolution == "redriven"
    assert staff_client.post(url, {"ids": [good.pk]}, format="json").json()["count"] == 0  # once
    dismissed = staff_client.post("/api/v1/ops/dead-letters/dismiss/", {"ids": [junk.pk]}, format="json")
    assert dismissed.json()["count"] == 1
    assert staff_client.get("/api/v1/ops/dead-letters/").json()["results"] == []
    assert staff_client.post(url, {"ids": []}, format="json").status_code == 400


def test_redriving_reports_an_earlier_release_queued_for_the_sender_notes_them(staff_client):
    # Before the webhook noted them itself, the provider's reports went to the sender's
    # sender-receipts queue, and one that broke it was kept as a dead letter. Published again
    # now, they reach the projector alone: the redrive notes them on the deliveries.
    event = email_requested(["ann@example.com", "bob@example.org"], email_id=5)
    for recipient in event.recipients:
        delivery(event, recipient, "unknown")
    statuses = {
        "type": "email.delivery_statuses",
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "correlation_id": "c",
        "occurred_at": "2026-11-30T10:00:01+00:00",
        "statuses": [
            {
                "type": "email.delivery_status",
                "schema_version": 1,
                "event_id": str(uuid.uuid4()),
                "correlation_id": "c",
                "occurred_at": "2026-11-30T10:00:01+00:00",
                "email_id": 5,
                "request_event_id": event.event_id,
                "recipient": "ann@example.com",
                "status": "processed",
                "provider": "sendgrid",
                "provider_event_id": "sg-5",
                "provider_message_id": "m5.filter0001.1.0",
                "reason": "",
                "reported_at": "2026-11-30T10:00:00+00:00",
            }
        ],
    }
    kept = dead_letter(json.dumps(statuses), message_id=statuses["event_id"], type="email.delivery_statuses")
    kept.queue = "emails.sender-receipts"
    kept.save()
    url = "/api/v1/ops/dead-letters/redrive/"
    assert staff_client.post(url, {"ids": [kept.pk]}, format="json").json()["count"] == 1
    noted = {d.recipient: (d.provider_seen_at is not None, d.provider_message_id) for d in Delivery.objects.all()}
    assert noted == {"ann@example.com": (True, "m5"), "bob@example.org": (False, "")}
    assert OutboxEvent.objects.get(id=statuses["event_id"]).published_at is None  # and the projector gets it


def test_a_packed_message_kept_whole_is_redriven_event_by_event(staff_client):
    # The projector's packed messages (EVENTS_BATCH) die whole when they cannot be read or keep
    # failing: each event goes through the outbox again, alone, with its own id.
    events = [
        {
            "type": "email.scheduled",
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "correlation_id": "c",
            "occurred_at": "2026-11-30T10:00:00+00:00",
            "email_id": n,
        }
        for n in (7, 8)
    ]
    # A request too: the sender had it alone; its failed recipients must not go again.
    request = email_requested(["ann@example.com"], email_id=9)
    delivery(request, "ann@example.com", "failed")
    events.append(request.to_dict())
    packed = dead_letter(json.dumps(events), message_id=str(uuid.uuid4()), type=EVENTS_BATCH)
    no_ids = dead_letter(json.dumps([{"type": "email.sent"}]), message_id=str(uuid.uuid4()), type=EVENTS_BATCH)
    not_events = dead_letter(json.dumps([1, 2]), message_id=str(uuid.uuid4()), type=EVENTS_BATCH)
    # Re-driven in the same call, after it: a request the sender's queue kept, whose recipient goes again.
    other = email_requested(["bob@example.org"], email_id=10)
    delivery(other, "bob@example.org", "failed")
    senders = dead_letter(json.dumps(other.to_dict()), message_id=other.event_id, type="email.requested")
    senders.queue = "emails.sender"
    senders.save()
    url = "/api/v1/ops/dead-letters/redrive/"
    ids = [packed.pk, no_ids.pk, not_events.pk, senders.pk]
    answer = staff_client.post(url, {"ids": ids}, format="json").json()
    assert answer["count"] == 2
    assert sorted(answer["skipped"]) == sorted(
        [f"#{no_ids.pk}: an event has no event id", f"#{not_events.pk}: the body is not a JSON event array"]
    )
    rows = {str(row.id): row for row in OutboxEvent.objects.exclude(id=other.event_id)}
    assert sorted(rows) == sorted(e["event_id"] for e in events)
    for event in events:
        row = rows[event["event_id"]]
        assert row.payload == event and row.type == event["type"] and row.aggregateid == str(event["email_id"])
        assert row.published_at is None
        # The relay's packed message had no headers of its own: rebuilt from the payload.
        wanted = {"schema_version": 1, "correlation_id": event["correlation_id"], "aggregateid": str(event["email_id"])}
        assert row.headers == wanted
    assert DeadLetter.objects.get(pk=packed.pk).resolution == "redriven"
    states = {d.recipient: d.state for d in Delivery.objects.all()}
    assert states["ann@example.com"] == "failed" and states["bob@example.org"] != "failed"
    assert Redrive.objects.count() == 1


def test_the_cli_lists_redrives_and_dismisses_dead_letters(capsys):
    kept = dead_letter("not json", message_id="x", type="email.sent")
    assert cli(["dead-letters"]) == 0
    assert f"#{kept.pk}" in capsys.readouterr().out
    assert cli(["dead-letters", "redrive", "--id", str(kept.pk)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert cli(["dead-letters", "dismiss", "--id", str(kept.pk), "--actor", "ops"]) == 0
    assert DeadLetter.objects.get().resolution == "dismissed" and DeadLetter.objects.get().resolved_by == "ops"
    assert cli(["dead-letters", "redrive"]) == 2


@pytest.mark.django_db(transaction=True)
def test_a_failed_email_redriven_reaches_the_provider_and_the_log(topology, senders, relays, projectors, fake_sendgrid):
    from query_api.models import SentEmailLog
    from tests.factories import EmailTemplateFactory, UserFactory

    fake, _ = fake_sendgrid
    fake.faults.update({"reject_pattern": "^ann@"})  # refused: a permanent 400
    relays(topology).wait_ready()
    senders(topology).wait_ready()
    projectors(topology).wait_ready()
    email_id = (
        client_for(UserFactory())
        .post(
            "/api/v1/emails/sent-email/",
            {"recipients": ["ann@example.com"], "template": EmailTemplateFactory().pk},
            format="json",
        )
        .json()["id"]
    )
    broker.wait_for(
        lambda: SentEmailLog.objects.filter(pk=email_id, status="failed").exists(),
        timeout=30,
        message="failed in the log",
    )
    fake.faults.update({"reject_pattern": ""})  # the cause is fixed
    assert deliveries_redrive(selection=RedriveSelection(email_ids=(email_id,)), actor="ops", via="cli").retried == 1
    broker.wait_for(
        lambda: SentEmailLog.objects.filter(pk=email_id, status__in=["sent", "delivered"]).exists(),
        timeout=30,
        message="sent after the re-drive",
    )
    assert len(fake.messages) == 1 and Delivery.objects.get(email_id=email_id).state == "sent"
