"""Client webhooks against the real Postgres: the real projector's batches queue the status
changes, the notifier (in a thread of the test) delivers them to a local HTTP receiver, and the
endpoint API manages endpoints, shows the delivery log and replays."""

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from core.client_webhooks import services
from core.client_webhooks.events import EVENT_TYPES
from core.client_webhooks.models import WebhookEndpoint, WebhookMessage
from core.worker_http import Health
from notifier.dispatcher import NotifierWorker, Policy
from notifier.http import Poster
from query_api.apply import apply_batch
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.integration.test_read_side import delivered, requested, sent
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1/webhook-endpoints/"


def wait_for(condition, *, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dev_settings(settings):
    settings.CLIENT_WEBHOOKS_ALLOW_PRIVATE = True
    settings.CLIENT_WEBHOOKS_ALLOW_HTTP = True
    return settings


@pytest.fixture
def receiver():
    r = Receiver(hang_seconds=20)
    yield r
    r.close()


@pytest.fixture
def conn():
    from core.db import connect_postgres

    c = connect_postgres(connection.settings_dict, application_name="test-projector", idle_in_transaction_ms=60000)
    yield c
    c.close()


@pytest.fixture
def notifier():
    """Start a notifier in a thread with the given policy; stopped (and its thread joined) after."""
    running = []

    def start(*, schedule=(0.2, 0.2), disable_after=3600.0, timeout=10.0, per_endpoint=2, concurrency=8):
        worker = NotifierWorker(
            database=connection.settings_dict,
            health=Health(),
            policy=Policy(
                schedule=schedule, disable_after=disable_after, allow_private=True, allow_http=True, lease_seconds=60
            ),
            poster=Poster(timeout=timeout, connections_per_host=per_endpoint),
            concurrency=concurrency,
            per_endpoint=per_endpoint,
            poll_interval=0.1,
            notify_channel="client_webhooks_test",
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(30)


def endpoint_for(user, url, event_types=()):
    return services.webhook_endpoint_create(owner=user, url=url, event_types=list(event_types))


def test_a_send_s_status_changes_reach_the_endpoint_signed_in_sequence(dev_settings, receiver, conn, notifier):
    user = UserFactory()
    everything = endpoint_for(user, receiver.url("fast/all"))
    only_delivered = endpoint_for(user, receiver.url("fast/delivered"), ["email.delivered"])
    endpoint_for(UserFactory(), receiver.url("fast/someone-else"))
    notifier()
    apply_batch(conn, [requested(email_id=11, owner_id=user.pk)], webhooks_channel="client_webhooks_test")
    apply_batch(conn, [sent(email_id=11)], webhooks_channel="client_webhooks_test")
    apply_batch(
        conn,
        [delivered(email_id=11), delivered(email_id=11, recipient="bob@example.org")],
        webhooks_channel="client_webhooks_test",
    )
    apply_batch(conn, [sent(email_id=11)], webhooks_channel="client_webhooks_test")  # late: changes nothing
    wait_for(lambda: len(receiver.by_path()["/fast/all/"]) >= 5, what="five deliveries")
    wait_for(lambda: len(receiver.by_path()["/fast/delivered/"]) >= 2, what="two delivered")
    time.sleep(0.3)  # nothing more may come
    paths = receiver.by_path()
    assert "/fast/someone-else/" not in paths  # another user's endpoint hears nothing of this email
    bodies = [Webhook(everything.secret).verify(r.body, r.headers) for r in paths["/fast/all/"]]
    assert len(bodies) == 5
    assert sorted(b["data"]["sequence"] for b in bodies) == [1, 2, 3, 4, 5]
    by_sequence = sorted(bodies, key=lambda b: b["data"]["sequence"])
    assert by_sequence[0]["type"] == "email.queued" and by_sequence[0]["data"]["recipient"] is None
    for recipient in ("ann@example.com", "bob@example.org"):
        mine = [b for b in by_sequence if b["data"]["recipient"] == recipient]
        assert [b["type"] for b in mine] == ["email.sent", "email.delivered"]  # sequence order is status order
    filtered = [Webhook(only_delivered.secret).verify(r.body, r.headers) for r in paths["/fast/delivered/"]]
    assert {b["type"] for b in filtered} == {"email.delivered"}
    assert all(b["data"]["email_id"] == 11 for b in bodies + filtered)
    assert wait_for(
        lambda: WebhookMessage.objects.filter(endpoint=everything, state="delivered").count() == 5, what="recorded"
    )
    message = WebhookMessage.objects.filter(endpoint=everything).first()
    assert [a.status_code for a in message.attempt_log.all()] == [204]
    # The webhook-id is the message's id, the dedupe key a client keeps.
    assert {r.headers["webhook-id"] for r in paths["/fast/all/"]} == {
        str(pk) for pk in WebhookMessage.objects.filter(endpoint=everything).values_list("pk", flat=True)
    }


def test_an_owner_without_endpoints_queues_nothing(conn):
    apply_batch(conn, [requested(email_id=12, owner_id=UserFactory().pk), sent(email_id=12)])
    assert WebhookMessage.objects.count() == 0


def test_a_failing_endpoint_is_retried_on_the_schedule_then_the_message_fails(dev_settings, receiver, conn, notifier):
    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fail/x"), ["email.queued"])
    notifier(schedule=(0.3, 0.3))
    apply_batch(conn, [requested(email_id=21, owner_id=user.pk)])  # no NOTIFY: the poll finds it
    message = wait_for(
        lambda: WebhookMessage.objects.filter(endpoint=endpoint, state="failed").first(), what="the message to fail"
    )
    attempts = list(message.attempt_log.all())
    assert [a.status_code for a in attempts] == [500, 500, 500]  # one more attempt than tiers
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(gap >= 0.25 for gap in gaps), gaps  # never earlier than the schedule says
    assert message.attempts == 3 and message.last_error == "HTTP 500" and attempts[0].response == "no"
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None
    assert len(receiver.at("fail")) == 3


def test_a_hanging_endpoint_does_not_delay_a_fast_one(dev_settings, receiver, conn, notifier):
    slow_user, fast_user = UserFactory(), UserFactory()
    endpoint_for(slow_user, receiver.url("hang/x"), ["email.queued"])
    endpoint_for(fast_user, receiver.url("fast/x"), ["email.queued"])
    notifier(per_endpoint=2, concurrency=4, timeout=15)
    apply_batch(conn, [requested(email_id=100 + n, owner_id=slow_user.pk) for n in range(10)])
    wait_for(lambda: receiver.most_at_once["hang"] == 2, what="the hanging endpoint to hold its slots")
    started = time.monotonic()
    apply_batch(
        conn,
        [requested(email_id=200 + n, owner_id=fast_user.pk) for n in range(10)],
        webhooks_channel="client_webhooks_test",
    )
    wait_for(lambda: len(receiver.at("fast")) == 10, timeout=5, what="the fast endpoint's ten")
    assert time.monotonic() - started < 3  # long before the hanging requests time out (15 s)
    assert receiver.most_at_once["hang"] == 2  # it never held more than its share of threads
    receiver.release.set()
    wait_for(lambda: len(receiver.at("hang")) == 10, timeout=15, what="the hanging endpoint's backlog")


def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_its_owner_sees_why(
    dev_settings, receiver, conn, notifier
):
    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fail/y"), ["email.queued"])
    notifier(schedule=(0.5, 0.5, 0.5, 0.5), disable_after=0.8)
    apply_batch(conn, [requested(email_id=31, owner_id=user.pk)], webhooks_channel="client_webhooks_test")

    def disabled():
        endpoint.refresh_from_db()
        return not endpoint.enabled

    wait_for(disabled, what="the endpoint to be disabled")
    assert "HTTP 500" in endpoint.disabled_reason and "Every delivery failed since" in endpoint.disabled_reason
    shown = client_for(user).get(f"{API}{endpoint.pk}/").json()
    assert shown["enabled"] is False and shown["disabled_reason"] == endpoint.disabled_reason
    tried = len(receiver.at("fail"))
    apply_batch(conn, [requested(email_id=32, owner_id=user.pk)], webhooks_channel="client_webhooks_test")
    time.sleep(1.2)
    assert len(receiver.at("fail")) == tried  # a disabled endpoint gets nothing, new or pending
    assert not WebhookMessage.objects.filter(email_id=32).exists()
    # Its pending message waits out of the claim's way until it is enabled again.
    assert WebhookMessage.objects.get(endpoint=endpoint, email_id=31).next_attempt_at.year == 9999
    # Enabling it again clears the reason; its pending message goes out again.
    answer = client_for(user).patch(
        f"{API}{endpoint.pk}/", {"enabled": True, "url": receiver.url("fast/y")}, format="json"
    )
    assert answer.status_code == 200 and answer.json()["disabled_reason"] == ""
    wait_for(lambda: len(receiver.at("fast")) >= 1, what="the pending message after re-enabling")


def test_replay_delivers_again_with_the_same_webhook_id(dev_settings, receiver, conn, notifier):
    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fast/r"))
    notifier()
    since = timezone.now() - timedelta(seconds=1)
    apply_batch(conn, [requested(email_id=41, owner_id=user.pk)], webhooks_channel="client_webhooks_test")
    wait_for(lambda: WebhookMessage.objects.filter(endpoint=endpoint, state="delivered").count() == 1, what="1")
    message = WebhookMessage.objects.get(endpoint=endpoint)
    client = client_for(user)
    answer = client.post(f"{API}{endpoint.pk}/messages/{message.pk}/replay/")
    assert answer.status_code == 202 and answer.json() == {"replayed": 1}
    wait_for(lambda: len(receiver.at("fast")) == 2, what="the replay")
    assert {r.headers["webhook-id"] for r in receiver.at("fast")} == {str(message.pk)}
    answer = client.post(f"{API}{endpoint.pk}/replay/", {"since": since.isoformat()}, format="json")
    assert answer.json() == {"replayed": 1}
    wait_for(lambda: len(receiver.at("fast")) == 3, what="the bulk replay")
    log = client.get(f"{API}{endpoint.pk}/messages/").json()
    assert log["count"] == 1
    entry = log["results"][0]
    assert entry["event_type"] == "email.queued" and entry["sequence"] == 1 and entry["email_id"] == 41
    wait_for(lambda: len(client.get(f"{API}{endpoint.pk}/messages/").json()["results"][0]["attempt_log"]) == 3)


# The endpoint API -----------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_each_user_sees_only_theirs(dev_settings):
    owner, other = UserFactory(), UserFactory()
    answer = client_for(owner).post(
        API, {"url": "http://127.0.0.1:9/h", "event_types": ["email.sent", "email.sent"]}, format="json"
    )
    assert answer.status_code == 201
    created = answer.json()
    assert created["secret"].startswith("whsec_") and created["event_types"] == ["email.sent"]
    listed = client_for(owner).get(API).json()
    assert [e["id"] for e in listed["results"]] == [created["id"]] and "secret" not in listed["results"][0]
    assert client_for(other).get(API).json()["count"] == 0
    for method in ("get", "patch", "delete"):
        assert getattr(client_for(other), method)(f"{API}{created['id']}/").status_code == 404
    assert client_for(other).get(f"{API}{created['id']}/messages/").status_code == 404
    rotated = client_for(owner).post(f"{API}{created['id']}/rotate-secret/").json()
    assert rotated["secret"] != created["secret"]
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    assert endpoint.previous_secret == created["secret"] and endpoint.previous_secret_expires_at > timezone.now()
    assert client_for(owner).delete(f"{API}{created['id']}/").status_code == 204
    assert not WebhookEndpoint.objects.exists()


def test_anonymous_is_refused(api_client, db):
    assert api_client.get(API).status_code == 401
    assert api_client.post(API, {"url": "https://example.com/h"}, format="json").status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": 5}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://8.8.8.8/h"}, "url"),  # plain http is for development
        ({"url": "https://127.0.0.1/h"}, "url"),
        ({"url": "https://10.0.0.8/h"}, "url"),
        ({"url": "https://169.254.169.254/latest/meta-data/"}, "url"),
        ({"url": "https://[::1]/h"}, "url"),
        ({"url": "https://[::ffff:127.0.0.1]/h"}, "url"),
        ({"url": "https://localhost/h"}, "url"),
        ({"url": "https://u:p@8.8.8.8/h"}, "url"),
        ({"url": "https://8.8.8.8/a\nb"}, "url"),
        ({"url": "https://8.8.8.8/h", "event_types": ["email.opened"]}, "event_types.0"),
        ({"url": "https://8.8.8.8/h", "event_types": "email.sent"}, "event_types"),
        ({"url": "https://8.8.8.8/h", "description": "a\nb"}, "description"),
        ({"url": "https://8.8.8.8/h", "enabled": "maybe"}, "enabled"),
    ],
)
def test_bad_endpoints_are_400_naming_the_field(user_client, body, field):
    answer = user_client.post(API, body, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json()["errors"], answer.json()
    assert not WebhookEndpoint.objects.exists()  # nothing half-written


def test_bad_log_filters_and_replays_are_400(user, user_client):
    endpoint = WebhookEndpoint.objects.create(owner=user, url="https://8.8.8.8/h", secret="whsec_eA==")
    base = f"{API}{endpoint.pk}"
    for query, field in (("state=lost", "state"), ("email_id=0", "email_id"), ("since=yesterday", "since")):
        answer = user_client.get(f"{base}/messages/?{query}")
        assert answer.status_code == 400 and field in answer.json()["errors"], query
    for body, field in (
        ({}, "since"),
        ({"since": "x"}, "since"),
        ({"since": "2026-01-01T00:00Z", "state": "x"}, "state"),
    ):
        answer = user_client.post(f"{base}/replay/", body, format="json")
        assert answer.status_code == 400 and field in answer.json()["errors"], body
    assert user_client.post(f"{base}/messages/{uuid.uuid4()}/replay/").status_code == 404
    assert user_client.post(f"{base}/messages/not-a-uuid/replay/").status_code == 404
    assert user_client.patch(f"{base}/", {"url": "https://10.0.0.1/"}, format="json").status_code == 400
    endpoint.refresh_from_db()
    assert endpoint.url == "https://8.8.8.8/h"


def test_the_endpoint_schema_is_published(user_client):
    schema = json.loads(user_client.get("/api/schema/?format=json").content)
    assert "/api/v1/webhook-endpoints/{endpoint_id}/messages/" in schema["paths"]
    assert "/api/v1/webhook-endpoints/{endpoint_id}/messages/{message_id}/replay/" in schema["paths"]
    event_types = json.dumps(schema["components"]["schemas"])
    assert all(f'"{kind}"' in event_types for kind in EVENT_TYPES)


def test_a_rebuild_never_lowers_a_status_sequence(conn, user, user_client):
    from core.contracts import EmailRequested, event_from_dict
    from core.outbox.models import OutboxEvent
    from query_api.models import SentEmailLog
    from query_api.rebuild import read_model_rebuild
    from tests.factories import EmailTemplateFactory

    answer = user_client.post(
        "/api/v1/emails/sent-email/",
        {"recipients": ["a@example.com"], "template": EmailTemplateFactory().pk},
        format="json",
    )
    email_id = answer.json()["id"]
    request = event_from_dict(OutboxEvent.objects.get(type="email.requested").payload)
    assert isinstance(request, EmailRequested)
    apply_batch(conn, [request])
    assert SentEmailLog.objects.get(pk=email_id).status_seq == 1
    # Clients have seen higher numbers than the write side's records give (e.g. a change the
    # rebuild derives differently): the rebuilt row keeps them.
    SentEmailLog.objects.filter(pk=email_id).update(status_seq=50)
    read_model_rebuild()
    assert SentEmailLog.objects.get(pk=email_id).status_seq == 50
    apply_batch(conn, [sent(email_id=email_id, recipients=("a@example.com",))])
    assert SentEmailLog.objects.get(pk=email_id).status_seq == 51


def test_an_endpoint_deleted_while_its_delivery_hangs_leaves_the_notifier_working(
    dev_settings, receiver, conn, notifier
):
    user, other = UserFactory(), UserFactory()
    hanging = endpoint_for(user, receiver.url("hang/deleted"), ["email.queued"])
    endpoint_for(other, receiver.url("fast/after"), ["email.queued"])
    worker = notifier(timeout=2)
    apply_batch(conn, [requested(email_id=51, owner_id=user.pk)], webhooks_channel="client_webhooks_test")
    wait_for(lambda: receiver.most_at_once["hang"] == 1, what="the delivery to hang")
    assert client_for(user).delete(f"{API}{hanging.pk}/").status_code == 204
    receiver.release.set()  # it answers now; its message is gone
    time.sleep(0.5)
    apply_batch(conn, [requested(email_id=52, owner_id=other.pk)], webhooks_channel="client_webhooks_test")
    wait_for(lambda: len(receiver.at("fast")) == 1, what="the other endpoint's delivery")
    assert worker.health.alive() and not WebhookMessage.objects.filter(email_id=51).exists()


def test_retention_prunes_finished_messages_with_their_attempts(dev_settings, receiver, conn, notifier):
    from core.client_webhooks.models import WebhookAttempt
    from core.client_webhooks.retention import client_webhook_messages_prune

    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fast/old"), ["email.queued"])
    notifier()
    apply_batch(conn, [requested(email_id=61, owner_id=user.pk)], webhooks_channel="client_webhooks_test")
    wait_for(lambda: WebhookAttempt.objects.filter(message__endpoint=endpoint).exists(), what="an attempt")
    wait_for(lambda: WebhookMessage.objects.filter(endpoint=endpoint, state="delivered").exists(), what="delivered")
    WebhookMessage.objects.create(  # pending, however old: kept
        id=uuid.uuid4(),
        endpoint=endpoint,
        email_id=62,
        sequence=1,
        event_type="email.queued",
        payload={},
        next_attempt_at=timezone.now() + timedelta(days=1),
        created_at=timezone.now() - timedelta(days=90),
    )
    WebhookMessage.objects.filter(email_id=61).update(created_at=timezone.now() - timedelta(days=31))
    assert client_webhook_messages_prune() == 1
    assert list(WebhookMessage.objects.values_list("email_id", flat=True)) == [62]
    assert not WebhookAttempt.objects.exists()


def test_a_suppressed_recipient_is_posted_as_email_suppressed(dev_settings, receiver, conn, notifier):
    from core.contracts import EmailSuppressed

    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fast/suppressed"), ["email.suppressed"])
    notifier()
    suppressed = EmailSuppressed(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at="2026-11-27T12:00:01+00:00",
        email_id=71,
        request_event_id="r",
        recipients=("bob@example.org",),
        reasons=("bounce",),
    )
    apply_batch(conn, [requested(email_id=71, owner_id=user.pk), suppressed], webhooks_channel="client_webhooks_test")
    wait_for(lambda: receiver.at("fast"), what="the suppressed webhook")
    (body,) = [Webhook(endpoint.secret).verify(r.body, r.headers) for r in receiver.at("fast")]
    assert body["type"] == "email.suppressed" and body["data"]["recipient"] == "bob@example.org"
    assert body["data"]["sequence"] == 2  # after the email's queued


def test_the_sent_email_log_shows_the_status_sequence(conn, user, settings):
    from tests.conftest import client_for as token_client

    apply_batch(conn, [requested(email_id=81, owner_id=user.pk), sent(email_id=81)])
    settings.ROOT_URLCONF = "query_api.urls"
    answer = token_client(user).get("/api/v1/emails/sent-email/81/")
    assert answer.status_code == 200, answer.content
    assert answer.json()["status_seq"] == 3  # queued, then sent to each of the two recipients


def test_a_scheduled_then_cancelled_email_is_posted_as_email_scheduled_then_email_cancelled(
    dev_settings, receiver, conn, notifier
):
    from core.contracts import EmailCancelled, EmailScheduled

    user = UserFactory()
    endpoint = endpoint_for(user, receiver.url("fast/scheduled"), ["email.scheduled", "email.cancelled"])
    notifier()
    recipients = ("ann@example.com", "bob@example.org")
    scheduled = EmailScheduled(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at="2026-11-27T12:00:00+00:00",
        email_id=72,
        request_event_id="r",
        owner_id=user.pk,
        from_email="f@example.com",
        template_id=None,
        template_name="welcome",
        subject="Hi",
        recipients=recipients,
        requested_at="2026-11-27T12:00:00+00:00",
        send_at="2026-11-28T09:00:00+00:00",
    )
    cancelled = EmailCancelled(
        event_id=str(uuid.uuid4()),
        correlation_id="c",
        occurred_at="2026-11-27T12:05:00+00:00",
        email_id=72,
        request_event_id="r",
        recipients=recipients,
        cancelled_by=user.pk,
    )
    apply_batch(conn, [scheduled], webhooks_channel="client_webhooks_test")
    apply_batch(conn, [cancelled], webhooks_channel="client_webhooks_test")
    wait_for(lambda: len(receiver.at("fast")) >= 3, what="the scheduled and cancelled webhooks")
    bodies = [Webhook(endpoint.secret).verify(r.body, r.headers) for r in receiver.at("fast")]
    by_type: dict[str, list[dict]] = {}
    for body in bodies:
        by_type.setdefault(body["type"], []).append(body["data"])
    assert set(by_type) == {"email.scheduled", "email.cancelled"}
    assert sorted(d["recipient"] for d in by_type["email.cancelled"]) == list(recipients)
    # Every cancelled delivery carries a later sequence than the scheduled ones before it.
    last_scheduled = max(d["sequence"] for d in by_type["email.scheduled"])
    assert last_scheduled < min(d["sequence"] for d in by_type["email.cancelled"])


def _sent_by_the_sender(user_client, conn, *, projected_request: bool):
    """An email posted and sent by a sender (recorded on the write side), its request applied to
    the read model or not, its `email.sent` not yet: (the email id, the sender's event)."""
    from django.db import connection as django_connection

    from core.contracts import EmailRequested, event_from_dict
    from core.deliveries.store import DeliveryStore
    from core.outbox.models import OutboxEvent
    from tests.factories import EmailTemplateFactory

    answer = user_client.post(
        "/api/v1/emails/sent-email/",
        {"recipients": ["a@example.com"], "template": EmailTemplateFactory().pk},
        format="json",
    )
    request = event_from_dict(OutboxEvent.objects.get(type="email.requested").payload)
    assert isinstance(request, EmailRequested)
    if projected_request:
        apply_batch(conn, [request])
    store = DeliveryStore(django_connection.settings_dict, pool_size=1, notify_channel=None)
    try:
        claim = store.claim(request, lease_seconds=30, resend_in_doubt=True, in_doubt_grace=300)
        store.record_sent(request, list(claim.claimed), token=claim.token, message_id="m1", attempt=1, provider="t")
    finally:
        store.close()
    return answer.json()["id"], event_from_dict(OutboxEvent.objects.get(type="email.sent").payload)


def test_a_reconcile_repair_posts_what_it_moved_forward_once(dev_settings, receiver, conn, user, user_client):
    """The projector was behind: reconcile writes the sender's outcome into the row from the write
    side. The event, applied later, moves nothing; the repair is what tells the clients, once."""
    from query_api.models import SentEmailLog
    from query_api.rebuild import read_model_reconcile

    dev_settings.RECONCILE_GRACE_SECONDS = 0
    endpoint_for(user, receiver.url("fast/sent"), ["email.sent"])
    email_id, late = _sent_by_the_sender(user_client, conn, projected_request=True)

    report = read_model_reconcile(repair=True)
    assert email_id in report.behind and report.repaired >= 1
    posted = list(WebhookMessage.objects.filter(email_id=email_id, event_type="email.sent"))
    assert [(m.payload["data"]["recipient"], m.sequence) for m in posted] == [("a@example.com", 2)]
    assert SentEmailLog.objects.get(pk=email_id).status_seq == 2

    # The sender's own event arrives late: nothing moves, nothing is posted twice.
    apply_batch(conn, [late])
    assert WebhookMessage.objects.filter(email_id=email_id, event_type="email.sent").count() == 1


def test_a_reconcile_repair_of_a_row_without_its_request_tells_the_clients(
    dev_settings, receiver, conn, user, user_client
):
    """The request never reached the projector (an earlier release's relay published it to the
    senders alone): the email's `sent` made its row without an owner, so nobody was told. The
    repair, which gives the row its owner, is what tells the client."""
    from query_api.models import SentEmailLog
    from query_api.rebuild import read_model_reconcile

    dev_settings.RECONCILE_GRACE_SECONDS = 0
    endpoint_for(user, receiver.url("fast/sent"), ["email.sent"])
    email_id, event = _sent_by_the_sender(user_client, conn, projected_request=False)
    apply_batch(conn, [event])
    assert SentEmailLog.objects.get(pk=email_id).owner_id is None
    assert not WebhookMessage.objects.filter(email_id=email_id).exists()

    report = read_model_reconcile(repair=True)
    assert email_id in report.missing and report.repaired >= 1
    posted = list(WebhookMessage.objects.filter(email_id=email_id, event_type="email.sent"))
    assert [m.payload["data"]["recipient"] for m in posted] == ["a@example.com"]
    assert SentEmailLog.objects.get(pk=email_id).owner_id == user.pk
