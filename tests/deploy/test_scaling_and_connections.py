"""The rendered overlays scale senders on what KEDA can reach and measure, and keep every process's
Postgres connections within what Postgres accepts at the largest scale the manifests allow."""

import math
import os
import re
from urllib.parse import urlsplit

import pytest

from tests.deploy.test_manifests import ROOT, containers, render, secret_keys, validate_keda

KEDA_OVERLAYS = ["overlays/minikube-keda", "overlays/production"]


def named(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


@pytest.mark.parametrize("overlay", KEDA_OVERLAYS)
def test_the_scaler_reads_the_management_api_with_credentials_from_the_secret(overlay):
    objects = render(overlay)
    scaled, auth = named(objects, "ScaledObject", "sender"), named(objects, "TriggerAuthentication")
    validate_keda(scaled)
    validate_keda(auth)
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    assert all(ref["name"] == "emails-secrets" and ref["key"] in secret_keys() for ref in refs.values())
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["mode"] for t in triggers} == {"MessageRate", "QueueLength"}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["queueName"] == "emails.sender"
        assert meta["protocol"] == "http", "MessageRate needs the management API"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        host = urlsplit(meta["host"])
        assert host.scheme in {"http", "https"} and host.path == "/"
        assert host.username is None and host.password is None, "credentials come from the Secret"
        assert "." in host.hostname, "the KEDA operator, in its own namespace, cannot resolve a short name"


def test_in_minikube_the_scaler_asks_the_rabbitmq_service_by_its_full_name():
    objects = render("overlays/minikube-keda")
    scaled = named(objects, "ScaledObject", "sender")
    namespace = scaled["metadata"]["namespace"]
    service = named(objects, "Service", "rabbitmq")
    management = next(p for p in service["spec"]["ports"] if p["name"] == "management")
    for trigger in scaled["spec"]["triggers"]:
        host = urlsplit(trigger["metadata"]["host"])
        assert host.hostname == f"rabbitmq.{service['metadata']['namespace']}.svc.cluster.local"
        assert service["metadata"]["namespace"] == namespace
        assert host.port == management["port"]


def admits(policy: dict, *, namespace: str, pod_labels: dict, port: int) -> bool:
    """Whether one NetworkPolicy's ingress rules let a pod in another namespace in on `port`."""

    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    for rule in policy["spec"].get("ingress", []):
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for peer in rule.get("from", []):
            if "namespaceSelector" not in peer:
                continue  # a bare podSelector admits only the policy's own namespace
            if matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}) and matches(
                peer.get("podSelector", {}), pod_labels
            ):
                return True
    return False


def test_the_keda_operator_and_nothing_else_outside_reaches_rabbitmq_management():
    objects = render("overlays/minikube-keda")
    service = named(objects, "Service", "rabbitmq")
    port = next(p["targetPort"] for p in service["spec"]["ports"] if p["name"] == "management")
    rabbitmq = named(objects, "StatefulSet", "rabbitmq")
    container = rabbitmq["spec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    labels = rabbitmq["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in objects
        if p["kind"] == "NetworkPolicy"
        and all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
        and all(labels.get(e["key"]) in e["values"] for e in p["spec"]["podSelector"].get("matchExpressions", []))
    ]
    operator = {"app": "keda-operator"}
    assert any(admits(p, namespace="keda", pod_labels=operator, port=port) for p in policies)
    assert not any(
        admits(p, namespace="keda", pod_labels={"app": "keda-operator-metrics-apiserver"}, port=port) for p in policies
    )
    assert not any(admits(p, namespace="keda", pod_labels=operator, port=5672) for p in policies)
    assert not any(admits(p, namespace="default", pod_labels=operator, port=port) for p in policies)


# The connection budget ----------------------------------------------------------------------------

BUDGET_OVERLAYS = ["base", "overlays/minikube", "overlays/minikube-keda", "overlays/production"]
POSTGRES_DEFAULTS = {"max_connections": 100, "superuser_reserved_connections": 3}
NOT_POSTGRES_CLIENTS = {"postgres", "rabbitmq", "fake-sendgrid"}


