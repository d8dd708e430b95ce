"""Each class of bad input, written out: the shared 400 shape naming the field (a 401 for
credentials, a 404 for a path), and nothing written. The generators in test_hostile_fields.py and
test_schemathesis.py look for more of the same."""

import pytest
from django.test import Client

from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from core.outbox.models import OutboxEvent
from tests.factories import EmailTemplateFactory

pytestmark = pytest.mark.django_db

SEND = "/api/v1/emails/sent-email/"
TEMPLATES = "/api/v1/emails/email-template/"
LOG = "/api/v1/emails/sent-email/"
KEYS = "/api/v1/api-keys/"


def nothing_sent():
    return (SentEmail.objects.count(), SentEmailRecipient.objects.count(), OutboxEvent.objects.count()) == (0, 0, 0)


def refused(response, field: str, status: int = 400) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert any(key == field or key.startswith(f"{field}.") for key in body["errors"]), body
    return body


def send(client, email_template, raw: bytes | None = None, **changes):
    import json

    body = {"recipients": ["ann@example.com"], "template": email_template.pk, "context": {"name": "Ann"}} | changes
    return client.post(SEND, raw if raw is not None else json.dumps(body), content_type="application/json")


# Nesting ---------------------------------------------------------------------------------------


def test_json_nested_deeper_than_the_limit_is_refused_naming_the_field(user_client, template, settings):
    deep = "[" * 40 + "]" * 40
    body = refused(
        send(
            user_client,
            template,
            raw=f'{{"recipients": ["a@example.com"], "template": {template.pk}, '
            f'"context": {{"items": {deep}}}}}'.encode(),
        ),
        "context",
    )
    assert f"deeper than {settings.REQUEST_MAX_JSON_DEPTH}" in str(body["errors"])
    assert nothing_sent()


def test_json_too_deep_for_the_parser_itself_still_names_the_field(user_client, template):
    deep = "[" * 100_000 + "]" * 100_000
    refused(
        send(user_client, template, raw=f'{{"template": 1, "context": {{"items": {deep}}}}}'.encode()), "context.items"
    )
    assert nothing_sent()


# Characters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"context": {"name": "Ann\x00"}}, "context.name"),
        ({"context": {"name": "\x1b[2J"}}, "context.name"),
        ({"context": {"name": "\x85"}}, "context.name"),
        ({"context": {"name\x00": "Ann"}}, "context"),
        ({"context": {"na\nme": "Ann"}}, "context"),
        ({"context": {"rows": [{"cell": "\x07"}]}}, "context.rows.0.cell"),
        # JSON writes these two as the short escapes \b and \f, not \u0008 and \u000c.
        ({"context": {"name": "Ann\x08"}}, "context.name"),
        ({"context": {"name\x0c": "Ann"}}, "context"),
        ({"recipients": ["ann\x00@example.com"]}, "recipients"),
        ({"recipients": ['"\x01"@example.com']}, "recipients"),
        ({"recipients": ["ann@example.com\x7f"]}, "recipients"),
    ],
)
def test_control_characters_and_nul_are_refused_naming_the_field(user_client, template, changes, field):
    refused(send(user_client, template, **changes), field)
    assert nothing_sent()


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"recipients": ["a@example.com"], "template": 1, "context": {"name": "\\ud800"}}', "context.name"),
        (b'{"recipients": ["\\udfff@example.com"], "template": 1}', "recipients.0"),
        (b'{"recipients": ["a@example.com"], "template": 1, "context": {"\\udc80": "x"}}', "context"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(user_client, template, raw, field):
    refused(send(user_client, template, raw=raw), field)
    assert nothing_sent()


def test_line_breaks_and_tabs_stay_allowed_in_free_text(user_client, template):
    assert send(user_client, template, context={"name": "Ann", "code": "line one\nline two\ttabbed"}).status_code == 202


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "welcome\x00"),
        ("name", "wel\ncome"),
        ("name", "\u2028"),
        ("subject", "Hi\x1b"),
        ("subject", "Hi\tthere"),
        ("body", "<p>\x00</p>"),
        ("body", "<p>\x0b</p>"),
    ],
)
def test_template_fields_with_control_characters_are_refused(staff_client, field, value):
    body = {"name": "t", "subject": "Hi", "body": "<p>Hi</p>"} | {field: value}
    refused(staff_client.post(TEMPLATES, body, format="json"), field)
    assert not EmailTemplate.objects.exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("username", "ann\x00"),
        ("username", "ann\x1b"),
        ("username", "ann smith"),
        ("email", '"\x01"@example.com'),
        ("email", "ann@exam\x01ple.com"),
    ],
)
def test_registration_with_control_characters_is_refused(api_client, field, value):
    from core.accounts.models import User

    body = {"email": "ann@example.com", "username": "ann", "password": "quiet-meadow-Lantern-42"} | {field: value}
    refused(api_client.post("/api/v1/users/register/", body, format="json"), field)
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "field, value",
    [("name", "billing\x00"), ("name", "bil\nling"), ("name", "\u2028"), ("name", "\x9f"), ("scopes", ["send\x1b"])],
)
def test_api_key_fields_with_control_characters_are_refused(user_client, field, value):
    from core.accounts.models import ApiKey

    body = {"name": "billing", "scopes": ["send"]} | {field: value}
    refused(user_client.post(KEYS, body, format="json"), field)
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "query, field",
    [
        ({"aggregate_id": "1\x00"}, "aggregate_id"),
        ({"event_type": "email\x1brequested"}, "event_type"),
        ({"event_id": "not-a-uuid"}, "event_id"),
    ],
)
def test_ops_filters_with_control_characters_are_refused(staff_client, query, field):
    refused(staff_client.get("/api/v1/ops/outbox/", query), field)


