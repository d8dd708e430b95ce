"""The gateway's Caddyfile (bin/run, compose, the end-to-end tests) is valid with bin/run's and
compose's addresses, and routes by the same rules as the cluster's HTTPRoute."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CADDY = Path(sys.executable).parent / "caddy"
CADDYFILE = ROOT / "gateway" / "Caddyfile"
BIN_RUN = {"GATEWAY_PORT": "8000", "COMMAND_API_PORT": "8002", "QUERY_API_PORT": "8001"}
# docker/compose.yaml's: the services' names, which are also the cluster's Service names.
COMPOSE = {
    "GATEWAY_HOST": "0.0.0.0",
    "GATEWAY_PORT": "8000",
    "COMMAND_API_HOST": "command-api",
    "COMMAND_API_PORT": "8000",
    "QUERY_API_HOST": "query-api",
    "QUERY_API_PORT": "8000",
}


def caddy(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CADDY), *args, "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("env", [BIN_RUN, COMPOSE], ids=["bin-run", "compose"])
def test_the_caddyfile_is_valid(env):
    result = caddy("validate", env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_compose_gives_the_gateway_the_addresses_checked_here():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert compose["services"]["gateway"]["environment"] == COMPOSE


def test_the_caddyfile_routes_like_the_clusters_httproute():
    config = json.loads(caddy("adapt", env=COMPOSE).stdout)
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == ["0.0.0.0:8000"]
    assert config["admin"] == {"disabled": True, "config": {"persist": False}}
    assert server["automatic_https"] == {"disable": True}

    def upstream(handlers):
        for handler in handlers:
            if handler["handler"] == "reverse_proxy":
                return handler["upstreams"][0]["dial"].removesuffix(":8000")
            if handler["handler"] == "subroute":
                return upstream([h for route in handler["routes"] for h in route["handle"]])

    gateway = []
    for route in server["routes"]:
        match = (route.get("match") or [{}])[0]
        prefixes = {path.removesuffix("/*") for path in match.get("path", ["/"])}
        assert len(prefixes) == 1, prefixes  # "/x" and "/x/*": a path prefix, as the HTTPRoute's
        gateway.append((prefixes.pop(), frozenset(match.get("method", [])), upstream(route["handle"])))

    route = yaml.safe_load((ROOT / "manifests" / "base" / "routing.yaml").read_text())
    cluster = []
    for rule in route["spec"]["rules"]:
        assert len({m["path"]["value"] for m in rule["matches"]}) == 1
        methods = frozenset(m["method"] for m in rule["matches"] if "method" in m)
        cluster.append((rule["matches"][0]["path"]["value"], methods, rule["backendRefs"][0]["name"]))

    assert gateway == cluster
    assert gateway[0] == ("/api/v1/emails/sent-email", {"GET", "HEAD"}, "query-api")


def test_the_docs_pages_swagger_settings_are_javascript_offering_both_schemas():
    # drf-spectacular writes the setting into the page's script as it is: a syntax error there
    # would leave the docs page blank. Node evaluates it with stand-ins for Swagger UI's globals.
    import shutil

    from django.conf import settings

    node = shutil.which("node")
    assert node, "node is needed to check the docs page's script"
    script = (
        "const SwaggerUIBundle = {presets: {apis: 'apis'}}, SwaggerUIStandalonePreset = 'standalone';"
        f"const s = ({settings.SPECTACULAR_SETTINGS['SWAGGER_UI_SETTINGS']});"
        "console.log(JSON.stringify({urls: s.urls.map(u => u.url), layout: s.layout, presets: s.presets}));"
    )
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "urls": ["/api/schema/", "/api/schema/sent-email-log/"],
        "layout": "StandaloneLayout",
        "presets": ["apis", "standalone"],
    }
