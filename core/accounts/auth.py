import binascii
import hashlib
import re
from datetime import timedelta
from functools import cache
from hmac import compare_digest

import structlog
from django.conf import settings
from django.db import connection
from django.db.models import Field
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from core.accounts.models import ApiKey, User
from core.prepared import Prepared

_TOKEN_SHAPE = re.compile(rb"[A-Za-z0-9_.~+/=-]+")
_MAX_TOKEN_LENGTH = 512


def _column(field: Field) -> str:
    """The quoted column of a concrete field (every concrete field has one)."""
    assert field.column is not None, field
    return connection.ops.quote_name(field.column)


@cache
def _token_query() -> tuple[Prepared, list[str], list[str]]:
    """The token with its user in one statement that is built and planned once, not per request:
    every authenticated request runs it. (The statement, the token's fields and the user's, in
    the order of its columns.)"""
    token_columns = [f"t.{_column(f)}" for f in AuthToken._meta.concrete_fields]
    user_columns = [f"u.{_column(f)}" for f in User._meta.concrete_fields]
    user_pk, user_fk = _column(User._meta.pk), _column(AuthToken._meta.get_field("user"))
    return (
        Prepared(
            "auth_token_lookup",
            f"SELECT {', '.join(token_columns + user_columns)} FROM {AuthToken._meta.db_table} t "
            f"JOIN {User._meta.db_table} u ON u.{user_pk} = t.{user_fk} WHERE t.token_key = %(key)s",
        ),
        [f.attname for f in AuthToken._meta.concrete_fields],
        [f.attname for f in User._meta.concrete_fields],
    )


class TokenAuthentication(KnoxTokenAuthentication):
    """`Authorization: Token <key>`; the database holds only a SHA-512 digest of the key.

    Knox checks every token of the user on each request to delete expired ones; here only the
    presented token is checked, so a user with many sessions costs the same as one. Expired
    tokens are refused here and purged by the scheduled `token_purge_expired` job.
    """

    def authenticate_credentials(self, token: bytes):
        """Knox's check (the key's prefix finds candidates, the digest must match, the token must
        not have expired, the user must be active), with SQL built once instead of a queryset
        compiled on every request."""
        # Keys are ASCII (hex, behind an optional prefix): anything else, undecodable bytes and
        # control characters included, cannot be one and is refused before it reaches SQL.
        if len(token) > _MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        key = token.decode("ascii")
        try:
            digest = hash_token(key)
        except (TypeError, binascii.Error):
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
        statement, token_fields, user_fields = _token_query()
        split = len(token_fields)
        with connection.cursor() as cursor:
            statement.execute(cursor, {"key": key[: CONSTANTS.TOKEN_KEY_LENGTH]})
            rows = cursor.fetchall()
        for row in rows:
            auth_token = AuthToken.from_db(connection.alias, token_fields, row[:split])
            if self._cleanup_token(auth_token) or not compare_digest(digest, auth_token.digest):
                continue
            auth_token.user = User.from_db(connection.alias, user_fields, row[split:])
            return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed(_("Invalid token."))

    def _cleanup_token(self, auth_token) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.accounts.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'Send "Token <key>" from the login answer.',
        }


# API keys --------------------------------------------------------------------------------------

API_KEY_PREFIX = "ek_"
# `ek_<12 hex: the row's prefix>_<64 hex: the secret>`. A knox token is hex only, so the first
# three bytes tell a key from a token before anything is looked up.
API_KEY_SHAPE = re.compile(rb"ek_([0-9a-f]{12})_[0-9a-f]{64}")
API_KEY_SCHEMES = (b"token", b"bearer")


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def required_scope(view, method: str) -> str | None:
    """The scope a key needs for `method` on `view`: the view's `api_key_scope`, one scope for
    every method or a dict by method. None where the view names none: keys are refused there
    (account management, logout, ops, anything added later that did not opt in)."""
    declared = getattr(view, "api_key_scope", None)
    if isinstance(declared, dict):
        return declared.get(method.upper())
    return declared