def test_an_ops_replay_reason_with_nul_writes_nothing(staff_client):
    from core.outbox.models import OutboxReplay

    refused(
        staff_client.post("/api/v1/ops/outbox/replay/", {"aggregate_id": "1", "reason": "x\x00"}, format="json"),
        "reason",
    )
    assert not OutboxReplay.objects.exists()


# Lengths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["a" * 243 + "@example.com", "b@" + "c" * 250 + ".com"])
def test_an_address_longer_than_its_column_is_refused(user_client, template, address):
    assert len(address) > 254
    body = refused(send(user_client, template, recipients=["ok@example.com", address]), "recipients")
    assert "at most 254" in body["errors"]["recipients"][0]
    assert nothing_sent()


@pytest.mark.parametrize("field, length", [("name", 201), ("subject", 999)])
def test_template_fields_longer_than_their_column_are_refused(staff_client, field, length):
    body = {"name": "t", "subject": "Hi", "body": "<p>Hi</p>"} | {field: "x" * length}
    refused(staff_client.post(TEMPLATES, body, format="json"), field)


def test_an_api_key_name_longer_than_its_column_is_refused(user_client):
    from core.accounts.models import ApiKey

    refused(user_client.post(KEYS, {"name": "k" * 101, "scopes": ["send"]}, format="json"), "name")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("rate", [0, -1, 6001, 2**63, 1.5, "60/minute", None, True])
def test_an_api_key_rate_limit_out_of_range_is_refused(user_client, rate):
    from core.accounts.models import ApiKey

    body = {"name": "k", "scopes": ["send"], "rate_limit_per_minute": rate}
    refused(user_client.post(KEYS, body, format="json"), "rate_limit_per_minute")
    assert not ApiKey.objects.exists()


def test_a_username_longer_than_its_column_is_refused(api_client):
    refused(
        api_client.post(
            "/api/v1/users/register/",
            {"email": "a@example.com", "username": "u" * 151, "password": "quiet-meadow-Lantern-42"},
            format="json",
        ),
        "username",
    )


def test_a_rendered_subject_longer_than_its_column_is_refused(user_client, template):
    body = refused(send(user_client, template, context={"name": "n" * 1000}), "context")
    assert "at most 998" in body["errors"]["context"][0]
    assert nothing_sent()


# Numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, 2**64, -1, 0, 1.5, "1e3", True])
def test_a_template_id_out_of_range_is_refused(user_client, template, value):
    refused(send(user_client, template, template=value), "template")
    assert nothing_sent()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"recipients": ["a@example.com"], "template": ' + b"9" * 5000 + b"}",
        b'{"recipients": ["a@example.com"], "template": 1e999}',
    ],
)
def test_numbers_beyond_any_column_are_refused_naming_the_field(user_client, template, raw):
    refused(send(user_client, template, raw=raw), "template")


@pytest.mark.parametrize("path", [f"{TEMPLATES}{'9' * 19}/", f"{TEMPLATES}99999999999999999999999/", f"{TEMPLATES}-1/"])
def test_a_path_id_beyond_bigint_is_not_found(staff_client, path):
    assert staff_client.get(path).status_code == 404
    assert staff_client.put(path, {"name": "x", "subject": "x", "body": "x"}, format="json").status_code == 404


