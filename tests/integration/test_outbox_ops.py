"""Ops on the outbox: status, list, replay (CLI, REST, admin), purge."""

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from core.outbox.models import OutboxEvent, OutboxReplay
from core.outbox.selectors import OutboxFilter, outbox_status
from core.outbox.services import outbox_purge_published, outbox_replay
from outbox_relay.__main__ import main as cli

pytestmark = pytest.mark.django_db

T0 = timezone.now() - timedelta(days=2)


def make(aggregate="1", type="email.requested", created=T0, state="published", payload=None, **extra):
    published_at = created + timedelta(seconds=1) if state == "published" else None
    failed_at = created + timedelta(seconds=1) if state == "failed" else None
    return OutboxEvent.objects.create(
        id=uuid.uuid4(),
        aggregatetype="sent_email",
        aggregateid=aggregate,
        type=type,
        payload=payload or {"n": aggregate, "recipients": []},
        created_at=created,
        not_before=created,
        published_at=published_at,
        failed_at=failed_at,
        attempts=1 if state != "pending" else 0,
        **extra,
    )


@pytest.fixture
def rows():
    return {
        "a1": make("1", created=T0),
        "a1_sent": make("1", type="email.sent", created=T0 + timedelta(minutes=1)),
        "b": make("2", created=T0 + timedelta(hours=1)),
        "c": make("3", created=T0 + timedelta(hours=2)),
        "failed": make("4", created=T0 + timedelta(hours=3), state="failed", last_error="312 NO_ROUTE"),
        "pending": make("1", created=T0 + timedelta(hours=4), state="pending"),
    }


def pending_ids():
    return set(
        OutboxEvent.objects.filter(published_at__isnull=True, failed_at__isnull=True).values_list("id", flat=True)
    )


@pytest.mark.parametrize(
    "selection, expected",
    [
        (lambda r: OutboxFilter(event_ids=(str(r["b"].id),)), {"b"}),
        (lambda r: OutboxFilter(aggregate_id="1"), {"a1", "a1_sent"}),
        (lambda r: OutboxFilter(event_type="email.sent"), {"a1_sent"}),
        (lambda r: OutboxFilter(since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=3)), {"b", "c", "failed"}),
        (lambda r: OutboxFilter(aggregate_id="1", event_type="email.requested"), {"a1"}),
    ],
)
def test_replay_picks_exactly_the_rows_it_names(rows, selection, expected):
    before = pending_ids()
    result = outbox_replay(selection=selection(rows), actor="ops@example.com", via="cli", reason="test")
    assert result.count == len(expected)
    assert pending_ids() - before == {rows[name].id for name in expected}
    replay = OutboxReplay.objects.get()
    assert (replay.actor, replay.via, replay.event_count, replay.reason) == (
        "ops@example.com",
        "cli",
        len(expected),
        "test",
    )
    assert set(replay.events.values_list("id", flat=True)) == {rows[name].id for name in expected}
    for name in expected:
        rows[name].refresh_from_db()
        assert rows[name].failed_at is None and rows[name].last_error == ""
        assert rows[name].attempts == 1  # the history stays


def test_dry_run_changes_nothing(rows):
    before = list(OutboxEvent.objects.order_by("id").values())
    result = outbox_replay(selection=OutboxFilter(aggregate_id="1"), actor="ops", via="cli", dry_run=True)
    assert result.count == 2 and result.replay is None
    assert {e.id for e in result.sample} == {rows["a1"].id, rows["a1_sent"].id}
    assert list(OutboxEvent.objects.order_by("id").values()) == before
    assert not OutboxReplay.objects.exists()


def test_replay_needs_a_selection(rows):
    from core.errors import ApplicationError

    with pytest.raises(ApplicationError, match="Name what to replay"):
        outbox_replay(selection=OutboxFilter(), actor="ops", via="cli")


def test_status_counts(rows):
    make("9", created=timezone.now() + timedelta(hours=1), state="pending")  # scheduled
    status = outbox_status()
    assert (status.backlog, status.scheduled, status.failed) == (1, 1, 1)
    assert status.oldest_due_age_seconds > 86400
    assert status.published_last_hour == 0


def test_purge_deletes_only_published_rows_past_retention(rows):
    recent = make("7", created=timezone.now() - timedelta(hours=1))
    assert outbox_purge_published(older_than=timedelta(days=1), dry_run=True) == 4
    assert OutboxEvent.objects.count() == 7
    assert outbox_purge_published(older_than=timedelta(days=1)) == 4
    assert set(OutboxEvent.objects.values_list("id", flat=True)) == {rows["failed"].id, rows["pending"].id, recent.id}


