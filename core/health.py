"""Probe endpoints: /healthz says the process answers, /readyz that it can reach its database."""

from django.db import connection
from django.http import JsonResponse


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means "not ready", and the probe must get an answer
        return JsonResponse({"status": "unavailable", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


def not_found(request, exception=None):
    """Django's 404 for URLs no route matches, in the API's error shape."""
    return JsonResponse({"message": "Not found.", "errors": {}}, status=404)


def server_error(request):
    return JsonResponse({"message": "Internal server error.", "errors": {}}, status=500)


def bad_request(request, exception=None):
    return JsonResponse({"message": "The request is malformed.", "errors": {}}, status=400)
