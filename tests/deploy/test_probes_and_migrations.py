"""The probes as the cluster sends them, on the rendered overlays: the kubelet's Host is the pod's IP,
readiness waits for the migrations, the migrate Job is named for its release, and the scheduler's
liveness probe reads the django-q2 cluster's heartbeat."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.deploy.test_manifests import MANIFESTS, OVERLAYS, render
from tests.system import ROOT

POD_HOST = "10.1.2.3:8000"
SETTINGS = {"command-api": "command_api.settings", "query-api": "query_api.settings"}

# Calls the process's real WSGI application (as gunicorn does) with the Host the kubelet sends.
WSGI_CALL = """
import io, json, sys
from wsgiref.util import setup_testing_defaults
from importlib import import_module
application = import_module(sys.argv[1]).application
answers = {}
for path in json.loads(sys.argv[3]):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "HTTP_HOST": sys.argv[2], "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    started = []
    body = b"".join(application(environ, lambda status, headers, exc_info=None: started.append(status)))
    answers[path] = [int(started[0].split()[0]), body.decode()]
print(json.dumps(answers))
"""

# Runs a worker's probe server as core.bootstrap.run_worker does, and reads its /readyz.
WORKER_READYZ = """
import argparse, json, socket, urllib.error, urllib.request
import django
django.setup()
from core import bootstrap

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

