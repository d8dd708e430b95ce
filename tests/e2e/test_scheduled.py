"""End to end: a scheduled send and a cancelled one, every process a real OS process, every call
over HTTP, the fake SendGrid recording what it accepted, when, and when it let it leave."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from tests.broker import wait_for
from tests.system import ROOT, Http, System

pytestmark = pytest.mark.django_db(transaction=True)


HANDOFF = 3  # SCHEDULED_HANDOFF_SECONDS, shortened from 2 minutes so the test waits seconds


@pytest.fixture
def system(topology):
    running = System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"e2e-scheduled-{topology.prefix}",
        SCHEDULED_HANDOFF_SECONDS=HANDOFF,
    )
    try:
        yield running.start_all()
    finally:
        running.stop_all()


def test_scheduled_is_handed_off_early_leaves_at_its_time_and_a_cancelled_one_never_does(system):
    token, template = system.staff_with_template("scheduler")
    writer, reader = Http(system.command_url, token), Http(system.query_url, token)
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=HANDOFF + 8)  # time to cancel one
    ids = {}
    for name in ("kept", "cancelled"):
        status, answer = writer.call(
            "POST",
            "/api/v1/emails/sent-email/",
            {"recipients": [f"{name}@example.com"], "template": template, "send_at": send_at.isoformat()},
        )
        assert status == 202, answer
        ids[name] = answer["id"]

    def status_of(name):
        status, detail = reader.call("GET", f"/api/v1/emails/sent-email/{ids[name]}/")
        return detail["status"] if status == 200 else None

    wait_for(lambda: status_of("kept") == "scheduled", timeout=10, message="scheduled in the log")
    status, answer = writer.call("POST", f"/api/v1/emails/sent-email/{ids['cancelled']}/cancel/")
    assert (status, answer["status"]) == (202, "cancelled"), answer
    wait_for(lambda: status_of("cancelled") == "cancelled", timeout=10, message="cancelled in the log")
    assert system.accepted_calls() == []  # nothing before its hand-off

    # Handed to the provider HANDOFF seconds early, with send_at: the provider holds it.
    wait_for(lambda: status_of("kept") in ("sent", "delivered"), timeout=20, message="handed off")
    (call,) = system.accepted_calls()  # the kept one only, once
    assert [r["email"] for r in call["recipients"]] == ["kept@example.com"]
    assert call["send_at"] == int(send_at.timestamp())
    assert call["received_at"] >= send_at.timestamp() - HANDOFF  # not before the hand-off
    assert call["recipients"][0]["sends_at"] == send_at.timestamp()  # it leaves at its time
    status, answer = writer.call("POST", f"/api/v1/emails/sent-email/{ids['kept']}/cancel/")
    assert status == 409, answer  # too late: a sender took it

    # The provider's events come when it leaves, at send_at, and the log shows it delivered.
    wait_for(lambda: status_of("kept") == "delivered", timeout=HANDOFF + 20, message="delivered after send_at")
    assert datetime.now(UTC) >= send_at
    status, message = system.fake().call("GET", f"/_messages/{call['message_id']}")
    assert {e["event"]["event"] for e in message["webhook_events"]} == {"processed", "delivered"}
    assert all(e["last_attempt_at"] >= send_at.timestamp() for e in message["webhook_events"])
    status, detail = reader.call("GET", f"/api/v1/emails/sent-email/{ids['kept']}/")
    history = [h["status"] for h in detail["history"]]
    assert history[:2] == ["scheduled", "queued"] and "sent" in history and history[-1] == "delivered"
    assert detail["send_at"].startswith(send_at.strftime("%Y-%m-%dT%H:%M:%S"))

    # The cancelled email's request was published for its hand-off too: the sender took nothing.
    def sender_passed_it_by():
        log = (system.log_dir / "sender.log").read_text()
        return any(
            '"email_already_handled"' in line and f'"email_id": {ids["cancelled"]},' in line
            for line in log.splitlines()
        )

    wait_for(sender_passed_it_by, timeout=10, message="the sender acked the cancelled request")
    assert len(system.accepted_calls()) == 1 and status_of("cancelled") == "cancelled"
