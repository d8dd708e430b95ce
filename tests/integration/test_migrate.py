"""`migrate` alone leaves a working system: on a database that has never seen the project, the
migrations (on the settings that install every app) make every table a request to the command API
needs, the throttles' included."""

import os
import subprocess
import sys

from tests.system import ROOT

LOGIN = """
import django, json
django.setup()
from django.test import Client
client = Client()
body = json.dumps({"username": "nobody@example.com", "password": "wrong"})
print([client.post("/api/v1/users/login/", body, content_type="application/json").status_code for _ in range(7)])
print([client.post("/api/v1/users/register/", json.dumps({"email": f"u{n}@example.com", "username": f"u{n}",
       "password": "quiet-meadow-Lantern-42"}), content_type="application/json").status_code for n in range(3)])
"""


def test_migrate_alone_makes_the_login_and_registration_throttles_work(fresh_database):
    env = os.environ | {
        "POSTGRES_DB": fresh_database,
        "DJANGO_SETTINGS_MODULE": "command_api.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "migrate-test-only",
        "LOG_LEVEL": "ERROR",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "LOGIN_FAILURE_LIMIT": "5",
        "REGISTRATION_RATE_LIMIT": "2/hour",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env | {"DJANGO_SETTINGS_MODULE": "deployment.settings"},
        check=True,
        timeout=300,
    )
    answer = subprocess.run(
        [sys.executable, "-c", LOGIN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    # Wrong passwords are refused, and the fifth locks out (django-axes, counting in its table).
    logins, registrations = answer.stdout.strip().splitlines()[-2:]
    assert logins == "[400, 400, 400, 400, 429, 429, 429]"
    # The registration throttle counts in the database cache: its table is there too.
    assert registrations == "[201, 201, 429]"


def test_the_models_and_the_migrations_agree():
    # A model changed without its migration (or a migration's state without its model) fails here.
    subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run", "-v", "1"],
        cwd=ROOT,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "deployment.settings", "LOG_LEVEL": "ERROR"},
        check=True,
        timeout=120,
    )