def test_a_log_id_beyond_bigint_is_not_found(settings, user_client):
    settings.ROOT_URLCONF = "query_api.urls"
    assert user_client.get(f"{LOG}{'9' * 30}/").status_code == 404


# Dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("start_time", "2026-02-30T00:00:00"),
        ("start_time", "2026-02-30"),
        ("start_time", "2026-13-01"),
        ("end_time", "9999-12-31"),
        ("end_time", "9999-12-31T23:59:59.999999"),
        ("start_time", "0001-01-01T00:00:00+14:00"),
        ("start_time", "2026-01-01T00:00:00+25:00"),
        ("end_time", "2026-01-01T24:00:00"),
        ("start_time", "10000-01-01"),
    ],
)
def test_log_dates_that_do_not_exist_or_leave_the_calendar_are_refused(settings, user_client, field, value):
    settings.ROOT_URLCONF = "query_api.urls"
    refused(user_client.get(LOG, {field: value}), field)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "2026-02-30T00:00:00Z", "9999-12-31T23:59:59-14:00"])
def test_ops_dates_out_of_range_are_refused(staff_client, value):
    refused(staff_client.get("/api/v1/ops/outbox/", {"since": value}), "since")


# Bodies and headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b'{"recipients": ["\xed\xa0\x80@example.com"]}', b"\xc0\xaf"])
def test_invalid_utf8_bodies_are_400(user_client, template, raw):
    response = send(user_client, template, raw=raw)
    assert response.status_code == 400 and "not valid utf-8" in response.json()["message"]
    assert nothing_sent()


@pytest.mark.parametrize(
    "authorization", ["Token \xff\xfe\xfd", "Token \x00", "Token " + "a" * 10_000, "Token a\x01b", "Token é"]
)
def test_undecodable_or_oversized_credentials_are_401(template, authorization):
    response = Client().get(TEMPLATES, HTTP_AUTHORIZATION=authorization)  # reading needs no token: a bad one is 401
    assert response.status_code == 401 and response.json()["message"] == "Invalid token."


