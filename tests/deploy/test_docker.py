"""Docker cannot run here, so check what can be: the Dockerfile's COPY sources exist, every
target's command resolves to a real module of the project in a copy of only what its image holds,
and the compose file parses, names only existing targets and serves both APIs through the gateway."""

import json
import os
import re
import shutil
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
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line):
            current = found.setdefault(match.group(2), {"base": match.group(1), "copy": [], "cmd": None})
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


def image_sources(target: str) -> list[str]:
    """What the target's image holds of the repository: its COPY sources and its bases'."""
    found = stages()
    sources = []
    while target in found:
        sources = found[target]["copy"] + sources
        target = found[target]["base"]
    return sources


RUNTIME_ENV = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "check-only", "LOG_LEVEL": "WARNING"}
# The image's own settings module decides, as in the cluster; nothing on the path but the image.
INHERITED_ENV = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}


def copy_image(target: str, dest: Path) -> Path:
    """What the target's image holds of the repository, copied into `dest` (its /app)."""
    for source in image_sources(target):
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, dest / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, dest / source)
    return dest


@pytest.mark.parametrize("target", [t for t, s in stages().items() if s["cmd"]])
def test_each_target_command_resolves_in_what_its_image_holds(target, tmp_path):
    copy_image(target, tmp_path)
    command = stages()[target]["cmd"]
    if command[0] == "gunicorn":  # imports the WSGI app with the config, serves nothing
        args = [sys.executable, "-m", "gunicorn", *command[1:], "--check-config"]
    else:
        args = [sys.executable if command[0] == "python" else command[0], *command[1:], "--help"]
    result = subprocess.run(
        args, cwd=tmp_path, env=INHERITED_ENV | RUNTIME_ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


SERVICE_PACKAGES = {
    "command-api": "command_api",
    "query-api": "query_api",
    "outbox-relay": "outbox_relay",
    "sender": "sender",
    "projector": "query_api",
    "notifier": "notifier",
}


@pytest.mark.parametrize(("target", "package"), SERVICE_PACKAGES.items())
def test_a_service_image_holds_core_and_its_own_package_only(target, package):
    packages = {source.rstrip("/") for source in image_sources(target) if (ROOT / source).is_dir()}
    assert packages == {"requirements", "core", package}


def test_compose_parses_and_names_only_existing_targets():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    targets = set(stages())
    built = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == {
        "migrate",
        "command-api",
        "query-api",
        "outbox-relay",
        "sender",
        "projector",
        "notifier",
        "scheduler",
        "fake-sendgrid",
    }
    for name, build in built.items():
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in targets, name
    for name, svc in compose["services"].items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_compose_serves_every_endpoint_through_the_gateway_on_8000():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["image"].startswith("caddy:2") and "build" not in gateway
    # The repository's Caddyfile, read-only, where the image's command reads it.
    mounts = {
        target: ((ROOT / "docker" / source).resolve(), mode)
        for source, target, mode in (volume.split(":") for volume in gateway["volumes"])
    }
    assert mounts["/etc/caddy/Caddyfile"] == (ROOT / "gateway" / "Caddyfile", "ro")
    assert gateway["ports"] == ["8000:8000"]
    host_ports = {name: [port.split(":")[-2] for port in svc.get("ports", [])] for name, svc in services.items()}
    assert [name for name, ports in host_ports.items() if "8000" in ports] == ["gateway"]
    assert set(gateway["depends_on"]) == {"command-api", "query-api"}
    # The gateway passes the client's Host on: the APIs must allow the laptop's names.
    for api in ("command-api", "query-api"):
        assert {"localhost", "127.0.0.1"} <= set(services[api]["environment"]["DJANGO_ALLOWED_HOSTS"].split(","))


def test_compose_takes_secrets_from_the_environment():
    text = (ROOT / "docker" / "compose.yaml").read_text()
    for secret in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"):
        assert f"${{{secret}:?" in text, secret
