import pytest

from command_api.emails.models import EmailTemplate
from tests.factories import EmailTemplateFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/emails/email-template/"
NEW = {"name": "welcome", "subject": "Hi {{ name }}", "body": "<p>Welcome, {{ name }}!</p>"}


def detail(pk):
    return f"{URL}{pk}/"


def test_anyone_lists_and_reads_paginated(api_client):
    templates = EmailTemplateFactory.create_batch(3)
    response = api_client.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [t["id"] for t in body["results"]] == [t.pk for t in templates]
    assert set(body["results"][0]) == {"id", "name", "subject", "body", "created", "modified"}
    assert api_client.get(detail(templates[0].pk)).json()["name"] == templates[0].name


def test_unknown_template_is_404(api_client):
    response = api_client.get(detail(999999))
    assert response.status_code == 404
    assert response.json()["message"]


def test_anonymous_may_not_write(api_client, template):
    assert api_client.post(URL, NEW, format="json").status_code == 401
    assert api_client.patch(detail(template.pk), {"name": "x"}, format="json").status_code == 401
    assert api_client.delete(detail(template.pk)).status_code == 401


def test_user_may_not_write(user_client, template):
    assert user_client.post(URL, NEW, format="json").status_code == 403
    assert user_client.put(detail(template.pk), NEW, format="json").status_code == 403
    assert user_client.patch(detail(template.pk), {"name": "x"}, format="json").status_code == 403
    assert user_client.delete(detail(template.pk)).status_code == 403
    assert EmailTemplate.objects.get(pk=template.pk).name == template.name


def test_staff_creates_updates_and_deletes(staff_client):
    created = staff_client.post(URL, NEW, format="json")
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    put = staff_client.put(detail(pk), NEW | {"subject": "Hello {{ name }}"}, format="json")
    assert put.status_code == 200 and put.json()["subject"] == "Hello {{ name }}"
    patched = staff_client.patch(detail(pk), {"body": "<b>{{ name }}</b>"}, format="json")
    assert patched.status_code == 200
    assert patched.json()["body"] == "<b>{{ name }}</b>" and patched.json()["name"] == "welcome"
    assert staff_client.delete(detail(pk)).status_code == 204
    assert not EmailTemplate.objects.filter(pk=pk).exists()


def test_name_is_unique(staff_client, template):
    response = staff_client.post(URL, NEW | {"name": template.name}, format="json")
    assert response.status_code == 400
    assert template.name in response.json()["errors"]["name"][0]
    other = EmailTemplateFactory()
    clash = staff_client.patch(detail(other.pk), {"name": template.name}, format="json")
    assert clash.status_code == 400 and "name" in clash.json()["errors"]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("body", "{% if x %}never closed", "Unclosed tag"),
        ("subject", "Hi {{ name|no_such_filter }}", "Invalid filter"),
        ("body", "{% load static %}", "not a registered tag library"),
        ("subject", "Hi\nBcc: victim@example.com", "line break"),
    ],
)
def test_template_that_does_not_compile_is_400_with_the_error(staff_client, field, value, expected):
    response = staff_client.post(URL, NEW | {field: value}, format="json")
    assert response.status_code == 400
    assert expected in response.json()["errors"][field][0]
    assert not EmailTemplate.objects.exists()


def test_missing_fields_are_named(staff_client):
    response = staff_client.post(URL, {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "subject", "body"}
