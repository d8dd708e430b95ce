from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from knox.auth import TokenAuthentication as KnoxTokenAuthentication


class TokenAuthentication(KnoxTokenAuthentication):
    """`Authorization: Token <key>`; the database holds only a SHA-512 digest of the key.

    Knox checks every token of the user on each request to delete expired ones; here only the
    presented token is checked, so a user with many sessions costs the same as one. Expired
    tokens are refused here and purged by the scheduled `token_purge_expired` job.
    """

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
