"""Health probes, the OpenAPI schema and docs page, the admin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def test_health_and_readiness(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok"}
    assert api_client.get("/readyz").json() == {"status": "ok", "database": "ok", "migrations": "ok"}


@pytest.mark.parametrize("settings_module", ["command_api.settings", "query_api.settings"])
def test_readiness_names_the_dependency_down_without_its_error(settings_module):
    # A process whose database does not answer (nothing listens on port 1) says which dependency
    # is down; what went wrong goes to its log, not to whoever asks.
    code = (
        "import django, json; django.setup();"
        "from django.test import Client; r = Client().get('/readyz');"
        "print(r.status_code, json.dumps(r.json()))"
    )
    env = os.environ | {
        "POSTGRES_PORT": "1",
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "readiness-test-only",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "LOG_JSON": "true",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    status, body = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert (status, json.loads(body)) == ("503", {"status": "unavailable", "database": "unavailable"}), result.stderr
    assert "readiness_check_failed" in result.stdout + result.stderr and "port 1" in result.stdout + result.stderr


def test_openapi_schema_lists_the_public_api(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in [
        "/api/v1/users/register/",
        "/api/v1/users/login/",
        "/api/v1/users/logout/",
        "/api/v1/emails/email-template/",
        "/api/v1/emails/email-template/{template_id}/",
        "/api/v1/emails/sent-email/",
        "/api/v1/suppressions/",
        "/api/v1/suppressions/{address}/",
        "/api/v1/emails/sent-email/{email_id}/cancel/",
    ]:
        assert path in paths
    assert api_client.get("/api/docs/").status_code == 200


def test_correlation_id_is_generated_when_absent_and_refused_when_unsafe(api_client):
    generated = api_client.get("/healthz")["X-Correlation-ID"]
    assert len(generated) == 32
    unsafe = api_client.get("/healthz", HTTP_X_CORRELATION_ID="bad id\r\nx")["X-Correlation-ID"]
    assert unsafe != "bad id\r\nx" and len(unsafe) == 32


@pytest.mark.parametrize(
    "page",
    [
        "/admin/accounts/user/",
        "/admin/emails/emailtemplate/",
        "/admin/emails/sentemail/",
        "/admin/outbox/outboxevent/",
        "/admin/suppressions/suppression/",
        "/admin/suppressions/suppression/add/",
    ],
)
def test_admin_pages_open_for_staff(client, page, django_user_model):
    admin = django_user_model.objects.create_superuser(
        username="root", email="root@example.com", password="x-Strong-pass-9"
    )
    client.force_login(admin)
    assert client.get(page).status_code == 200


def test_unknown_path_is_404(api_client):
    assert api_client.get("/api/v1/nothing/").status_code == 404


def test_openapi_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    # Fails on any warning, e.g. two serializers mapped to one component name.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "SentEmailInputRequest" in (tmp_path / "schema.yaml").read_text()
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--urlconf",
        "query_api.urls",
        "--file",
        str(tmp_path / "query.yaml"),
    )
    assert "SentEmailLogPage" in (tmp_path / "query.yaml").read_text()


def test_demo_setup_creates_the_admin_and_template_once_and_only_in_debug(settings, capsys):
    from django.core.management import CommandError, call_command

    from command_api.emails.models import EmailTemplate
    from core.accounts.models import User

    settings.DEBUG = False
    with pytest.raises(CommandError, match="only runs with DJANGO_DEBUG=true"):
        call_command("demo_setup")
    settings.DEBUG = True
    settings.DEMO_ADMIN_PASSWORD = "demo-Pass-for-tests-1"
    call_command("demo_setup")
    call_command("demo_setup")
    admin = User.objects.get(email=settings.DEMO_ADMIN_EMAIL)
    assert admin.is_staff and admin.check_password("demo-Pass-for-tests-1")
    assert EmailTemplate.objects.filter(name="demo-welcome").count() == 1
    assert "its password was left as it is" in capsys.readouterr().out
