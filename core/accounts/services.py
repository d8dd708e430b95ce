"""Account writes: register, log in (issue a token), log out (revoke it)."""

import hashlib
from dataclasses import dataclass
from datetime import datetime

import structlog
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.core.cache import cache
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
        raise ApplicationError(
            "Invalid password: it is too weak.", errors={"password": list(exc.messages)}
        ) from None
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


def _failure_key(email: str, client_address: str) -> str:
    # Hashed: a cache key is short and plain whatever the client typed.
    return "login-failures:" + hashlib.sha256(f"{client_address}\n{email}".encode("utf-8", "replace")).hexdigest()


def user_login(*, email: str, password: str, client_address: str) -> IssuedToken:
    """Check the credentials and issue a new token (only its digest is stored).

    Wrong credentials raise a 400 without saying which part was wrong. After
    LOGIN_FAILURE_LIMIT failures for the same email from the same address within
    LOGIN_FAILURE_WINDOW_SECONDS every attempt answers 429 until the window has passed.
    """
    email = email.strip().lower()
    key = _failure_key(email, client_address)
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    if cache.get(key, 0) >= settings.LOGIN_FAILURE_LIMIT:
        log.warning("login_throttled", client_address=client_address)
        raise ApplicationError(
            "Too many failed logins. Try again later.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(window)},
        )
    user = authenticate(username=email, password=password)
    if user is None:
        if not cache.add(key, 1, timeout=window):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=window)
        log.info("login_failed", client_address=client_address)
        raise ApplicationError(
            "Unable to log in with the given credentials.",
            errors={"non_field_errors": ["Unable to log in with the given credentials."]},
        )
    cache.delete(key)
    instance, token = AuthToken.objects.create(user=user)
    user.last_login = timezone.now()
    user.save(update_fields=["last_login"])
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
