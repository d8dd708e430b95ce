"""Suppressions against the real Postgres (and, end to end, RabbitMQ and the real processes): the
Event Webhook feeds the list, the API changes it, and the sender's claim keeps suppressed
recipients from the provider while the others go out."""

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import override_settings

from core.contracts import EmailRequested, EmailSuppressed, event_from_dict
from core.deliveries.models import Delivery
from core.deliveries.store import DeliveryStore
from core.outbox.models import OutboxEvent
from core.suppressions.models import Suppression
from core.suppressions.services import suppression_add
from sender.handlers import ACK, Policy, handle_email_requested
from sender.provider import SendGridProvider
from tests import broker
from tests.conftest import HOOK, client_for, golden
from tests.factories import EmailTemplateFactory, UserFactory, email_requested

URL = "/api/v1/suppressions/"
POLICY = Policy(schedule=(0.05, 0.05, 0.05), lease_seconds=30, resend_in_doubt=True, in_doubt_grace=0.5, jitter=0)


def webhook_item(email_id, request_event_id, recipient, event, **extra) -> dict:
    return {
        "email": recipient,
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": f"sg-{uuid.uuid4()}",
        "sg_message_id": "m1.filter0001",
        "event_id": request_event_id,
        "email_id": str(email_id),
        "recipient": recipient,
        **extra,
    }


def post_hook(client, signer, items) -> dict:
    body = json.dumps(items)
    response = client.post(HOOK, body, content_type="application/json", **signer(body))
    assert response.status_code == 200, response.content
    return response.json()


def send(client, recipients, template) -> int:
    response = client.post(
        "/api/v1/emails/sent-email/", {"recipients": recipients, "template": template.pk}, format="json"
    )
    assert response.status_code == 202, response.content
    return response.json()["id"]


def request_of(email_id) -> EmailRequested:
    row = OutboxEvent.objects.get(type="email.requested", aggregateid=str(email_id))
    return EmailRequested.from_dict(row.payload)


def listed(client, **query) -> dict[str, str]:
    response = client.get(URL, query)
    assert response.status_code == 200, response.content
    return {entry["address"]: entry["reason"] for entry in response.json()["results"]}


# The Event Webhook feeds the list -----------------------------------------------------------------


@pytest.mark.django_db
def test_hard_bounces_spam_reports_and_unsubscribes_suppress_and_nothing_else_does(api_client, signer, template):
    owner, other = UserFactory(), UserFactory()
    email_id = send(client_for(owner), ["a@example.com"], template)
    request = request_of(email_id)
    items = [
        webhook_item(email_id, request.event_id, "Hard@Example.com", "bounce", type="bounce", reason="550 5.1.1"),
        webhook_item(email_id, request.event_id, "blocked@example.com", "bounce", type="blocked", reason="spam"),
        webhook_item(email_id, request.event_id, "spam@example.com", "spamreport"),
        webhook_item(email_id, request.event_id, "unsub@example.com", "unsubscribe"),
        webhook_item(email_id, request.event_id, "group@example.com", "group_unsubscribe"),
        webhook_item(email_id, request.event_id, "fine@example.com", "delivered"),
        webhook_item(email_id, request.event_id, "late@example.com", "deferred"),
        webhook_item(987654, request.event_id, "stranger@example.com", "bounce", type="bounce"),  # not our email
    ]
    assert post_hook(api_client, signer, items)["accepted"] == len(items)
    assert listed(client_for(owner)) == {
        "hard@example.com": "bounce",
        "spam@example.com": "spam_report",
        "unsub@example.com": "unsubscribe",
        "group@example.com": "unsubscribe",
    }
    entry = Suppression.objects.get(address="hard@example.com")
    assert (entry.source, entry.detail, entry.email_id) == ("webhook", "550 5.1.1", email_id)
    assert listed(client_for(other)) == {}
    # SendGrid's retry of the same post, and a later event for a suppressed address, add nothing.
    post_hook(api_client, signer, items)
    post_hook(api_client, signer, [webhook_item(email_id, request.event_id, "hard@example.com", "spamreport")])
    assert Suppression.objects.count() == 4
    assert Suppression.objects.get(address="hard@example.com").reason == "bounce"  # the first reason stands


