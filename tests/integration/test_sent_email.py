import select
import threading

import psycopg2
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from command_api.emails import services
from command_api.emails.models import SentEmail, SentEmailRecipient
from core.contracts import EmailRequested
from core.env import parse_rate
from core.outbox.models import OutboxEvent
from tests.conftest import client_for, golden
from tests.factories import EmailTemplateFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/emails/sent-email/"


def send(client, template, recipients=("ann@example.com", "bob@example.org"), context=None, **extra):
    body = {"recipients": list(recipients), "template": template.pk}
    if context is not None:
        body["context"] = context
    return client.post(URL, body, format="json", **extra)


def written_counts():
    return SentEmail.objects.count(), SentEmailRecipient.objects.count(), OutboxEvent.objects.count()


def test_accepted_email_is_written_with_its_recipients_and_outbox_event(user_client, user, template):
    response = send(user_client, template, context={"name": "Ann", "code": 1234}, HTTP_X_CORRELATION_ID="corr-123")
    assert response.status_code == 202
    body = response.json()
    assert body["message"] == "Email sent. It might take a while to deliver."
    email = SentEmail.objects.get(pk=body["id"])
    assert (email.sender, email.subject) == (user, "Hello Ann")
    assert email.body == "<p>Dear Ann, your code is 1234.</p>"
    assert email.context == {"name": "Ann", "code": 1234}
    assert [r.address for r in email.recipients.all()] == ["ann@example.com", "bob@example.org"]

    row = OutboxEvent.objects.get()
    assert (row.type, row.aggregatetype, row.aggregateid) == ("email.requested", "sent_email", str(email.pk))
    assert row.published_at is None and row.attempts == 0
    assert row.headers == {"schema_version": 1, "correlation_id": "corr-123", "aggregateid": str(email.pk)}
    event = EmailRequested.from_dict(row.payload)
    assert event.event_id == str(row.id)
    assert event.email_id == email.pk and event.owner_id == user.pk
    assert event.recipients == ("ann@example.com", "bob@example.org")
    assert (event.subject, event.body_html) == (email.subject, email.body)
    assert event.from_email == settings.DEFAULT_FROM_EMAIL
    assert event.correlation_id == "corr-123" and response["X-Correlation-ID"] == "corr-123"


def test_producer_payload_matches_the_golden_sample(user_client, template):
    send(user_client, template, context={"name": "Ann", "code": 1})
    payload = OutboxEvent.objects.get().payload
    sample = golden("email.requested", 1)
    assert set(payload) == set(sample)
    for key, value in sample.items():
        if value is not None:
            assert type(payload[key]) is type(value), key
    assert (payload["type"], payload["schema_version"]) == (sample["type"], sample["schema_version"])


def test_recipients_are_deduplicated_case_insensitively(user_client, template):
    response = send(user_client, template, ["Ann@Example.com", "ann@example.com", " bob@example.org "])
    assert response.status_code == 202
    assert list(SentEmailRecipient.objects.values_list("address", flat=True)) == ["Ann@Example.com", "bob@example.org"]
    assert OutboxEvent.objects.get().payload["recipients"] == ["Ann@Example.com", "bob@example.org"]


