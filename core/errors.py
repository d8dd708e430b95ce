"""One application error type and one DRF exception handler: every refusal has the same shape.

    {"message": "<what went wrong>", "errors": {"<field>": ["<why>", ...]}}

Services raise ApplicationError; views never catch.
"""

import structlog
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

log = structlog.get_logger(__name__)

# How long a client should wait before it tries again after a 503 (the database is away: a
# restart or a failover takes seconds).
RETRY_AFTER_SECONDS = 5


class ApplicationError(Exception):
    """A refusal the client can act on. `errors` maps a request field to its messages."""

    def __init__(
        self,
        message: str,
        *,
        errors: dict[str, list[str]] | None = None,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.errors = errors or {}
        self.status_code = status_code
        self.headers = headers or {}


def field_error(field: str, message: str, **kwargs) -> ApplicationError:
    return ApplicationError(f"Invalid {field}: {message}", errors={field: [message]}, **kwargs)


def _flatten(detail) -> dict[str, list[str]]:
    """DRF nests errors (lists, dicts, dicts of list items); flatten them to field -> [str]."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(value, dict):
                for sub_key, messages in _flatten(value).items():
                    flat[f"{key}.{sub_key}"] = messages
            elif isinstance(value, list):
                flat[str(key)] = [str(item) for item in value]
            else:
                flat[str(key)] = [str(value)]
        return flat
    if isinstance(detail, list):
        return {"non_field_errors": [str(item) for item in detail]}
    return {"non_field_errors": [str(detail)]}


def exception_handler(exc, context):
    # Imported here: DRF's views module loads the APIs' token authentication (knox, the accounts
    # app), which only the APIs install; the workers import this module for ApplicationError.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    if isinstance(exc, ApplicationError):
        return Response(
            {"message": exc.message, "errors": exc.errors},
            status=exc.status_code,
            headers=exc.headers,
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"message": "The request body is too large.", "errors": {}},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):  # e.g. too many form fields: a malformed request
        return Response(
            {"message": f"The request is malformed: {exc}", "errors": {}}, status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is away (restarting, failing over) or gave up on the statement. Not the
        # client's fault and not a bug: the same request shortly will do. (A connection that broke
        # during the commit leaves unknown whether it went through: an Idempotency-Key makes the
        # retry of a send safe either way.)
        set_rollback()
        log.warning("database_unavailable", error=str(exc).strip()[:300])
        return Response(
            {
                "message": "The service is briefly unavailable: try again shortly (a send retried with "
                "the same Idempotency-Key is never made twice).",
                "errors": {},
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django answers 500 and logs it
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        fields = ", ".join(sorted(errors))
        response.data = {"message": f"Invalid input: {fields}.", "errors": errors}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = {"message": str(detail), "errors": {}}
    return response
