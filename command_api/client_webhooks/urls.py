from django.urls import path

from command_api.client_webhooks.apis import (
    WebhookEndpointDetailApi,
    WebhookEndpointListCreateApi,
    WebhookEndpointRotateSecretApi,
    WebhookMessageListApi,
    WebhookMessageReplayApi,
    WebhookReplayApi,
)
from core import converters  # noqa: F401  (registers <id:…>)

urlpatterns = [
    path("", WebhookEndpointListCreateApi.as_view(), name="webhook-endpoint-list"),
    path("<id:endpoint_id>/", WebhookEndpointDetailApi.as_view(), name="webhook-endpoint-detail"),
    path("<id:endpoint_id>/rotate-secret/", WebhookEndpointRotateSecretApi.as_view(), name="webhook-endpoint-rotate"),
    path("<id:endpoint_id>/messages/", WebhookMessageListApi.as_view(), name="webhook-message-list"),
    path(
        "<id:endpoint_id>/messages/<uuid:message_id>/replay/",
        WebhookMessageReplayApi.as_view(),
        name="webhook-message-replay",
    ),
    path("<id:endpoint_id>/replay/", WebhookReplayApi.as_view(), name="webhook-replay"),
]
