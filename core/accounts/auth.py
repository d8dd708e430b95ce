import binascii
import re
from functools import cache
from hmac import compare_digest

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

from core.accounts.models import User
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
