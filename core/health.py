"""Probe endpoints: /healthz says the process answers, /readyz that it can reach its database."""

import structlog
from django.db import connection
from django.http import JsonResponse

log = structlog.get_logger(__name__)


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 when every dependency answers; otherwise 503 naming the one that does not. What went
    wrong goes to the log, never to the caller: the probe path is public."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means "not ready", and the probe must get an answer
        log.warning("readiness_check_failed", dependency="database", error=str(exc))
        return JsonResponse({"status": "unavailable", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


def not_found(request, exception=None):
    """Django's 404 for URLs no route matches, in the API's error shape."""
    return JsonResponse({"message": "Not found.", "errors": {}}, status=404)


def server_error(request):
    return JsonResponse({"message": "Internal server error.", "errors": {}}, status=500)


def bad_request(request, exception=None):
    return JsonResponse({"message": "The request is malformed.", "errors": {}}, status=400)