def env_of(container: dict, config: dict) -> dict:
    """The environment a container runs with: the ConfigMap, then its own `env` on top."""
    return config | {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def gunicorn(env: dict) -> tuple[int, int]:
    """(workers, threads) as docker/gunicorn.conf.py computes them from this environment."""
    path = ROOT / "docker" / "gunicorn.conf.py"
    namespace: dict = {"__file__": str(path)}
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("GUNICORN_") or n == "PORT"]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - the project's own file
    assert namespace.get("worker_class", "sync") in {"sync", "gthread"}
    return namespace["workers"], namespace.get("threads", 1)


def connections_per_pod(name: str, env: dict, pgbouncer: dict) -> int:
    """The most Postgres (or PgBouncer) connections one pod of `name` opens."""
    if name in {"command-api", "query-api"}:
        workers, threads = gunicorn(env)
        return workers * threads  # Django: one persistent connection per thread
    if name == "sender":
        return int(env["SENDER_DB_POOL_SIZE"])  # its own pool, never the ORM (sender/settings.py)
    if name == "outbox-relay":
        return 1 + (env["OUTBOX_NOTIFY"] == "true")  # its work connection, and one that LISTENs
    if name == "projector":
        return 1
    if name == "notifier":
        return 1 + (env["CLIENT_WEBHOOKS_NOTIFY"] == "true")  # its work connection, and one that LISTENs
    if name == "scheduler":
        # django-q2: each worker, the pusher (ORM broker), the monitor (results), the sentinel's
        # scheduler, and the liveness probe's qmonitor.
        return int(env["Q_WORKERS"]) + 4
    if name == "migrate":
        return 1
    if name == "pgbouncer":  # one database and one user: one pool, capped by max_db_connections
        pool = int(pgbouncer["default_pool_size"]) + int(pgbouncer.get("reserve_pool_size", "0"))
        return min(pool, int(pgbouncer["max_db_connections"]))
    raise AssertionError(f"{name}: a new Postgres client; count its connections here")


def max_pods(workload: dict, objects: list[dict]) -> int:
    """The most pods of a workload at once: the autoscaler's ceiling, plus a rollout's overlap
    (a surge pod, or a terminating pod still holding its connections beside its replacement)."""
    name, spec = workload["metadata"]["name"], workload["spec"]
    replicas = spec.get("replicas", 1) if workload["kind"] != "Job" else spec.get("parallelism", 1)
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler" and obj["spec"]["scaleTargetRef"]["name"] == name:
            replicas = obj["spec"]["maxReplicas"]
        if obj["kind"] == "ScaledObject" and obj["spec"]["scaleTargetRef"]["name"] == name:
            replicas = obj["spec"]["maxReplicaCount"]
    if workload["kind"] != "Deployment":
        return replicas
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    surge = rolling.get("maxSurge", "25%")
    if isinstance(surge, str):
        surge = math.ceil(replicas * int(surge.rstrip("%")) / 100)
    return replicas + max(surge, 1)


def postgres_limits(objects: list[dict]) -> dict[str, int]:
    """max_connections and superuser_reserved_connections of the overlay's own Postgres (its
    `-c` arguments), else Postgres's defaults (what a managed Postgres must at least allow)."""
    limits = dict(POSTGRES_DEFAULTS)
    for obj in objects:
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == "postgres":
            args = obj["spec"]["template"]["spec"]["containers"][0].get("args", [])
            for arg in args:
                key, _, value = arg.partition("=")
                if key in limits:
                    limits[key] = int(value)
    return limits


def pgbouncer_settings(objects: list[dict]) -> dict[str, str]:
    ini = named(objects, "ConfigMap", "pgbouncer-config")["data"]["pgbouncer.ini"]
    section = ini.split("[pgbouncer]", 1)[1].split("\n[", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in section.splitlines()) if _}


