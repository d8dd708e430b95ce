"""The README works as written: its tour, run by bash against the one base URL of a running
system (every process real, the gateway in front), gets no error answer, and bin/demo then
runs a few times within the send limit bin/run sets."""

import os
import re
import subprocess
import sys

import pytest
from django.db import connection

from command_api.emails.models import EmailTemplate
from core.accounts.models import User
from tests.system import ROOT, Http, System

pytestmark = pytest.mark.django_db(transaction=True)

README = (ROOT / "README.md").read_text()
TOUR = re.search(r"## A tour of the API\n\n```sh\n(.*?)```", README, re.S).group(1)
# What bin/run gives the processes when the developer sets nothing.
LOCAL_SEND_LIMIT = re.search(r"SEND_RATE_LIMIT=\$\{SEND_RATE_LIMIT:-([^}]+)\}", (ROOT / "bin" / "run").read_text())


@pytest.fixture
def system(topology):
    running = System(
        database=connection.settings_dict["NAME"],
        prefix=topology.prefix,
        log_dir=ROOT / "var" / "test-logs" / f"tour-{topology.prefix}",
        SEND_RATE_LIMIT=LOCAL_SEND_LIMIT.group(1),
    )
    try:
        yield running.start_all(gateway=True)
    finally:
        running.stop_all()


def demo_admin(system: System) -> None:
    """What bin/run's demo_setup makes: the admin of the tour (registered through the API, so its
    password hashes as the servers expect) and the demo template bin/demo sends."""
    status, answer = Http(system.gateway_url).call(
        "POST",
        "/api/v1/users/register/",
        {"email": "admin@example.com", "username": "demo-admin", "password": "demo-admin-Pass-2026"},
    )
    assert status == 201, answer
    User.objects.filter(email="admin@example.com").update(is_staff=True, is_superuser=True)
    EmailTemplate.objects.get_or_create(
        name="demo-welcome",
        defaults={"subject": "Welcome, {{ name }}", "body": "<p>Hello {{ name }}, welcome aboard!</p>"},
    )


def test_the_readme_tour_and_a_few_demo_runs_work_as_written(system, tmp_path):
    demo_admin(system)
    assert TOUR.startswith("B=http://127.0.0.1:8000")
    script = tmp_path / "tour.sh"
    # Every curl of the tour fails the script on an error answer (4xx or 5xx).
    script.write_text(
        'set -e\ncurl() { command curl --fail-with-body --show-error "$@"; }\n'
        + TOUR.replace("B=http://127.0.0.1:8000", f"B={system.gateway_url}", 1)
    )
    tour = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert tour.returncode == 0, f"{tour.stdout[-3000:]}\n{tour.stderr[-3000:]}"
    assert '"status":"ok"' in tour.stdout.replace(" ", "")  # the probes answered, at the end of the tour

    port = system.gateway_url.rsplit(":", 1)[1]
    for _ in range(3):
        demo = subprocess.run(
            [sys.executable, str(ROOT / "bin" / "demo")],
            cwd=ROOT,
            env=os.environ | {"GATEWAY_PORT": port},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert demo.returncode == 0 and "delivered" in demo.stdout, demo.stdout + demo.stderr
