from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health
from query_api.apis import SentEmailDetailApi, SentEmailListApi

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/emails/sent-email/", SentEmailListApi.as_view(), name="sent-email-log"),
    path("api/v1/emails/sent-email/<int:email_id>/", SentEmailDetailApi.as_view(), name="sent-email-log-detail"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