def test_html_body_variables_are_escaped_subject_is_not(user_client, template):
    send(user_client, template, context={"name": "<script>x</script> & Co", "code": "'; DROP TABLE x;--"})
    email = SentEmail.objects.get()
    assert email.subject == "Hello <script>x</script> & Co"
    assert "<script>" not in email.body and "&lt;script&gt;" in email.body
    assert "&#x27;; DROP TABLE x;--" in email.body


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        ({"recipients": [], "template": None}, "recipients", "At least one recipient"),
        ({"recipients": ["ann@example.com", "not-an-address"]}, "recipients", "'not-an-address'"),
        ({"recipients": ["a@b.com\r\nBcc: x@y.com"]}, "recipients", "is not a valid email"),
        ({"recipients": "ann@example.com"}, "recipients", "Expected a list"),
        ({"template": 999999}, "template", "No template with id 999999"),
        ({"template": "abc"}, "template", "valid integer"),
        ({"context": ["not", "an", "object"]}, "context", "Expected a dictionary"),
        ({"context": {"name": "x\r\nBcc: victim@example.com"}}, "context", "line break"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(user_client, template, body, field, fragment):
    request = {"recipients": ["ann@example.com"], "template": template.pk} | body
    if request["template"] is None:
        request["template"] = template.pk
    response = user_client.post(URL, request, format="json")
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert written_counts() == (0, 0, 0)


@pytest.mark.parametrize("missing", ["recipients", "template"])
def test_missing_field_is_named(user_client, template, missing):
    body = {"recipients": ["ann@example.com"], "template": template.pk}
    del body[missing]
    response = user_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {missing: ["This field is required."]}


@override_settings(SEND_MAX_RECIPIENTS=3)
def test_recipient_limit_comes_from_settings(user_client, template):
    response = send(user_client, template, [f"r{i}@example.com" for i in range(4)])
    assert response.status_code == 400
    assert response.json()["errors"]["recipients"] == ["At most 3 recipients per email, got 4."]
    assert send(user_client, template, [f"r{i}@example.com" for i in range(3)]).status_code == 202


def test_anonymous_may_not_send(api_client, template):
    assert send(api_client, template).status_code == 401
    assert written_counts() == (0, 0, 0)


def test_failing_outbox_insert_leaves_nothing_written(user_client, template):
    # A real failure inside Postgres, not a mock: the outbox insert raises.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION outbox_refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'outbox insert refused by test'; END $$;
            CREATE TRIGGER outbox_refuse BEFORE INSERT ON outbox
            FOR EACH ROW EXECUTE FUNCTION outbox_refuse();
            """
        )
    client = user_client
    client.raise_request_exception = False
    response = send(client, template, context={"name": "Ann"})
    assert response.status_code == 500
    assert written_counts() == (0, 0, 0)


def test_idempotency_key_returns_the_first_answer_and_writes_nothing_new(user_client, template):
    first = send(user_client, template, HTTP_IDEMPOTENCY_KEY="order-17")
    again = send(user_client, template, HTTP_IDEMPOTENCY_KEY="order-17")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again["Idempotent-Replayed"] == "true"
    assert written_counts() == (1, 2, 1)


def test_idempotency_key_reused_for_another_request_is_refused(user_client, template):
    send(user_client, template, HTTP_IDEMPOTENCY_KEY="order-17")
    response = send(user_client, template, ["carl@example.com"], HTTP_IDEMPOTENCY_KEY="order-17")
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["errors"]
    assert written_counts() == (1, 2, 1)


def test_idempotency_keys_belong_to_their_user(user_client, template):
    other = client_for(UserFactory())
    a = send(user_client, template, HTTP_IDEMPOTENCY_KEY="same")
    b = send(other, template, HTTP_IDEMPOTENCY_KEY="same")
    assert a.json()["id"] != b.json()["id"]
    assert written_counts() == (2, 4, 2)


def test_oversized_idempotency_key_is_refused(user_client, template):
    response = send(user_client, template, HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]


@override_settings(SEND_RATE_LIMIT=parse_rate("2/day"))
def test_per_user_rate_limit(user_client, template):
    assert send(user_client, template).status_code == 202
    assert send(user_client, template).status_code == 202
    limited = send(user_client, template)
    assert limited.status_code == 429
    assert 0 < int(limited["Retry-After"]) <= 86400
    assert "2/day" in limited.json()["message"]
    assert written_counts() == (2, 4, 2)
    # Another user has a budget of its own.
    assert send(client_for(UserFactory()), template).status_code == 202


def test_template_change_after_sending_changes_nothing_sent(user_client, template):
    email_id = send(user_client, template, context={"name": "Ann"}).json()["id"]
    template.subject = "Changed"
    template.save()
    template.delete()
    email = SentEmail.objects.get(pk=email_id)
    assert email.subject == "Hello Ann" and email.template is None
    assert email.template_name.startswith("template-")


def test_a_template_changed_since_this_process_read_it_is_read_again(user_client, template):
    # The first send leaves the template in this process's cache; the write checks the row's
    # modified time, so the second send renders the changed template, not the cached copy.
    send(user_client, template, context={"name": "Ann"})
    services.email_template_update(template=template, data={"subject": "Bye {{ name }}"})
    email_id = send(user_client, template, context={"name": "Ann"}).json()["id"]
    email = SentEmail.objects.get(pk=email_id)
    assert email.subject == "Bye Ann"
    event = EmailRequested.from_dict(OutboxEvent.objects.get(aggregateid=str(email_id)).payload)
    assert (event.subject, event.email_id) == ("Bye Ann", email_id)


def test_a_template_deleted_since_this_process_read_it_is_refused_and_writes_nothing(user_client, template):
    send(user_client, template, context={"name": "Ann"})
    before = written_counts()
    template_id = template.pk
    template.delete()
    response = send(user_client, EmailTemplateFactory.build(pk=template_id), context={"name": "Ann"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"template": [f"No template with id {template_id}."]}
    assert written_counts() == before


def test_recipients_keep_the_order_given(user_client, template):
    addresses = ["carl@example.com", "ann@example.com", "bob@example.org"]
    email_id = send(user_client, template, addresses, context={"name": "Ann"}).json()["id"]
    stored = list(SentEmailRecipient.objects.filter(email_id=email_id).order_by("id").values_list("address", flat=True))
    assert stored == addresses


# Behaviour that only shows across real commits -------------------------------------------------


def _listen(channel):
    conn = psycopg2.connect(
        host=settings.DATABASES["default"]["HOST"],
        port=settings.DATABASES["default"]["PORT"],
        user=settings.DATABASES["default"]["USER"],
        dbname=connection.settings_dict["NAME"],
    )
    conn.autocommit = True
    conn.cursor().execute(f'LISTEN "{channel}"')
    return conn


def _drain(conn, timeout):
    notes = []
    if select.select([conn], [], [], timeout)[0]:
        conn.poll()
    while conn.notifies:
        notes.append(conn.notifies.pop(0))
    return notes


@pytest.mark.django_db(transaction=True)
def test_commit_notifies_the_relay_once_per_transaction():
    listener = _listen(settings.OUTBOX_NOTIFY_CHANNEL)
    try:
        client = client_for(UserFactory())
        template = EmailTemplateFactory()
        response = send(client, template, [f"r{i}@example.com" for i in range(5)])
        assert response.status_code == 202
        notes = _drain(listener, timeout=5)
        assert [n.channel for n in notes] == [settings.OUTBOX_NOTIFY_CHANNEL]
        # A refused request commits nothing and wakes nobody.
        assert send(client, template, ["bad"]).status_code == 400
        assert _drain(listener, timeout=0.3) == []
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
@override_settings(OUTBOX_NOTIFY=False)
def test_notify_can_be_switched_off():
    listener = _listen(settings.OUTBOX_NOTIFY_CHANNEL)
    try:
        assert send(client_for(UserFactory()), EmailTemplateFactory()).status_code == 202
        assert _drain(listener, timeout=0.5) == []
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_idempotency_key_write_one_email():
    user = UserFactory()
    template = EmailTemplateFactory()
    barrier = threading.Barrier(4)
    answers = []

    def post():
        from django.db import connections

        client = client_for(user)
        barrier.wait()
        try:
            answers.append(send(client, template, HTTP_IDEMPOTENCY_KEY="race"))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    assert written_counts() == (1, 2, 1)


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10_000)
def test_oversized_body_is_413_and_writes_nothing(user_client, template):
    response = send(user_client, template, [f"r{i}@example.com" for i in range(1000)])
    assert response.status_code == 413
    assert response.json()["message"] == "The request body is too large."
    assert written_counts() == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("api", ["command", "query"])
def test_an_unreachable_database_is_a_503_to_retry_not_a_500(template, api):
    from tests.broker import free_port

    client = client_for(UserFactory())
    connection.close()
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = free_port()  # nothing listens there: as during a restart
    try:
        if api == "command":
            response = send(client, template)
        else:
            with override_settings(ROOT_URLCONF="query_api.urls"):
                response = client.get("/api/v1/emails/sent-email/")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "try again" in response.json()["message"] and response.json()["errors"] == {}
    assert written_counts() == (0, 0, 0)
