"""The rendered overlays as the cluster runs them: no overlay allows every host, and the migrate Job
is named for its release."""

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.test_manifests import MANIFESTS, OVERLAYS, render


def overlay_config(objects) -> dict:
    return next(obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "emails-config")[
        "data"
    ]


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
