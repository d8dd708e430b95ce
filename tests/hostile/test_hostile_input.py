"""Hand-written hostile requests: each refusal is a clear 4xx naming what is wrong, and nothing
is half-written."""

import pytest
from django.test import override_settings

from command_api.emails.models import SentEmail, SentEmailRecipient
from core.outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db

SEND = "/api/v1/emails/sent-email/"


def nothing_written():
    return (SentEmail.objects.count(), SentEmailRecipient.objects.count(), OutboxEvent.objects.count()) == (0, 0, 0)


def test_ten_thousand_recipients_are_refused_naming_the_field(user_client, template):
    response = user_client.post(
        SEND, {"recipients": [f"r{i}@example.com" for i in range(10_000)], "template": template.pk}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"]["recipients"] == ["At most 1000 recipients per email, got 10000."]
    assert nothing_written()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=64 * 1024)
def test_an_oversize_body_is_413(user_client, template):
    response = user_client.post(
        SEND,
        {"recipients": ["a@example.com"], "template": template.pk, "context": {"blob": "x" * 100_000}},
        format="json",
    )
    assert response.status_code == 413 and nothing_written()


@pytest.mark.parametrize("name", ["Zoë 🎉 日本語", "Ünïcödé — “quotes”"])
def test_unicode_subjects_are_kept_exactly(user_client, template, name):
    assert (
        user_client.post(
            SEND, {"recipients": ["a@example.com"], "template": template.pk, "context": {"name": name}}, format="json"
        ).status_code
        == 202
    )
    assert SentEmail.objects.get().subject == f"Hello {name}"
    assert OutboxEvent.objects.get().payload["subject"] == f"Hello {name}"


@pytest.mark.parametrize(
    "injection", ["x\r\nBcc: all@example.com", "x\nTo: victim@example.com", "x\u2028y", "x\rSubject: y"]
)
def test_header_injection_through_the_subject_is_refused(user_client, template, injection):
    response = user_client.post(
        SEND, {"recipients": ["a@example.com"], "template": template.pk, "context": {"name": injection}}, format="json"
    )
    assert response.status_code == 400 and "context" in response.json()["errors"]
    assert nothing_written()


@pytest.mark.parametrize(
    "value, escaped",
    [
        ("'; DROP TABLE emails_sentemail; --", "&#x27;; DROP TABLE emails_sentemail; --"),
        ("<script>alert(document.cookie)</script>", "&lt;script&gt;alert(document.cookie)&lt;/script&gt;"),
        ('" onmouseover="evil()', "&quot; onmouseover=&quot;evil()"),
        ("{{ settings.SECRET_KEY }}", "{{ settings.SECRET_KEY }}"),  # a value is data, never rendered again
    ],
)
def test_sql_and_script_like_values_are_stored_verbatim_and_escaped_in_html(user_client, template, value, escaped):
    assert (
        user_client.post(
            SEND,
            {"recipients": ["a@example.com"], "template": template.pk, "context": {"name": "n", "code": value}},
            format="json",
        ).status_code
        == 202
    )
    email = SentEmail.objects.get()
    assert email.context["code"] == value
    assert escaped in email.body and "<script>" not in email.body
    assert SentEmail.objects.count() == 1  # and the table is still there


@pytest.mark.parametrize("body", ["not json", '{"recipients": ', "[]", '"a string"', "null"])
def test_malformed_json_is_400(user_client, template, body):
    response = user_client.post(SEND, body, content_type="application/json")
    assert response.status_code == 400 and response.json()["message"]
    assert nothing_written()


@pytest.mark.parametrize(
    "body, message",
    [
        ("{% include '/etc/passwd' %}", "include tag is not allowed"),
        ("{% extends 'base.html' %}", "extends tag is not allowed"),
        ("{% debug %}", "debug tag is not allowed"),
        ("{% load static %}{% static 'x' %}", "not a registered tag library"),
        ("{% ssi '/etc/passwd' %}", "Invalid block tag"),
    ],
)
def test_a_template_cannot_reach_files_or_the_server(staff_client, body, message):
    response = staff_client.post(
        "/api/v1/emails/email-template/", {"name": "t", "subject": "s", "body": body}, format="json"
    )
    assert response.status_code == 400
    assert message in response.json()["errors"]["body"][0]


# The query API's parameters ------------------------------------------------------------------

LOGS = "/api/v1/emails/sent-email/"


def _cursor(position: str) -> str:
    import base64
    from urllib.parse import urlencode

    return base64.b64encode(urlencode({"p": position}).encode()).decode()


@pytest.mark.parametrize(
    "query, field",
    [
        ({"recipient": "ann\x00@example.com"}, "recipient"),
        ({"template": "²"}, "template"),
        ({"template": "1\x00"}, "template"),
        ({"template": "9" * 30}, "template"),
        ({"status": "sent\x00"}, "status"),
        ({"start_time": "2026-01-01\x00"}, "start_time"),
    ],
)
def test_query_parameters_with_control_characters_or_odd_digits_are_400(settings, user_client, query, field):
    settings.ROOT_URLCONF = "query_api.urls"
    response = user_client.get(LOGS, query)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


@pytest.mark.parametrize("position", ["not a time", "2026-01-01T00:00:00\x00", "\x00"])
def test_a_forged_cursor_is_refused_not_a_500(settings, user_client, position):
    settings.ROOT_URLCONF = "query_api.urls"
    response = user_client.get(LOGS, {"cursor": _cursor(position)})
    assert response.status_code == 404
    assert response.json()["message"] == "Invalid cursor"
