from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health
from core.accounts.urls import api_key_urlpatterns

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/users/", include("core.accounts.urls")),
    path("api/v1/api-keys/", include(api_key_urlpatterns)),
    path("api/v1/emails/", include("command_api.emails.urls")),
    path("api/v1/suppressions/", include("command_api.suppressions.urls")),
    path("api/v1/ops/", include("command_api.ops.urls")),
    path("api/v1/webhooks/", include("command_api.webhooks.urls")),
    path("api/v1/webhook-endpoints/", include("command_api.client_webhooks.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

handler404 = "core.health.not_found"
handler500 = "core.health.server_error"
handler400 = "core.health.bad_request"
