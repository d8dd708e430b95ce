"""Render every overlay and check it offline: core objects against the Kubernetes schemas
(kubernetes-validate), KEDA's against the cloudcoil models generated from KEDA's CRDs
(cloudcoil-models-keda, versioned with KEDA), and the project's own rules: configuration complete,
images and ports as docker/ builds them, no secret values."""

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.resources import get_model

from tests.deploy.test_docker import stages

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["base", "overlays/minikube", "overlays/minikube-keda", "overlays/production"]
K8S_VERSION = "1.32"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the manifests"
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def containers(objects, *, init: bool = False):
    """(object, container) for every pod template's containers, and its init containers too with
    `init`."""
    for obj in objects:
        spec = obj.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            pod = template["spec"]
            for container in (pod.get("initContainers", []) if init else []) + pod["containers"]:
                yield obj, container


def validate_keda(obj: dict) -> None:
    """Raise pydantic.ValidationError unless `obj` is a valid KEDA object of its kind.

    The models are generated from KEDA's CRDs. Left to their defaults they drop unknown fields and
    coerce types, where `kubectl apply` (strict field validation) refuses the object; so validate
    as strictly: no unknown field (a misspelt one must fail, not vanish), no coercion, and only
    KEDA's camelCase names (the models also take their Python names)."""
    model = get_model(obj["kind"], api_version=obj["apiVersion"])
    model.model_validate(obj, extra="forbid", strict=True, by_alias=True, by_name=False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay):
    objects = render(overlay)
    assert objects
    for obj in objects:
        kind = obj["kind"]
        if obj["apiVersion"].startswith("keda.sh/"):
            validate_keda(obj)
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            pass  # the Prometheus Operator's models check it: tests/deploy/test_alerts.py
        elif kind == "HTTPRoute":  # Gateway API: no schema ships offline; check its shape
            rules = obj["spec"]["rules"]
            get_rule = next(r for r in rules if any(m.get("method") == "GET" for m in r["matches"]))
            assert get_rule["matches"][0]["path"]["value"] == "/api/v1/emails/sent-email"
            assert get_rule["backendRefs"][0]["name"] == "query-api"
            assert rules[-1]["backendRefs"][0]["name"] == "command-api"
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == "emails", f"{kind} {obj['metadata']['name']}"


def scaled_object(spec_changes=(), trigger_changes=()) -> dict:
    trigger = {"type": "rabbitmq", "metadata": {"queueName": "emails.sender"}} | dict(trigger_changes)
    spec = {"scaleTargetRef": {"name": "sender"}, "minReplicaCount": 2, "triggers": [trigger]} | dict(spec_changes)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {k: v for k, v in spec.items() if v is not None},
    }


def test_keda_validation_accepts_a_good_scaled_object():
    validate_keda(scaled_object())


@pytest.mark.parametrize(
    "spec_changes, trigger_changes",
    [
        ({"triggers": [{"metadata": {"queueName": "emails.sender"}}]}, {}),  # a trigger without a type
        ({"scaleTargetRef": None}, {}),  # nothing to scale
        ({"pollingIntervall": 10}, {}),  # a misspelt field
        ({}, {"authRef": {"name": "rabbitmq-connection"}}),  # a misspelt field deeper down
        ({"minReplicaCount": "2"}, {}),  # a string where KEDA wants an integer
        ({}, {"metadata": {"value": 600}}),  # trigger metadata values are strings
        ({"scaleTargetRef": None, "scale_target_ref": {"name": "sender"}}, {}),  # the model's name, not KEDA's
    ],
    ids=[
        "no-trigger-type",
        "no-target",
        "misspelt-field",
        "misspelt-nested-field",
        "string-for-integer",
        "non-string-metadata",
        "python-name",
    ],
)
def test_keda_validation_really_rejects_a_bad_scaled_object(spec_changes, trigger_changes):
    with pytest.raises(pydantic.ValidationError):
        validate_keda(scaled_object(spec_changes, trigger_changes))


