"""Docker cannot run here, so check what can be: the Dockerfile's COPY sources exist, every
target's command resolves to a real module of the project, and the compose file parses and
names only existing targets."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def stages() -> dict[str, dict]:
    found, current = {}, None
    for line in DOCKERFILE.read_text().splitlines():
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line):
            current = found.setdefault(match.group(1), {"copy": [], "cmd": None})
        elif current is not None and line.startswith("COPY"):
            current["copy"].append(line.split()[1])
        elif current is not None and line.startswith("CMD"):
            current["cmd"] = json.loads(line[3:].strip())
    return found


def test_every_copy_source_exists():
    sources = [source for stage in stages().values() for source in stage["copy"]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_the_image_runs_as_a_non_root_user():
    assert re.search(r"^USER\s+10001$", DOCKERFILE.read_text(), re.M)
    assert "pip install -r requirements/runtime.txt" in DOCKERFILE.read_text()


RUNTIME_ENV = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "check-only", "LOG_LEVEL": "WARNING"}


@pytest.mark.parametrize("target", [t for t, s in stages().items() if s["cmd"]])
def test_each_target_command_resolves(target):
    command = stages()[target]["cmd"]
    if command[0] == "gunicorn":  # imports the WSGI app with the config, serves nothing
        args = [sys.executable, "-m", "gunicorn", *command[1:], "--check-config"]
    else:
        args = [sys.executable if command[0] == "python" else command[0], *command[1:], "--help"]
    result = subprocess.run(args, cwd=ROOT, env=os.environ | RUNTIME_ENV, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_compose_parses_and_names_only_existing_targets():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    targets = set(stages())
    built = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == {"migrate", "command-api", "query-api", "outbox-relay", "sender", "projector", "scheduler",
                          "fake-sendgrid"}
    for name, build in built.items():
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in targets, name
    for name, svc in compose["services"].items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_compose_takes_secrets_from_the_environment():
    text = (ROOT / "docker" / "compose.yaml").read_text()
    for secret in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"):
        assert f"${{{secret}:?" in text, secret
