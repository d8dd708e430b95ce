"""Probe endpoints: /healthz says the process answers, /readyz that it can reach its database and
that the database has every migration of the process's apps (core.schema).

core.middleware.ProbeMiddleware answers both paths before any other middleware, so they work
whatever Host the kubelet sends."""

import structlog
from django.db import connection
from django.http import JsonResponse

from core.schema import migrations_pending

log = structlog.get_logger(__name__)


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 when every dependency answers; otherwise 503 naming the one that does not. What went
    wrong goes to the log, never to the caller: the probe path is public."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        pending = migrations_pending()
    except Exception as exc:  # any failure means "not ready", and the probe must get an answer
        log.warning("readiness_check_failed", dependency="database", error=str(exc))
        return JsonResponse({"status": "unavailable", "database": "unavailable"}, status=503)
    if pending:
        log.warning("readiness_check_failed", dependency="migrations", pending=pending)
        return JsonResponse({"status": "unavailable", "database": "ok", "migrations": "pending"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok", "migrations": "ok"})


def not_found(request, exception=None):
    """Django's 404 for URLs no route matches, in the API's error shape."""
    return JsonResponse({"message": "Not found.", "errors": {}}, status=404)


def server_error(request):
    return JsonResponse({"message": "Internal server error.", "errors": {}}, status=500)


def bad_request(request, exception=None):
    return JsonResponse({"message": "The request is malformed.", "errors": {}}, status=400)