def env_names_read_by_the_code() -> set[str]:
    names = set()
    pattern = re.compile(r"""(?:env_(?:str|int|bool|list)|os\.environ\.get)\(\s*["']([A-Z][A-Z0-9_]+)["']""")
    for folder in ("core", "command_api", "query_api", "outbox_relay", "sender", "notifier", "docker"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "fake_sendgrid.py":  # the fake is configured by its own FAKE_SENDGRID_* variables
                continue
            names |= set(pattern.findall(path.read_text()))
    # Read by the ops CLI on a person's terminal or by local tooling (the demo admin of bin/run,
    # refused outside DEBUG), not by a deployed process; and the relay's fault-test hook, which a
    # deployment must never set.
    return names - LOCAL_ONLY


LOCAL_ONLY = {
    "OPS_ACTOR",
    "POSTGRES_MAINTENANCE_DB",
    "OUTBOX_RELAY_HTTP_HOST",
    "SENDER_HTTP_HOST",
    "PROJECTOR_HTTP_HOST",
    "NOTIFIER_HTTP_HOST",
    "OUTBOX_RELAY_TEST_CRASH_AFTER_CONFIRM",
    "DEMO_ADMIN_EMAIL",
    "DEMO_ADMIN_PASSWORD",
}


def secret_keys() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (MANIFESTS / "secret.example.env").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return dict(pairs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_the_code_reads_is_provided(overlay):
    objects = render(overlay)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "emails-config")
    provided = set(config["data"]) | set(secret_keys())
    missing = env_names_read_by_the_code() - provided
    assert not missing, f"not in the ConfigMap or the Secret: {sorted(missing)}"
    for obj, container in containers(objects):
        if container["name"] in {"postgres", "rabbitmq", "fake-sendgrid", "pgbouncer"}:
            continue
        sources = {next(iter(s.values()))["name"] for s in container.get("envFrom", [])}
        assert sources == {"emails-config", "emails-secrets"}, obj["metadata"]["name"]


def test_no_secret_holds_a_value():
    assert all(value == "" for value in secret_keys().values())
    for overlay in OVERLAYS:
        for obj in render(overlay):
            if obj["kind"] == "Secret":
                assert not any(obj.get("data", {}).values()) and not any(obj.get("stringData", {}).values())
    text = "\n".join(p.read_text() for p in MANIFESTS.rglob("*.yaml"))
    assert not re.search(r"SG\.[A-Za-z0-9_-]{20,}", text)  # no real-looking SendGrid key anywhere


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_ports_agree_with_docker(overlay):
    targets = stages()
    objects = render(overlay)
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    expected_ports = {
        "command-api": 8000,
        "query-api": 8000,
        "outbox-relay": int(config["OUTBOX_RELAY_HTTP_PORT"]),
        "sender": int(config["SENDER_HTTP_PORT"]),
        "projector": int(config["PROJECTOR_HTTP_PORT"]),
        "notifier": int(config["NOTIFIER_HTTP_PORT"]),
        "fake-sendgrid": 8025,
    }
    for obj, container in containers(objects):
        image = container["image"]
        if image.startswith(("postgres:", "rabbitmq:", "ghcr.io/cloudnative-pg/pgbouncer:")):
            continue
        target = image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        assert target in targets, image
        assert target == container["name"], f"{obj['metadata']['name']} runs the {target} image"
        exposed = re.search(rf"FROM runtime AS {target}\nEXPOSE (\d+)", (ROOT / "docker" / "Dockerfile").read_text())
        ports = [p["containerPort"] for p in container.get("ports", [])]
        if target in expected_ports:
            assert ports == [expected_ports[target]] and int(exposed.group(1)) == expected_ports[target], target


def test_workloads_have_probes_limits_and_grace():
    objects = render("base")
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    for obj, container in containers(objects):
        assert container["resources"]["limits"] and container["resources"]["requests"], obj["metadata"]["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if obj["kind"] == "Deployment":
            assert "livenessProbe" in container, obj["metadata"]["name"]
            if obj["metadata"]["name"] not in {"scheduler", "pgbouncer"}:
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sender = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "sender")
    grace = int(config["SENDER_SHUTDOWN_GRACE_SECONDS"])
    assert sender["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    relay = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "outbox-relay")
    assert relay["spec"]["replicas"] == 2


def test_only_the_apis_take_outside_traffic():
    policies = {o["metadata"]["name"]: o for o in render("base") if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    open_to_all = [p for p in policies.values() if any("from" not in rule for rule in p["spec"].get("ingress", []))]
    assert [p["metadata"]["name"] for p in open_to_all] == ["apis-take-outside-traffic"]
    selected = open_to_all[0]["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(selected) == ["command-api", "query-api"]


def test_keda_replaces_the_hpa():
    assert any(o["kind"] == "HorizontalPodAutoscaler" for o in render("overlays/minikube"))
    keda = render("overlays/minikube-keda")
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in keda)
    scaled = next(o for o in keda if o["kind"] == "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == "emails.sender"


def test_the_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.M))
    missing = (env_names_read_by_the_code() | {"DEMO_ADMIN_EMAIL", "DEMO_ADMIN_PASSWORD"}) - documented
    assert not missing, f"settings missing from the README's configuration reference: {sorted(missing)}"