@pytest.mark.parametrize(
    "authorization",
    ["Token ek_", "Bearer ek_\xff", "Token ek_" + "0" * 12 + "_" + "0" * 64 + "\x00", "Bearer ek_" + "a" * 10_000],
)
def test_credentials_shaped_like_an_api_key_but_not_one_are_401(template, authorization):
    response = Client().get(TEMPLATES, HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401 and response.json()["message"] == "Invalid API key."


@pytest.mark.parametrize("authorization", ["Bearer abc", "Basic Zm9vOmJhcg==", "Digest username=x", "\x00"])
def test_unknown_auth_schemes_are_401_where_a_token_is_needed(template, authorization):
    response = Client().post(SEND, {}, content_type="application/json", HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401


@pytest.mark.parametrize("value", ["abc\n", "abc\r\nSet-Cookie: x=1", "a" * 65, "\x00"])
def test_an_unsafe_correlation_id_is_replaced_not_echoed(template, value):
    response = Client().get(TEMPLATES, HTTP_X_CORRELATION_ID=value)
    assert response.status_code == 200
    assert response["X-Correlation-ID"] != value and len(response["X-Correlation-ID"]) == 32


# Rendering is bounded --------------------------------------------------------------------------

LOOPS = (
    "{% for a in items %}{% for b in items %}{% for c in items %}{{ a }}{{ b }}{{ c }}{% endfor %}"
    "{% endfor %}{% endfor %}"
)


@pytest.fixture
def loop_template(db):
    return EmailTemplateFactory(subject="Report", body=LOOPS)


def test_loops_that_multiply_with_the_context_are_refused_naming_the_limit(user_client, loop_template):
    body = refused(send(user_client, loop_template, context={"items": list(range(1000))}), "context")
    # Whichever limit a render meets first names itself: on a loaded machine, the clock may.
    message = body["errors"]["context"][0]
    assert any(limit in message for limit in ("RENDER_MAX_BYTES", "RENDER_MAX_LOOP_ITERATIONS", "RENDER_TIMEOUT_MS"))
    assert nothing_sent()


def test_empty_loops_that_multiply_are_refused_by_their_iterations(user_client, settings):
    template = EmailTemplateFactory(
        subject="x",
        body="{% for a in items %}{% for b in items %}{% for c in items %}{% endfor %}{% endfor %}{% endfor %}",
    )
    body = refused(send(user_client, template, context={"items": list(range(1000))}), "context")
    assert f"RENDER_MAX_LOOP_ITERATIONS ({settings.RENDER_MAX_LOOP_ITERATIONS})" in body["errors"]["context"][0]


def test_the_same_loops_over_a_short_list_render(user_client, loop_template):
    assert send(user_client, loop_template, context={"items": [1, 2, 3]}).status_code == 202
    assert SentEmail.objects.get().body.startswith("111112113")


@pytest.mark.parametrize(
    "body, context",
    [
        ("{{ name|ljust:width }}", {"width": 10**9}),
        ("{{ name|center:'99999999' }}", {}),
        ('{{ name|stringformat:"999999999s" }}', {}),
        ("{{ 1.5|floatformat:places }}", {"places": 10**8}),
        ("{{ items|join:sep }}", {"items": [""] * 50_000, "sep": "x" * 100}),
    ],
)
def test_filters_that_pad_or_repeat_are_bounded(user_client, settings, body, context):
    template = EmailTemplateFactory(subject="x", body=body)
    refused(send(user_client, template, context={"name": "Ann", **context}), "context")
    assert nothing_sent()


def test_a_render_over_its_time_is_refused_naming_the_limit(user_client, loop_template, settings):
    settings.RENDER_TIMEOUT_MS = 0
    body = refused(send(user_client, loop_template, context={"items": [1, 2]}), "context")
    assert "RENDER_TIMEOUT_MS" in body["errors"]["context"][0]


def test_the_lorem_tag_is_not_allowed(staff_client):
    response = staff_client.post(
        TEMPLATES, {"name": "t", "subject": "s", "body": "{% lorem 999999 w %}"}, format="json"
    )
    assert "lorem tag is not allowed" in refused(response, "body")["errors"]["body"][0]


# What the review found: charsets, form bodies, characters a filter makes, nested loops ----------


@pytest.mark.parametrize("content_type", ["application/json; charset=punycode", "application/json; charset=utf-16"])
def test_a_declared_charset_is_not_believed_json_is_utf8(api_client, content_type):
    response = api_client.post(
        "/api/v1/users/login/", b'{"username": "a@example.com", "password": "x"}', content_type=content_type
    )
    assert response.status_code == 400 and response.json()["errors"] == {
        "non_field_errors": ["Unable to log in with the given credentials."]
    }


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/x-www-form-urlencoded; charset=punycode", b"username=a%40example.com&password=x"),
        ("application/x-www-form-urlencoded", b"recipients=a%40example.com&template=1&context.name=x"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="context.name"; filename="f.txt"\r\n\r\nhello\r\n--b--\r\n',
        ),
    ],
)
def test_bodies_other_than_json_are_415(user_client, template, content_type, body):
    response = user_client.post(SEND, body, content_type=content_type)
    assert response.status_code == 415 and response.json()["message"]
    assert nothing_sent()


@pytest.mark.parametrize("number", [0, 27, 55296])
def test_a_control_character_a_filter_makes_is_refused(user_client, number):
    template = EmailTemplateFactory(subject="x", body="<p>{{ n|stringformat:'c' }}</p>")
    body = refused(send(user_client, template, context={"n": number}), "context")
    assert "could not be stored or sent" in body["errors"]["context"][0]
    assert nothing_sent()


@pytest.mark.parametrize("items, sep", [("a" * 10_000, "x" * 10_000), ({f"k{i}": 1 for i in range(5000)}, "y" * 500)])
def test_join_of_a_string_or_a_dict_is_bounded_too(user_client, items, sep):
    template = EmailTemplateFactory(subject="x", body="{{ items|join:sep }}")
    body = refused(send(user_client, template, context={"items": items, "sep": sep}), "context")
    assert "RENDER_MAX_BYTES" in body["errors"]["context"][0]


def test_nested_loops_count_each_byte_of_the_email_once(user_client, settings):
    # 20 x 20 iterations of a 1,500-byte row: 600 KB, under the 1 MiB limit, though the inner
    # loop's output is also the outer loop's.
    template = EmailTemplateFactory(
        subject="x", body="{% for a in items %}{% for b in items %}{{ row }}{% endfor %}{% endfor %}"
    )
    assert send(user_client, template, context={"items": list(range(20)), "row": "r" * 1500}).status_code == 202
    assert len(SentEmail.objects.get().body) == 600_000
    settings.RENDER_MAX_BYTES = 599_999
    refused(send(user_client, template, context={"items": list(range(20)), "row": "r" * 1500, "n": 2}), "context")
