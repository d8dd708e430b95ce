from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import converters, health  # noqa: F401  (converters registers <id:…>)
from query_api.apis import SentEmailDetailApi, SentEmailListApi

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/emails/sent-email/", SentEmailListApi.as_view(), name="sent-email-log"),
    path("api/v1/emails/sent-email/<id:email_id>/", SentEmailDetailApi.as_view(), name="sent-email-log-detail"),
    path("api/schema/", SpectacularAPIView.as_view(urlconf="query_api.urls"), name="schema"),
    # The same schema under a path of its own, which the gateway routes here: the docs page at the
    # one base URL (the command API's api/docs/) offers it next to the command API's schema.
    path(
        "api/schema/sent-email-log/", SpectacularAPIView.as_view(urlconf="query_api.urls"), name="schema-sent-email-log"
    ),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

handler404 = "core.health.not_found"
handler500 = "core.health.server_error"
handler400 = "core.health.bad_request"
