"""Per-request correlation id and one structured access-log line per request."""

import ipaddress
import re
import time
import uuid

import structlog
from django.conf import settings

CORRELATION_HEADER = "X-Correlation-ID"
_META_KEYS = ("HTTP_X_CORRELATION_ID", "HTTP_X_REQUEST_ID")
# Accept a caller's id only when it is short and harmless to put in logs and headers.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

log = structlog.get_logger("request")


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