def test_purge_keeps_the_request_of_an_email_not_finished(rows):
    from core.deliveries.models import Delivery

    def request(states: list[str]) -> OutboxEvent:
        row = make("9", payload={"recipients": [f"r{n}@example.com" for n in range(len(states))]})
        for n, state in enumerate(states):
            Delivery.objects.create(event_id=row.id, recipient=f"r{n}@example.com", email_id=9, state=state)
        return row

    finished = request(["sent", "failed"])
    retrying, held, never_claimed = request(["sent", "retry"]), request(["held"]), request([])
    never_claimed.payload = {"recipients": ["x@example.com"]}
    never_claimed.save()
    outbox_purge_published(older_than=timedelta(days=1))
    left = set(OutboxEvent.objects.values_list("id", flat=True))
    assert finished.id not in left
    assert {retrying.id, held.id, never_claimed.id} <= left  # the only way to send them again


def test_purge_is_scheduled_daily():
    from django.utils.module_loading import import_string

    job = Schedule.objects.get(name="outbox_purge_published")
    assert job.schedule_type == Schedule.DAILY and job.repeats < 0
    assert import_string(job.func)() == 0


# The CLI ------------------------------------------------------------------------------------


def test_cli_status_and_list(rows, capsys):
    assert cli(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    assert cli(["list", "--failing", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in listed] == [str(rows["failed"].id)]
    assert listed[0]["last_error"] == "312 NO_ROUTE"
    assert cli(["list", "--state", "pending", "--aggregate", "1", "--json"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [str(rows["pending"].id)]


def test_cli_replay_dry_run_then_for_real(rows, capsys):
    assert cli(["replay", "--type", "email.sent", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 published or failed events match" in out and "dry run: nothing changed" in out
    assert not OutboxReplay.objects.exists()
    assert cli(["replay", "--type", "email.sent", "--actor", "night-shift", "--reason", "projector bug"]) == 0
    assert "replayed 1 events" in capsys.readouterr().out
    replay = OutboxReplay.objects.get()
    assert (replay.actor, replay.reason, replay.filters) == (
        "night-shift",
        "projector bug",
        {"event_type": "email.sent"},
    )


def test_cli_refuses_an_empty_replay_and_bad_times(rows, capsys):
    assert cli(["replay"]) == 2
    assert "Name what to replay" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli(["replay", "--since", "yesterday"])
    assert exit_info.value.code == 2
    assert "not an ISO 8601 date or time within the calendar: 'yesterday'" in capsys.readouterr().err


def test_cli_purge(rows, capsys):
    assert cli(["purge", "--older-than-days", "1", "--dry-run"]) == 0
    assert "4 published rows older than 1 days would be deleted" in capsys.readouterr().out
    assert cli(["purge", "--older-than-days", "1"]) == 0
    assert "deleted 4" in capsys.readouterr().out


# REST and admin -----------------------------------------------------------------------------

OPS = "/api/v1/ops/outbox/"


def test_ops_endpoints_are_staff_only(api_client, user_client, rows):
    for path in (OPS, OPS + "status/"):
        assert api_client.get(path).status_code == 401
        assert user_client.get(path).status_code == 403
    assert user_client.post(OPS + "replay/", {"aggregate_id": "1"}, format="json").status_code == 403
    assert pending_ids() == {rows["pending"].id}


def test_ops_list_filters(staff_client, rows):
    body = staff_client.get(OPS, {"aggregate_id": "1", "state": "published"}).json()
    assert [r["id"] for r in body["results"]] == [str(rows["a1"].id), str(rows["a1_sent"].id)]
    ids = staff_client.get(OPS + f"?event_id={rows['b'].id}&event_id={rows['c'].id}").json()["results"]
    assert {r["id"] for r in ids} == {str(rows["b"].id), str(rows["c"].id)}
    bad = staff_client.get(OPS, {"state": "nope", "since": "soon"})
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"state", "since"}
    assert staff_client.get(OPS + "status/").json()["failed"] == 1


def test_ops_replay_records_the_staff_user(staff_client, staff, rows):
    dry = staff_client.post(OPS + "replay/", {"event_type": "email.sent", "dry_run": True}, format="json").json()
    assert (dry["count"], dry["dry_run"], dry["replay_id"]) == (1, True, None)
    done = staff_client.post(
        OPS + "replay/", {"event_ids": [str(rows["failed"].id)], "reason": "fixed binding"}, format="json"
    ).json()
    assert done["count"] == 1
    replay = OutboxReplay.objects.get(pk=done["replay_id"])
    assert (replay.actor, replay.via) == (staff.email, "api")
    empty = staff_client.post(OPS + "replay/", {}, format="json")
    assert empty.status_code == 400 and "selection" in empty.json()["errors"]


def test_admin_replay_action(client, django_user_model, rows):
    admin = django_user_model.objects.create_superuser(username="root", email="root@example.com", password="x-Strong-9")
    client.force_login(admin)
    response = client.post(
        "/admin/outbox/outboxevent/",
        {
            "action": "replay_selected",
            "_selected_action": [str(rows["b"].id), str(rows["pending"].id)],
        },
        follow=True,
    )
    assert response.status_code == 200
    assert "Replayed 1 events (1 still pending, left alone)." in response.content.decode()
    assert OutboxReplay.objects.get().via == "admin"
    assert rows["b"].id in pending_ids()
