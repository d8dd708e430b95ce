"""A signed Event Webhook post with malformed items: the bad items are counted and logged as
rejected, the good ones of the same post are stored, and the answer is 200 (SendGrid would
otherwise retry the whole post, then drop it)."""

import base64
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from command_api.webhooks.models import ProviderEvent
from core.contracts import EmailDeliveryStatuses
from core.outbox.models import OutboxEvent
from tests.hostile import hostile
from tests.hostile.conftest import webhook_key

HOOK = "/api/v1/webhooks/sendgrid/"


@pytest.fixture
def post(settings):
    from cryptography.hazmat.primitives.asymmetric import ec

    key, public = webhook_key()
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = public
    client = Client(raise_request_exception=False)

    def signed(items) -> tuple[int, dict]:
        body = hostile.encode(items).decode()
        timestamp = str(int(time.time()))
        signature = base64.b64encode(
            key.sign((timestamp + body).encode("utf-8", "surrogatepass"), ec.ECDSA(hashes.SHA256()))
        ).decode()
        response = client.post(
            HOOK,
            body.encode("utf-8", "surrogatepass"),
            content_type="application/json",
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE=signature,
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP=timestamp,
        )
        return response.status_code, response.json()

    return signed


def good(n: int, **changes) -> dict:
    return {
        "email": f"r{n}@example.com",
        "recipient": f"r{n}@example.com",
        "timestamp": int(time.time()),
        "event": "delivered",
        "sg_event_id": f"sg-{uuid.uuid4()}",
        "sg_message_id": f"m{n}.filter0001",
        "event_id": str(uuid.uuid4()),
        "email_id": str(n),
        "response": "250 OK",
    } | changes


BAD = [
    ("event_id", "not-a-uuid"),
    ("event_id", 42),
    ("email_id", "12abc"),
    ("email_id", "9" * 30),
    ("email_id", -3),
    ("email_id", "²"),
    ("email_id", True),
    ("sg_event_id", "s" * 101),
    ("sg_event_id", ""),
    ("sg_event_id", 7),
    ("recipient", "r" * 300 + "@example.com"),
    ("recipient", "ann\x00@example.com"),
    ("recipient", "a\nb@example.com"),
    ("sg_message_id", "m" * 201),
    ("response", "250 \x00 OK"),
    ("response", "\ud800"),
    ("timestamp", 10**20),
    ("timestamp", -1),
    ("timestamp", "soon"),
    ("smtp-id", "<\x00@x>"),
    ("extra", {"deep": [[[[[[[[[[1]]]]]]]]]]}),
]


@pytest.mark.django_db
def test_bad_items_are_rejected_and_the_good_ones_kept(post):
    items = (
        [good(1)]
        + [good(100 + i, **{field: value}) for i, (field, value) in enumerate(BAD)]
        + ["not an object", None, 5, good(2)]
    )
    status, answer = post(items)
    assert status == 200, answer
    assert answer == {"accepted": 2, "duplicates": 0, "ignored": 0, "rejected": len(BAD) + 3}
    assert sorted(ProviderEvent.objects.values_list("email_id", flat=True)) == [1, 2]
    rows = OutboxEvent.objects.order_by("aggregateid")  # one event per email
    assert [[item.email_id for item in EmailDeliveryStatuses.from_dict(row.payload).items()] for row in rows] == [
        [1],
        [2],
    ]


# Forbidden characters in fields and keys no other rule checks, each alone in a post of good items:
# the post's body is searched once, then each item's strings only when the body may hold one.
FORBIDDEN_ALONE = [
    ("smtp-id", "<\x01@x>"),
    ("smtp-id", "<\x7f@x>"),
    ("smtp-id", "<\x85@x>"),
    ("smtp-id", "<\x08@x>"),  # JSON's short escape \b
    ("response", "250\x0cOK"),  # and \f
    ("ex\x01tra", "a key with a control character"),
    ("ex\x08tra", "a key with a backspace"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("field, value", FORBIDDEN_ALONE)
def test_a_forbidden_character_alone_in_a_post_is_rejected(post, field, value):
    status, answer = post([good(1), good(2, **{field: value}), good(3)])
    assert status == 200, answer
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    assert sorted(ProviderEvent.objects.values_list("email_id", flat=True)) == [1, 3]


@pytest.mark.django_db
def test_a_post_of_only_bad_items_writes_nothing_and_is_still_200(post):
    status, answer = post([good(1, event_id="x"), good(2, email_id="y")])
    assert (status, answer["rejected"], answer["accepted"]) == (200, 2, 0)
    assert not OutboxEvent.objects.exists() and not ProviderEvent.objects.exists()


@pytest.mark.django_db
def test_an_item_too_deep_to_parse_costs_only_itself(post):
    status, answer = post([good(1), hostile.deep(100_000), good(2)])
    assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 1)


@pytest.mark.django_db
def test_a_signed_body_that_is_not_a_list_is_400_even_too_deep_to_parse(post):
    status, answer = post(hostile.deep_object(100_000))
    assert status == 400 and answer["errors"] == {"body": ["Expected a JSON list of events."]}


ITEM_FIELDS = [
    "event",
    "email",
    "recipient",
    "timestamp",
    "sg_event_id",
    "sg_message_id",
    "event_id",
    "email_id",
    "reason",
    "response",
    "type",
    "status",
]


@pytest.mark.django_db
def test_a_hostile_value_in_any_field_of_an_item_costs_only_that_item(post):
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(ITEM_FIELDS), value=hostile.hostile_values)
    def check(field, value):
        with transaction.atomic():
            keep = good(1)
            status, answer = post([keep, good(2, **{field: value})])
            assert status == 200, (field, value, answer)
            assert answer["accepted"] + answer["ignored"] + answer["rejected"] == 2, answer
            assert ProviderEvent.objects.filter(provider_event_id=keep["sg_event_id"]).exists()
            transaction.set_rollback(True)

    check()
