"""Account writes: register, log in (issue a token), log out (revoke it)."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from knox.models import AuthToken
from rest_framework import status

from core.accounts.models import User
from core.errors import ApplicationError, field_error

log = structlog.get_logger(__name__)


def user_register(*, email: str, username: str, password: str) -> User:
    """Create an active user. Raises ApplicationError naming the field for a taken email or
    username or a password Django's validators refuse. The password is never logged."""
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise field_error("email", f"A user with the email {email!r} already exists.")
    if User.objects.filter(username=username).exists():
        raise field_error("username", f"A user with the username {username!r} already exists.")
    candidate = User(email=email, username=username)
    try:
        password_validation.validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise ApplicationError("Invalid password: it is too weak.", errors={"password": list(exc.messages)}) from None
    candidate.set_password(password)
    try:
        with transaction.atomic():
            candidate.save()
    except IntegrityError:  # a concurrent registration took the email or the username
        raise field_error("email", f"A user with the email {email!r} already exists.") from None
    log.info("user_registered", user_id=candidate.pk)
    return candidate


@dataclass(frozen=True)
class IssuedToken:
    user: User
    token: str
    expiry: datetime | None


def _throttled() -> ApplicationError:
    return ApplicationError(
        "Too many failed logins. Try again later.",
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(settings.LOGIN_FAILURE_WINDOW_SECONDS)},
    )


def login_lockout_response(request, original_response=None, credentials=None):
    """django-axes' answer to a locked-out login, the admin's included: the API's 429."""
    from django.http import JsonResponse

    error = _throttled()
    response = JsonResponse({"message": error.message, "errors": {}}, status=error.status_code)
    response["Retry-After"] = error.headers["Retry-After"]
    return response


def login_failure_limit(request, credentials) -> int:
    return settings.LOGIN_FAILURE_LIMIT


def login_failure_window(request=None) -> timedelta:
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def login_username(request, credentials) -> str:
    """The name django-axes counts failures under: the email, as it is stored (lower-cased)."""
    credentials = credentials or {}
    # Django's signals name it `username`, axes' own checks by the user model's USERNAME_FIELD.
    username = credentials.get("username") or credentials.get("email") or request.POST.get("username", "")
    return str(username).strip().lower()


def user_login(*, email: str, password: str, request) -> IssuedToken:
    """Check the credentials and issue a new token (only its digest is stored).

    Wrong credentials raise a 400 without saying which part was wrong. django-axes counts the
    failures per (client address, email), atomically in Postgres: after LOGIN_FAILURE_LIMIT of
    them every attempt answers 429 until LOGIN_FAILURE_WINDOW_SECONDS have passed since the last
    one; a success clears the count. `request` is Django's request (django-axes reads the client
    address from it)."""
    email = email.strip().lower()
    user = authenticate(request, username=email, password=password)
    if getattr(request, "axes_locked_out", False):
        log.warning("login_throttled")
        raise _throttled()
    if user is None:
        log.info("login_failed")
        raise ApplicationError(
            "Unable to log in with the given credentials.",
            errors={"non_field_errors": ["Unable to log in with the given credentials."]},
        )
    instance, token = AuthToken.objects.create(user=user)
    user_logged_in.send(sender=user.__class__, request=request, user=user)  # last_login, and axes' reset
    log.info("login_succeeded", user_id=user.pk)
    return IssuedToken(user=user, token=token, expiry=instance.expiry)


def user_logout(*, token: AuthToken) -> None:
    """Revoke the token the request was authenticated with; it is refused from now on."""
    token.delete()
    log.info("logout", user_id=token.user_id)


def token_purge_expired() -> int:
    """Delete expired tokens (scheduled); returns how many were deleted."""
    deleted, _ = AuthToken.objects.filter(expiry__lt=timezone.now()).delete()
    return deleted
