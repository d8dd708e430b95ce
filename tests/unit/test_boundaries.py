"""Services meet only through core/, Postgres and RabbitMQ, so that each deploys alone.

Every module of a service imports (or names by a dotted path: a URL conf, a settings module, an
app) only core, its own package, third-party packages and the standard library; core names no
service; neither names the composition root (deployment/). Each process's settings install none
of another service's apps, and the composition root installs every app a process does.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("command_api", "query_api", "outbox_relay", "sender", "notifier")
# The repository's own top-level packages; any other import is the standard library's or a
# third-party package's.
PROJECT = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def project_packages(source: str, module: str) -> set[str]:
    """The project's top-level packages that `source` (the module `module`) imports or names by a
    dotted path in a string."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, up `level` - 1 levels
                base = module.split(".")[: -node.level]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and names_a_module(node.value):
            found.add(node.value)
    return {name.split(".")[0] for name in found if name} & PROJECT


def names_a_module(text: str) -> bool:
    """Whether `text` is a dotted path into one of the repository's modules ("command_api.urls",
    "query_api.rebuild.read_model_reconcile"), not an event name or a model label."""
    if not DOTTED.fullmatch(text):
        return False
    parts = text.split(".")
    return any(
        (ROOT.joinpath(*parts[:n]).with_suffix(".py")).is_file()
        or (ROOT.joinpath(*parts[:n]) / "__init__.py").is_file()
        for n in range(2, len(parts) + 1)
    )


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def crossings(package: str, allowed: set[str]) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for other in sorted(project_packages(path.read_text(), module_name(path)) - allowed):
            problems.append(f"{path.relative_to(ROOT)} names {other}")
    return problems


def test_the_check_sees_every_way_of_naming_another_package():
    assert project_packages("from outbox_relay.relay import connect_postgres", "query_api.consumer") == {"outbox_relay"}
    assert project_packages("import command_api.emails.models as m", "sender.handlers") == {"command_api"}
    assert project_packages("from ..emails import services", "command_api.ops.apis") == {"command_api"}
    assert project_packages('ROOT_URLCONF = "command_api.urls"', "outbox_relay.settings") == {"command_api"}
    assert project_packages('setdefault("DJANGO_SETTINGS_MODULE", "deployment.settings")', "core.x") == {"deployment"}
    assert project_packages('import json\nlog.info("email.sent", to="sender.redrive")', "core.x") == set()


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_names_only_core_and_itself(service):
    assert crossings(service, {service, "core"}) == []


def test_core_names_no_service():
    assert crossings("core", {"core"}) == []


SET_UP = """
import django, importlib, json, pkgutil, sys
django.setup()
from django.conf import settings
from django.core.management import call_command
call_command("check")
for package in sys.argv[1:]:
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(module.name)
print(json.dumps(settings.INSTALLED_APPS))
"""


def installed_apps(settings_module: str, *packages: str) -> list[str]:
    """The module's INSTALLED_APPS, from a process of its own that sets Django up on it, runs the
    system checks and imports every module of `packages`: a settings module missing an app that
    its process's code needs fails."""
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "boundary-test-only",
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-c", SET_UP, *packages], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def apps_by_process() -> dict[str, list[str]]:
    return {service: installed_apps(f"{service}.settings", service) for service in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_a_process_installs_no_app_of_another_service(service, apps_by_process):
    others = set(SERVICES) - {service}
    assert [app for app in apps_by_process[service] if app.split(".")[0] in others] == []


def test_the_migrations_and_scheduler_settings_install_every_app(apps_by_process):
    every = set(installed_apps("deployment.settings"))
    for service, apps in apps_by_process.items():
        assert set(apps) <= every, service
    assert {"command_api.emails", "command_api.webhooks", "query_api"} <= every


def test_the_sender_installs_every_app_whose_table_its_claim_touches(apps_by_process):
    # Its readiness waits for the migrations of its installed apps: the claim reads the
    # suppression list, so the sender must not go ready before that table exists.
    assert {"core.deliveries", "core.outbox", "core.suppressions"} <= set(apps_by_process["sender"])
