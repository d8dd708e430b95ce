from django.urls import path

from core import converters  # noqa: F401  (registers <id:…>)
from core.accounts.apis import ApiKeyListCreateApi, ApiKeyRevokeApi, LoginApi, LogoutApi, RegisterApi

urlpatterns = [
    path("register/", RegisterApi.as_view(), name="register"),
    path("login/", LoginApi.as_view(), name="login"),
    path("logout/", LogoutApi.as_view(), name="logout"),
]

# Mounted at api/v1/api-keys/ by the command API.
api_key_urlpatterns = [
    path("", ApiKeyListCreateApi.as_view(), name="api-key-list"),
    path("<id:api_key_id>/revoke/", ApiKeyRevokeApi.as_view(), name="api-key-revoke"),
]
