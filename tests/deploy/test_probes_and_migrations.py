"""The rendered overlays as the cluster runs them: no overlay allows every host."""

import pytest

from tests.deploy.test_manifests import OVERLAYS, render


def overlay_config(objects) -> dict:
    return next(obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "emails-config")[
        "data"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_allows_every_host(overlay):
    hosts = overlay_config(render(overlay))["DJANGO_ALLOWED_HOSTS"].split(",")
    assert hosts and all(host.strip() for host in hosts)
    assert not any(host.strip() in ("*", ".") or host.strip().startswith("*") for host in hosts), hosts
