from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health
from query_api.apis import SentEmailDetailApi, SentEmailListApi

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/emails/sent-email/", SentEmailListApi.as_view(), name="sent-email-log"),
    path("api/v1/emails/sent-email/<int:email_id>/", SentEmailDetailApi.as_view(), name="sent-email-log-detail"),
    path("api/schema/", SpectacularAPIView.as_view(urlconf="query_api.urls"), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

handler404 = "core.health.not_found"
handler500 = "core.health.server_error"
handler400 = "core.health.bad_request"