class Probe:
    def __init__(self, health):
        health.set("broker", True)  # its connections are up: only the schema decides
    def install_signal_handlers(self):
        pass
    def run(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
                print(json.dumps([answer.status, json.load(answer)]))
        except urllib.error.HTTPError as answer:
            print(json.dumps([answer.code, json.load(answer)]))
        return 0

bootstrap.run_worker(argparse.Namespace(http_host="127.0.0.1", http_port=port), Probe)
"""


def overlay_config(objects) -> dict:
    return next(obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "emails-config")[
        "data"
    ]


def probe_paths(objects, deployment: str) -> set[str]:
    obj = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment)
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return {container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}


def process_env(database: str, **extra: str) -> dict:
    return os.environ | {
        "POSTGRES_DB": database,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "probe-test-only",
        "LOG_LEVEL": "ERROR",
        **extra,
    }


def migrate(database: str, *target: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0", *target],
        cwd=ROOT,
        env=process_env(database, DJANGO_SETTINGS_MODULE="deployment.settings"),
        check=True,
        timeout=300,
    )


def call_api(database: str, service: str, paths, *, allowed_hosts: str) -> dict[str, list]:
    module = SETTINGS[service]
    answer = subprocess.run(
        [sys.executable, "-c", WSGI_CALL, module.replace(".settings", ".wsgi"), POD_HOST, json.dumps(sorted(paths))],
        cwd=ROOT,
        env=process_env(database, DJANGO_SETTINGS_MODULE=module, DJANGO_ALLOWED_HOSTS=allowed_hosts),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return json.loads(answer.stdout.strip().splitlines()[-1])


def worker_readyz(database: str, settings_module: str) -> list:
    answer = subprocess.run(
        [sys.executable, "-c", WORKER_READYZ],
        cwd=ROOT,
        env=process_env(database, DJANGO_SETTINGS_MODULE=settings_module),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return json.loads(answer.stdout.strip().splitlines()[-1])


def test_probes_answer_the_pod_ip_under_the_production_allowed_hosts(fresh_database):
    objects = render("overlays/production")
    allowed_hosts = overlay_config(objects)["DJANGO_ALLOWED_HOSTS"]
    assert POD_HOST.split(":")[0] not in allowed_hosts
    migrate(fresh_database)
    for service in SETTINGS:
        paths = probe_paths(objects, service)
        assert paths == {"/healthz", "/readyz"}
        answers = call_api(fresh_database, service, [*paths, "/api/v1/emails/sent-email/"], allowed_hosts=allowed_hosts)
        assert answers["/healthz"] == [200, '{"status": "ok"}'], service
        assert answers["/readyz"][0] == 200, (service, answers["/readyz"])
        assert json.loads(answers["/readyz"][1]) == {"status": "ok", "database": "ok", "migrations": "ok"}
        # Everything else is still held to ALLOWED_HOSTS.
        assert answers["/api/v1/emails/sent-email/"][0] == 400, service


def test_readiness_waits_for_the_migrations_of_the_process_apps(fresh_database):
    migrate(fresh_database)
    migrate(fresh_database, "query_api", "0003")  # the read side's last migration unapplied
    allowed = "emails.example.com"

    # The query API and the projector install query_api: not ready, and they say why.
    readyz = call_api(fresh_database, "query-api", ["/readyz", "/healthz"], allowed_hosts=allowed)
    assert readyz["/readyz"][0] == 503
    assert json.loads(readyz["/readyz"][1]) == {"status": "unavailable", "database": "ok", "migrations": "pending"}
    assert readyz["/healthz"][0] == 200  # alive all the same: no restart while the Job runs
    assert worker_readyz(fresh_database, "query_api.settings") == [
        503,
        {"ready": False, "broker": True, "migrations": False},
    ]
    # The command API and the relay do not read the read model: their apps are all migrated.
    assert call_api(fresh_database, "command-api", ["/readyz"], allowed_hosts=allowed)["/readyz"][0] == 200
    assert worker_readyz(fresh_database, "outbox_relay.settings")[0] == 200

    migrate(fresh_database)
    assert call_api(fresh_database, "query-api", ["/readyz"], allowed_hosts=allowed)["/readyz"][0] == 200
    assert worker_readyz(fresh_database, "query_api.settings") == [
        200,
        {"ready": True, "broker": True, "migrations": True},
    ]


def test_a_ready_process_does_not_check_again(db, django_assert_num_queries):
    from core import schema

    assert schema.migrations_pending() == []
    with django_assert_num_queries(0):
        assert schema.migrations_pending() == []
        assert schema.migrations_applied()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_allows_every_host(overlay):
    hosts = overlay_config(render(overlay))["DJANGO_ALLOWED_HOSTS"].split(",")
    assert hosts and all(host.strip() for host in hosts)
    assert not any(host.strip() in ("*", ".") or host.strip().startswith("*") for host in hosts), hosts


def migrate_job_name(objects) -> str:
    (job,) = [obj for obj in objects if obj["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["python", "manage.py", "migrate"]
    return job["metadata"]["name"]


@pytest.mark.parametrize(("overlay", "release"), [("production", "1.0.0"), ("minikube", "dev")])
def test_the_migrate_job_is_named_for_its_release(overlay, release, tmp_path):
    assert migrate_job_name(render(f"overlays/{overlay}")) == f"migrate-{release}"
    # A release changes the overlay's image tags; the Job's name follows, so it is a new Job.
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    kustomization = copy / "overlays" / overlay / "kustomization.yaml"
    text = kustomization.read_text()
    bumped = re.sub(r"(\{name: emails/migrate,[^}]*newTag: )\"?[^,}\"]+\"?", r'\g<1>"2.3.4"', text)
    assert bumped != text
    kustomization.write_text(bumped)
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(copy / "overlays" / overlay)], capture_output=True, text=True, check=True
    ).stdout
    assert migrate_job_name([doc for doc in yaml.safe_load_all(rendered) if doc]) == "migrate-2.3.4"


def test_the_scheduler_liveness_probe_is_the_heartbeat_check():
    objects = render("overlays/production")
    obj = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "scheduler")
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["python", "manage.py", "scheduler_alive"]


def scheduler_alive(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "scheduler_alive"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def wait_for(predicate, *, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out: {message}")


def test_the_scheduler_check_follows_a_real_cluster(fresh_database):
    migrate(fresh_database)
    env = process_env(fresh_database, DJANGO_SETTINGS_MODULE="deployment.settings", Q_WORKERS="1")
    window = 5
    check_env = env | {"SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS": str(window)}
    assert scheduler_alive(check_env).returncode == 1  # no cluster yet

    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill below reaches its workers too
    )
    try:
        wait_for(lambda: scheduler_alive(check_env).returncode == 0, timeout=60, message="the cluster's heartbeat")
        # The window is what the check compares with: no heartbeat is 0 seconds old.
        assert scheduler_alive(check_env | {"SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS": "0"}).returncode == 1
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=10)
        killed = time.monotonic()
        failed = wait_for(
            lambda: (answer := scheduler_alive(check_env)).returncode != 0 and answer,
            timeout=window + 30,
            message="the check to fail once the heartbeat is stale",
        )
        assert time.monotonic() - killed <= window + 30
        assert "cluster" in failed.stderr
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)


def test_the_heartbeat_window_defaults_to_30_seconds(monkeypatch):
    monkeypatch.delenv("SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS", raising=False)
    answer = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS)"],
        cwd=ROOT,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "deployment.settings", "DJANGO_SECRET_KEY": "test-only"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "30"
