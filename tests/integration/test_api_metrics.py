"""The APIs' Prometheus metrics: requests counted by route pattern, method and status, their
latency, webhook signature failures; and the sum over gunicorn's workers served on its own port."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from core.http_metrics import RequestMetricsMiddleware
from tests.deploy.test_manifests import ROOT

DETAIL_ROUTE = "api/v1/emails/sent-email/<id:email_id>/"


def count(route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


def observed(route: str, method: str) -> float:
    labels = {"route": route, "method": method}
    return REGISTRY.get_sample_value("http_request_duration_seconds_count", labels) or 0.0


def test_a_query_api_request_is_counted_under_its_route_pattern_not_its_path(user_client):
    before, timed = count(DETAIL_ROUTE, "GET", 404), observed(DETAIL_ROUTE, "GET")
    with override_settings(ROOT_URLCONF="query_api.urls"):
        assert user_client.get("/api/v1/emails/sent-email/987654/").status_code == 404
        assert user_client.get("/api/v1/emails/sent-email/987655/").status_code == 404
    assert count(DETAIL_ROUTE, "GET", 404) == before + 2
    assert observed(DETAIL_ROUTE, "GET") == timed + 2
    samples = [s for m in REGISTRY.collect() if m.name == "http_requests" for s in m.samples]
    assert not any("987654" in s.labels["route"] for s in samples)


def test_a_path_no_pattern_matches_is_counted_as_unmatched(api_client, db):
    before = count("unmatched", "GET", 404)
    assert api_client.get("/no/such/path/123").status_code == 404
    assert count("unmatched", "GET", 404) == before + 1


def test_a_server_error_is_counted_with_its_status():
    middleware = RequestMetricsMiddleware(lambda request: HttpResponse(status=503))
    request = RequestFactory().generic("BREW", "/anything")
    before = count("unmatched", "other", 503)
    middleware(request)
    assert count("unmatched", "other", 503) == before + 1  # a made-up method cannot add series


@override_settings(SENDGRID_WEBHOOK_PUBLIC_KEY="not-used-before-the-signature-check")
def test_a_webhook_post_without_a_signature_is_counted_as_a_signature_failure(api_client, db):
    route = "api/v1/webhooks/sendgrid/"
    failures = REGISTRY.get_sample_value("webhook_signature_failures_total", {"reason": "missing"}) or 0.0
    refused = count(route, "POST", 403)
    assert api_client.post(f"/{route}", "[]", content_type="application/json").status_code == 403
    assert REGISTRY.get_sample_value("webhook_signature_failures_total", {"reason": "missing"}) == failures + 1
    assert count(route, "POST", 403) == refused + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_gunicorn_serves_the_sum_of_its_workers_on_the_metrics_port_only(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "PORT": str(port),
        "API_METRICS_PORT": str(metrics_port),
        "GUNICORN_WORKERS": "2",
        "DJANGO_SETTINGS_MODULE": "query_api.settings",
        "DJANGO_SECRET_KEY": "test-only-not-a-secret",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "TMPDIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "docker/gunicorn.conf.py", "query_api.wsgi:application"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, _ = get(f"http://127.0.0.1:{port}/no/such/path")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.2)
        assert status == 404
        for _ in range(19):  # 20 in all, spread over both workers by the kernel
            assert get(f"http://127.0.0.1:{port}/no/such/path")[0] == 404

        status, headers, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {family.name: family for family in text_string_to_metric_families(text)}
        served = sum(
            s.value
            for s in families["http_requests"].samples
            if s.name == "http_requests_total" and s.labels == {"route": "unmatched", "method": "GET", "status": "404"}
        )
        assert served == 20
        assert "http_request_duration_seconds" in families
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 404  # not on the port the gateway reaches
        (files,) = tmp_path.glob("prometheus-*")  # a fresh directory under TMPDIR
        assert list(files.glob("counter_*.db"))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not list(tmp_path.glob("prometheus-*")), "removed on exit"