# The sender's check ---------------------------------------------------------------------------------


@pytest.fixture
def store():
    store = DeliveryStore(connection.settings_dict, pool_size=2, notify_channel="outbox")
    yield store
    store.close()


@pytest.fixture
def provider(fake_sendgrid):
    _, url = fake_sendgrid
    return SendGridProvider(api_key="SG.fake-key", host=url, timeout=2)


def request(owner_id, recipients=("ann@example.com", "Bob@Example.org"), email_id=1) -> EmailRequested:
    return email_requested(recipients, correlation_id="corr-s", email_id=email_id, owner_id=owner_id, template_id=None)


def states(event) -> dict[str, tuple[str, str]]:
    return {d.recipient: (d.state, d.last_error) for d in Delivery.objects.filter(event_id=event.event_id)}


def suppressed_events() -> list[EmailSuppressed]:
    return [event_from_dict(row.payload) for row in OutboxEvent.objects.filter(type="email.suppressed")]


@pytest.mark.django_db(transaction=True)
def test_a_suppressed_recipient_never_reaches_the_provider_and_the_others_go(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    owner, other = UserFactory(), UserFactory()
    suppression_add(owner_id=owner.pk, address="bob@example.org", reason="bounce")
    suppression_add(owner_id=other.pk, address="ann@example.com", reason="manual")  # another account's list
    event = request(owner.pk)
    assert handle_email_requested(event, provider=provider, store=store, policy=POLICY).action == ACK
    (call,) = fake.messages
    assert [p["to"][0]["email"] for p in call["personalizations"]] == ["ann@example.com"]
    assert states(event) == {"ann@example.com": ("sent", ""), "Bob@Example.org": ("suppressed", "bounce")}
    (suppressed,) = suppressed_events()
    assert (suppressed.recipients, suppressed.reasons) == (("Bob@Example.org",), ("bounce",))
    assert (suppressed.email_id, suppressed.request_event_id) == (event.email_id, event.event_id)
    row = OutboxEvent.objects.get(type="email.suppressed")
    assert set(row.payload) == set(golden("email.suppressed", 1))  # the producer side of the contract
    assert row.aggregateid == str(event.email_id) and row.headers["correlation_id"] == "corr-s"
    # Redelivered: nothing is sent or suppressed twice, and nothing waits to be retried.
    assert handle_email_requested(event, provider=provider, store=store, policy=POLICY).action == ACK
    assert len(fake.messages) == 1 and len(suppressed_events()) == 1
    assert not OutboxEvent.objects.filter(id=event.event_id).exists()  # not re-armed


@pytest.mark.django_db(transaction=True)
def test_an_email_with_every_recipient_suppressed_makes_no_call(fake_sendgrid, provider, store):
    fake, _ = fake_sendgrid
    owner = UserFactory()
    for address in ("ann@example.com", "bob@example.org"):
        suppression_add(owner_id=owner.pk, address=address, reason="unsubscribe")
    event = request(owner.pk)
    assert handle_email_requested(event, provider=provider, store=store, policy=POLICY).action == ACK
    assert list(fake.messages) == []
    assert {state for state, _ in states(event).values()} == {"suppressed"}
    (suppressed,) = suppressed_events()
    assert suppressed.reason_of() == {"Bob@Example.org": "unsubscribe", "ann@example.com": "unsubscribe"}


@pytest.mark.django_db(transaction=True)
def test_a_recipient_suppressed_while_it_waits_for_its_retry_is_not_retried(store):
    owner = UserFactory()
    event = request(owner.pk)
    claim = store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    assert set(claim.claimed) == set(event.recipients)
    store.release(event, list(event.recipients), token=claim.token, state="retry", error="503", delay=0)
    suppression_add(owner_id=owner.pk, address="ann@example.com", reason="spam_report")
    again = store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    assert list(again.claimed) == ["Bob@Example.org"] and again.suppressed == {"ann@example.com": "spam_report"}
    assert states(event)["ann@example.com"] == ("suppressed", "spam_report")


@pytest.mark.django_db(transaction=True)
def test_the_rest_of_a_claim_decides_every_recipient_it_is_given(store):
    # The claim's first statement left both out (say both were suppressed then); by its second,
    # ann's suppression was removed: ann is claimed now, bob suppressed, nobody left undecided.
    from core.deliveries.store import CLAIM_SUPPRESSING

    owner = UserFactory()
    suppression_add(owner_id=owner.pk, address="bob@example.org", reason="manual")
    event = request(owner.pk)
    params = {
        "event_id": event.event_id,
        "email_id": event.email_id,
        "owner_id": owner.pk,
        "lease": 30.0,
        "recipients": list(event.recipients),
        "resend": True,
        "grace": 300.0,
        "grace_from": None,
        "token": str(uuid.uuid4()),
    }
    with store._cursor() as cursor:
        CLAIM_SUPPRESSING.execute(cursor, store._suppressing_parameters(event, params))
        rows = {row[0]: row[1:] for row in cursor.fetchall()}
    assert rows.pop(None) == (None, None, None)  # the relay was woken for email.suppressed
    assert rows == {"ann@example.com": (1, "", False), "Bob@Example.org": (0, "manual", True)}
    assert states(event) == {"ann@example.com": ("sending", ""), "Bob@Example.org": ("suppressed", "manual")}


@pytest.mark.django_db(transaction=True)
def test_a_dead_request_leaves_suppressed_recipients_suppressed(store):
    owner = UserFactory()
    suppression_add(owner_id=owner.pk, address="bob@example.org", reason="manual")
    event = request(owner.pk)
    store.claim(event, lease_seconds=0, resend_in_doubt=True, in_doubt_grace=0)
    time.sleep(0.01)  # the lease of the claimed recipient has run out
    assert store.fail_dead_request(event, reason="dead-lettered", provider="sendgrid") == 1
    assert states(event) == {
        "ann@example.com": ("failed", "dead-lettered"),
        "Bob@Example.org": ("suppressed", "manual"),
    }


@pytest.mark.django_db(transaction=True)
def test_the_outbox_purge_counts_suppressed_recipients_as_finished(store):
    from core.outbox.sql import PURGEABLE_SQL
    from core.outbox.sql import outbox_parameters as params

    owner = UserFactory()
    suppression_add(owner_id=owner.pk, address="bob@example.org", reason="manual")
    event = request(owner.pk)
    OutboxEvent.objects.create(
        **{k: v for k, v in params(event, aggregatetype="sent_email", aggregateid="1").items() if k != "headers"},
        headers={},
        published_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    OutboxEvent.objects.filter(id=event.event_id).update(payload=event.to_dict())
    claim = store.claim(event, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
    store.record_sent(event, list(claim.claimed), token=claim.token, message_id="m", attempt=1, provider="sendgrid")
    with connection.cursor() as cursor:
        cursor.execute(PURGEABLE_SQL, {"cutoff": datetime.now(UTC)})
        assert str(event.event_id) in {str(row[0]) for row in cursor.fetchall()}


# The API -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_users_list_add_and_remove_their_own_suppressions(user_client, user):
    added = user_client.post(URL, {"address": " Ann@Example.com ", "detail": "asked by phone"}, format="json")
    assert added.status_code == 201, added.content
    body = added.json()
    assert (body["address"], body["reason"], body["source"], body["owner"]) == (
        "ann@example.com",
        "manual",
        "api",
        user.pk,
    )
    assert body["created_at"] and body["detail"] == "asked by phone"
    again = user_client.post(URL, {"address": "ann@example.com", "reason": "bounce"}, format="json")
    assert again.status_code == 200 and again.json()["reason"] == "manual"  # the first reason stands
    user_client.post(URL, {"address": "bob@example.org", "reason": "unsubscribe"}, format="json")
    assert listed(user_client) == {"ann@example.com": "manual", "bob@example.org": "unsubscribe"}
    assert listed(user_client, address="BOB@example.org") == {"bob@example.org": "unsubscribe"}
    assert listed(user_client, reason="manual") == {"ann@example.com": "manual"}
    assert user_client.get(URL, {"page_size": 1}).json()["count"] == 2
    assert user_client.delete(f"{URL}ANN@example.com/").status_code == 204
    assert user_client.delete(f"{URL}ann@example.com/").status_code == 404
    assert listed(user_client) == {"bob@example.org": "unsubscribe"}


@pytest.mark.django_db
def test_a_user_never_sees_or_changes_another_accounts_list(user_client, user):
    other = UserFactory()
    suppression_add(owner_id=other.pk, address="x@example.com")
    assert listed(user_client) == {}
    assert user_client.delete(f"{URL}x@example.com/").status_code == 404
    for response in (
        user_client.get(URL, {"owner": other.pk}),
        user_client.post(URL, {"address": "y@example.com", "owner": other.pk}, format="json"),
        user_client.delete(f"{URL}x@example.com/?owner={other.pk}"),
    ):
        assert response.status_code == 403 and "owner" in response.json()["errors"]
    assert Suppression.objects.filter(owner=other).count() == 1


@pytest.mark.django_db
def test_staff_act_on_any_account_with_owner(staff_client):
    other = UserFactory()
    added = staff_client.post(URL, {"address": "x@example.com", "owner": other.pk}, format="json")
    assert added.status_code == 201 and added.json()["owner"] == other.pk
    assert listed(staff_client, owner=other.pk) == {"x@example.com": "manual"}
    assert listed(staff_client) == {}  # the staff member's own list
    assert staff_client.delete(f"{URL}x@example.com/?owner={other.pk}").status_code == 204
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "address"),
        ({"address": "not an address"}, "address"),
        ({"address": "a@b.com\r\nBcc: c@d.com"}, "address"),
        ({"address": "a" * 250 + "@b.com"}, "address"),
        ({"address": "a@example.com", "reason": "hated_it"}, "reason"),
        ({"address": "a@example.com", "detail": "two\nlines"}, "detail"),
        ({"address": "a@example.com", "owner": "me"}, "owner"),
        ({"address": "a@example.com", "owner": 0}, "owner"),
    ],
)
@pytest.mark.django_db
def test_bad_input_is_400_naming_the_field_and_writes_nothing(user_client, body, field):
    response = user_client.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"] and response.json()["message"]
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "query, field", [({"reason": "x"}, "reason"), ({"owner": "-1"}, "owner"), ({"address": "a\x00b"}, "address")]
)
@pytest.mark.django_db
def test_bad_filters_are_400_naming_them(user_client, query, field):
    response = user_client.get(URL, query)
    assert response.status_code == 400 and field in response.json()["errors"]