@cache
def _api_key_query() -> tuple[Prepared, list[str], list[str]]:
    """The key with its user in one prepared statement, found by its prefix (unique)."""
    key_columns = [f"k.{_column(f)}" for f in ApiKey._meta.concrete_fields]
    user_columns = [f"u.{_column(f)}" for f in User._meta.concrete_fields]
    user_pk, user_fk = _column(User._meta.pk), _column(ApiKey._meta.get_field("user"))
    prefix = _column(ApiKey._meta.get_field("prefix"))
    return (
        Prepared(
            "api_key_lookup",
            f"SELECT {', '.join(key_columns + user_columns)} FROM {ApiKey._meta.db_table} k "
            f"JOIN {User._meta.db_table} u ON u.{user_pk} = k.{user_fk} WHERE k.{prefix} = %(prefix)s",
        ),
        [f.attname for f in ApiKey._meta.concrete_fields],
        [f.attname for f in User._meta.concrete_fields],
    )


@cache
def _api_key_touch() -> Prepared:
    """Sets the key's last use, unless another request set it within the precision already."""
    table, last_used = ApiKey._meta.db_table, _column(ApiKey._meta.get_field("last_used_at"))
    return Prepared(
        "api_key_touch",
        f"UPDATE {table} SET {last_used} = %(now)s WHERE id = %(id)s "
        f"AND ({last_used} IS NULL OR {last_used} < %(stale)s)",
    )


class MissingScope(exceptions.PermissionDenied):
    default_code = "missing_scope"


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Token ek_…` (the scheme clients already send user tokens with) or
    `Authorization: Bearer ek_…`: a service client's API key.

    Anything that is not shaped like a key is left to TokenAuthentication without a query, so a
    user token costs what it did. A key is found by its prefix and checked by its SHA-256 digest
    in constant time; a revoked key or an inactive user is a 401. Then the key's scope is checked
    against the view here, before any permission or throttle: a view that does not name the
    scope a key needs (`api_key_scope`) refuses keys with a 403, so an endpoint added later is
    closed to keys until it opts in. The request's user is the key's user (the user's own rights
    still apply: a non-staff user's key cannot write templates), and `request.auth` the key.
    """

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() not in API_KEY_SCHEMES or not parts[1].startswith(b"ek_"):
            return None
        key = self._authenticate_key(parts[1])
        structlog.contextvars.bind_contextvars(api_key_id=key.pk)  # on every log line of the request
        context = request.parser_context or {}
        scope = required_scope(context.get("view"), request.method)
        if scope is None:
            raise exceptions.PermissionDenied(
                "API keys cannot be used on this endpoint: it needs a user token (log in)."
            )
        if scope not in key.scopes:
            raise MissingScope(f"This API key lacks the '{scope}' scope.")
        self._touch(key)
        return key.user, key

    def authenticate_header(self, request):
        return "Token"

    def _authenticate_key(self, raw: bytes) -> ApiKey:
        shape = API_KEY_SHAPE.fullmatch(raw)
        if shape is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        key_text = raw.decode("ascii")
        statement, key_fields, user_fields = _api_key_query()
        with connection.cursor() as cursor:
            statement.execute(cursor, {"prefix": shape.group(1).decode("ascii")})
            row = cursor.fetchone()
        split = len(key_fields)
        key = ApiKey.from_db(connection.alias, key_fields, row[:split]) if row else None
        if key is None or not compare_digest(api_key_digest(key_text), key.digest):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        key.user = User.from_db(connection.alias, user_fields, row[split:])
        if not key.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return key

    def _touch(self, key: ApiKey) -> None:
        """Last use to within API_KEY_LAST_USED_PRECISION_SECONDS: a write at most once per that
        period per key (the time read with the key decides; the statement's own condition keeps
        concurrent requests from writing it twice), never one per request."""
        now = timezone.now()
        stale = now - timedelta(seconds=settings.API_KEY_LAST_USED_PRECISION_SECONDS)
        if key.last_used_at is not None and key.last_used_at >= stale:
            return
        with connection.cursor() as cursor:
            _api_key_touch().execute(cursor, {"now": now, "id": key.pk, "stale": stale})
        key.last_used_at = now


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.accounts.auth.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_requirement(self, auto_schema):
        """Listed only on the operations a key may call (those whose view names a scope)."""
        if required_scope(auto_schema.view, auto_schema.method) is None:
            return []
        return {self.name: []}

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'Send "Token ek_…" or "Bearer ek_…": an API key from POST api/v1/api-keys/. '
            "Scopes: `send` (POST sent-email), `read` (GET the sent-email log), `templates` (the "
            "template endpoints, within the user's own rights). A key without the scope an "
            "operation needs gets a 403 naming it.",
        }
