"""The rendered overlays scale senders on what KEDA can reach and measure, and keep every process's
Postgres connections within what Postgres accepts at the largest scale the manifests allow."""

from urllib.parse import urlsplit

import pytest

from tests.deploy.test_manifests import render, secret_keys, validate_keda

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
        admits(p, namespace="keda", pod_labels={"app": "keda-metrics-apiserver"}, port=port) for p in policies
    )
    assert not any(admits(p, namespace="keda", pod_labels=operator, port=5672) for p in policies)
    assert not any(admits(p, namespace="default", pod_labels=operator, port=port) for p in policies)
