"""Per-request correlation id and one structured access-log line per request."""

import ipaddress
import re
import time
import uuid

import structlog
from django.conf import settings

from core import health

CORRELATION_HEADER = "X-Correlation-ID"
_META_KEYS = ("HTTP_X_CORRELATION_ID", "HTTP_X_REQUEST_ID")
# Accept a caller's id only when it is short and harmless to put in logs and headers.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

log = structlog.get_logger("request")
_PROBES = {"/healthz": health.healthz, "/readyz": health.readyz}


def correlation_id_from(meta: dict) -> str:
    for key in _META_KEYS:
        candidate = meta.get(key, "")
        if _VALID_ID.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


def client_address(request) -> str:
    """The address of the client, for per-client limits such as the login throttle.

    With no proxy in front (TRUSTED_PROXY_HOPS=0), REMOTE_ADDR. Behind the gateway, REMOTE_ADDR is
    the gateway's, and each trusted proxy appends the address it received from to
    X-Forwarded-For: the client's is the entry TRUSTED_PROXY_HOPS from the right. Entries further
    left are the client's own claim and are never used."""
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_HOPS
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if len(forwarded) < hops:
        return remote
    try:
        return str(ipaddress.ip_address(forwarded[-hops]))
    except ValueError:
        return remote


class ProbeMiddleware:
    """Answers the kubelet's probes (GET or HEAD of /healthz and /readyz) before anything reads the Host.

    The kubelet sends `Host: <pod IP>:<port>`, which ALLOWED_HOSTS rightly refuses: CommonMiddleware,
    CSRF and others call request.get_host(), which raises DisallowedHost (a 400), and the pod would
    never become Ready. This middleware comes before all of them (after CorrelationIdMiddleware,
    which does not read the Host) and never reads it; every other path still goes through host
    validation."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        probe = _PROBES.get(request.path_info) if request.method in ("GET", "HEAD") else None
        if probe is not None:
            return probe(request)
        return self.get_response(request)


class CorrelationIdMiddleware:
    """Binds the caller's X-Correlation-ID (or a new one) to every log line of the request,
    stores it on `request.correlation_id` for the services, and echoes it in the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        structlog.contextvars.clear_contextvars()
        correlation_id = correlation_id_from(request.META)
        request.correlation_id = correlation_id
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        started = time.perf_counter()

        response = self.get_response(request)

        response[CORRELATION_HEADER] = correlation_id
        user = getattr(request, "user", None)
        log.info(
            "request_finished",
            method=request.method,
            path=request.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            user_id=getattr(user, "pk", None),
        )
        structlog.contextvars.clear_contextvars()
        return response
