"""Prometheus metrics of the two APIs: requests by route, method and status, and their latency.

The route is the URL pattern Django resolved (`api/v1/emails/sent-email/<id:email_id>/`), never
the raw path, so an id or a scanner's made-up path cannot make a new time series; a request no
pattern matched is counted under the route "unmatched".

Under gunicorn each worker process counts its own requests. docker/gunicorn.conf.py turns on
prometheus_client's multiprocess mode (every process writes its values to files in
PROMETHEUS_MULTIPROC_DIR) and serves the sum of them all on a port of its own (API_METRICS_PORT),
away from the port the gateway routes to.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "From the request reaching Django to its response",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def route_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else UNMATCHED


def method_of(request) -> str:
    # A method is whatever the client wrote: bound it like the route.
    return request.method if request.method in _METHODS else "other"


class RequestMetricsMiddleware:
    """Counts every response, errors and refusals of the middlewares after it included: put it
    first in MIDDLEWARE (Django turns a view's exception into a 500 response before it gets here)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        route, method = route_of(request), method_of(request)
        LATENCY.labels(route=route, method=method).observe(time.perf_counter() - started)
        REQUESTS.labels(route=route, method=method, status=str(response.status_code)).inc()
        return response