@pytest.mark.django_db
def test_removing_a_bad_address_is_400_and_an_unknown_owner_for_staff_too(user_client, staff_client):
    response = user_client.delete(f"{URL}not-an-address/")
    assert response.status_code == 400 and "address" in response.json()["errors"]
    response = staff_client.post(URL, {"address": "a@example.com", "owner": 10**12}, format="json")
    assert response.status_code == 400 and "owner" in response.json()["errors"]


@pytest.mark.django_db
def test_anonymous_is_refused(api_client):
    assert api_client.get(URL).status_code == 401
    assert api_client.post(URL, {"address": "a@example.com"}, format="json").status_code == 401


@pytest.mark.django_db
def test_an_api_key_of_any_scope_is_refused(user):
    from rest_framework.test import APIClient

    from core.accounts.services import api_key_create

    client = APIClient()
    key = api_key_create(user=user, name="service", scopes=["send", "read", "templates"], rate_limit_per_minute=None)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key.key}")
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"address": "a@example.com"}, format="json").status_code == 403
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_ops_add_one_in_the_admin_lower_cased(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", email="root@example.com", password="x-Pass-9z")
    client.force_login(admin)
    response = client.post(
        "/admin/suppressions/suppression/add/",
        {"owner": admin.pk, "address": " Ops@Example.COM ", "reason": "manual", "detail": "complaint"},
    )
    assert response.status_code == 302, response.content
    entry = Suppression.objects.get()
    assert (entry.address, entry.source, entry.owner_id) == ("ops@example.com", "admin", admin.pk)
    bad = client.post(
        "/admin/suppressions/suppression/add/", {"owner": admin.pk, "address": "nope", "reason": "manual"}
    )
    assert bad.status_code == 200 and Suppression.objects.count() == 1  # the form shows the error
    assert client.get(f"/admin/suppressions/suppression/{entry.pk}/change/").status_code == 200


# End to end: the real relay, sender and projector ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_bounce_suppresses_a_later_send_shown_in_the_log_until_the_address_is_removed(
    topology, relays, projectors, senders, fake_sendgrid, signer, api_client
):
    from query_api.models import SentEmailLog
    from query_api.rebuild import read_model_rebuild, read_model_reconcile

    fake, _ = fake_sendgrid
    relays(topology).wait_ready()
    projectors(topology).wait_ready()
    senders(topology).wait_ready()
    user, template = UserFactory(), EmailTemplateFactory()
    client = client_for(user)

    def log_row(email_id, expected):
        with override_settings(ROOT_URLCONF="query_api.urls"):
            answer = client.get(f"/api/v1/emails/sent-email/{email_id}/")
        return answer.json() if answer.status_code == 200 and answer.json()["status"] == expected else None

    first = send(client, ["bob@example.org"], template)
    broker.wait_for(lambda: log_row(first, "sent"), timeout=20, message="the first email sent")
    bounce = webhook_item(first, request_of(first).event_id, "bob@example.org", "bounce", type="bounce", reason="550")
    post_hook(api_client, signer, [bounce])
    assert listed(client) == {"bob@example.org": "bounce"}

    second = send(client, ["ann@example.com", "Bob@example.org"], template)
    shown = broker.wait_for(lambda: log_row(second, "partially_failed"), timeout=20, message="partially failed")
    recipients = {r["email"]: r for r in shown["recipient_status"]}
    assert recipients["ann@example.com"]["status"] == "sent"
    assert (recipients["bob@example.org"]["status"], recipients["bob@example.org"]["reason"]) == (
        "suppressed",
        "bounce",
    )
    assert ("bob@example.org", "suppressed") in {(h["recipient"], h["status"]) for h in shown["history"]}
    sent_to = [p["to"][0]["email"].lower() for m in fake.messages for p in m["personalizations"]]
    assert sent_to == ["bob@example.org", "ann@example.com"]  # the second email's bob never reached SendGrid
    with override_settings(ROOT_URLCONF="query_api.urls"):
        filtered = client.get("/api/v1/emails/sent-email/", {"status": "partially_failed"}).json()["results"]
    assert [row["id"] for row in filtered] == [second]

    # The read model rebuilt from the write side shows the same, and reconcile agrees with it.
    before = SentEmailLog.objects.get(pk=second).recipient_status
    read_model_rebuild()
    assert SentEmailLog.objects.get(pk=second).recipient_status["bob@example.org"]["status"] == "suppressed"
    assert (
        SentEmailLog.objects.get(pk=second).recipient_status["bob@example.org"]["reason"]
        == before["bob@example.org"]["reason"]
    )
    with override_settings(RECONCILE_GRACE_SECONDS=0):
        report = read_model_reconcile()
    assert (report.missing, report.behind, report.stuck) == ([], [], [])

    assert client.delete(f"{URL}bob@example.org/").status_code == 204
    third = send(client, ["bob@example.org"], template)
    broker.wait_for(lambda: log_row(third, "sent"), timeout=20, message="sent once the address was removed")
    assert len(fake.messages) == 3
