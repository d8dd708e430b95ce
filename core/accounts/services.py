"""Account writes: register, log in (issue a token), log out (revoke it); API keys (create, revoke)."""

import secrets
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

from core.accounts.auth import API_KEY_PREFIX, api_key_digest
from core.accounts.models import ApiKey, User
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


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    key: str  # the whole key: shown to its owner once, never stored


def api_key_create(
    *, user: User, name: str, scopes: list[str], rate_limit_per_minute: int | None = None
) -> IssuedApiKey:
    """Make a key for `user` with these scopes (already validated) and its own rate limit
    (API_KEY_DEFAULT_RATE_PER_MINUTE if None). Only the prefix and a SHA-256 digest of the key
    are stored; the key itself is returned once. Raises ApplicationError once the user holds
    API_KEY_MAX_PER_USER keys that are not revoked (a 400; counted under a lock on the user's row, so
    concurrent creations cannot pass it together)."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        held = ApiKey.objects.filter(user=user, revoked_at__isnull=True).count()
        if held >= settings.API_KEY_MAX_PER_USER:
            raise ApplicationError(
                f"You hold {held} API keys, the most allowed: revoke one first.",
                errors={"non_field_errors": [f"At most {settings.API_KEY_MAX_PER_USER} API keys per user."]},
            )
        while True:
            prefix, secret = secrets.token_hex(6), secrets.token_hex(32)
            # 48 random bits: a taken prefix is all but impossible, and simply drawn again.
            if not ApiKey.objects.filter(prefix=prefix).exists():
                break
        key = f"{API_KEY_PREFIX}{prefix}_{secret}"
        api_key = ApiKey.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            digest=api_key_digest(key),
            scopes=sorted(set(scopes)),
            rate_limit_per_minute=rate_limit_per_minute or settings.API_KEY_DEFAULT_RATE_PER_MINUTE,
        )
    log.info("api_key_created", user_id=user.pk, api_key_id=api_key.pk, scopes=api_key.scopes)
    return IssuedApiKey(api_key=api_key, key=key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key: every later request with it is a 401. Idempotent: a revoked key keeps the
    time it was first revoked. The row stays, for the record."""
    now = timezone.now()
    if ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now):
        log.info("api_key_revoked", user_id=api_key.user_id, api_key_id=api_key.pk)
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