def connection_budget(overlay: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """({workload: connections to Postgres}, {workload: connections to PgBouncer}, Postgres's limits)."""
    objects = render(overlay)
    config = named(objects, "ConfigMap", "emails-config")["data"]
    pgbouncer = pgbouncer_settings(objects)
    direct, pooled = {}, {}
    for obj, container in containers(objects):
        # A Job is named after its release (migrate-<tag>): count it by its container's name.
        name = container["name"] if obj["kind"] == "Job" else obj["metadata"]["name"]
        if name in NOT_POSTGRES_CLIENTS:
            continue
        env = env_of(container, config)
        count = max_pods(obj, objects) * connections_per_pod(name, env, pgbouncer)
        if name != "pgbouncer" and env["POSTGRES_HOST"] == "pgbouncer":
            pooled[name] = count
        else:
            direct[name] = count
    return direct, pooled, postgres_limits(objects)


@pytest.mark.parametrize("overlay", BUDGET_OVERLAYS)
def test_at_the_largest_scale_every_connection_fits_postgres(overlay):
    direct, pooled, limits = connection_budget(overlay)
    available = limits["max_connections"] - limits["superuser_reserved_connections"]
    assert sum(direct.values()) <= available, f"{direct} is {sum(direct.values())}, over {available}"
    pgbouncer = pgbouncer_settings(render(overlay))
    # Through a Service a client may land on either replica: one replica must take them all.
    assert sum(pooled.values()) <= int(pgbouncer["max_client_conn"]), pooled
    assert {"sender", "projector"} <= set(pooled), "the many short statements go through PgBouncer"


def test_the_budget_is_the_readme_arithmetic():
    direct, pooled, limits = connection_budget("overlays/minikube-keda")
    assert direct == {
        "migrate": 1,
        "command-api": 6,
        "query-api": 6,
        "outbox-relay": 6,
        "notifier": 4,
        "scheduler": 12,
        "pgbouncer": 45,
    }
    assert pooled == {"sender": 88, "projector": 2}
    assert limits == POSTGRES_DEFAULTS
    readme = (ROOT / "README.md").read_text()
    assert f"= {sum(direct.values())} of" in readme and f"{pooled['sender']} client connections" in readme


@pytest.mark.parametrize("overlay", BUDGET_OVERLAYS)
def test_what_cannot_cross_a_transaction_pool_goes_direct(overlay):
    objects = render(overlay)
    config = named(objects, "ConfigMap", "emails-config")["data"]
    pgbouncer = pgbouncer_settings(objects)
    assert pgbouncer["pool_mode"] == "transaction"
    # SQL PREPARE/EXECUTE is not the protocol-level kind PgBouncer can track.
    assert "PREPARE" in (ROOT / "core" / "prepared.py").read_text()
    for obj, container in containers(objects):
        name = obj["metadata"]["name"]
        if name in NOT_POSTGRES_CLIENTS | {"pgbouncer"}:
            continue
        env = env_of(container, config)
        if env["POSTGRES_HOST"] == "pgbouncer":
            assert env["POSTGRES_PREPARED_STATEMENTS"] == "false", name
            assert name not in {"outbox-relay", "notifier"}, f"{name} LISTENs: a transaction pool would drop it"
        else:
            assert env["POSTGRES_HOST"] == config["POSTGRES_HOST"], name
    deployment = named(objects, "Deployment", "pgbouncer")
    for container in (
        deployment["spec"]["template"]["spec"]["initContainers"] + deployment["spec"]["template"]["spec"]["containers"]
    ):
        image = container["image"]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", image), f"{image}: pin PgBouncer to a version"
    service = named(objects, "Service", "pgbouncer")
    assert service["spec"]["ports"][0]["port"] == int(
        env_of(named_container(objects, "sender"), config)["POSTGRES_PORT"]
    )


def named_container(objects, name):
    return next(c for o, c in containers(objects) if o["metadata"]["name"] == name)


def test_the_pgbouncer_password_comes_from_the_secret():
    objects = render("overlays/minikube")
    spec = named(objects, "Deployment", "pgbouncer")["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    assert {"configMapRef": {"name": "emails-config"}} in init["envFrom"]
    assert {"secretRef": {"name": "emails-secrets"}} in init["envFrom"]
    assert "POSTGRES_PASSWORD" in secret_keys() and "$POSTGRES_PASSWORD" in init["command"][-1]
    assert "password" not in named(objects, "ConfigMap", "pgbouncer-config")["data"]["pgbouncer.ini"].lower()


@pytest.mark.parametrize("overlay", ["overlays/minikube", "overlays/minikube-keda", "overlays/production"])
def test_an_autoscaled_deployment_leaves_its_count_to_the_autoscaler(overlay):
    objects = render(overlay)
    scaled = {
        o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
    }
    assert "sender" in scaled
    for name in scaled:
        assert "replicas" not in named(objects, "Deployment", name)["spec"], f"{name}: an apply would reset the scale"
