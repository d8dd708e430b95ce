from django.urls import path

from command_api.ops.apis import (
    DeadLetterDismissApi,
    DeadLetterListApi,
    DeadLetterRedriveApi,
    DeliveryListApi,
    DeliveryRedriveApi,
    OutboxListApi,
    OutboxReplayApi,
    OutboxStatusApi,
)

urlpatterns = [
    path("outbox/", OutboxListApi.as_view(), name="ops-outbox-list"),
    path("outbox/status/", OutboxStatusApi.as_view(), name="ops-outbox-status"),
    path("outbox/replay/", OutboxReplayApi.as_view(), name="ops-outbox-replay"),
    path("deliveries/", DeliveryListApi.as_view(), name="ops-deliveries"),
    path("deliveries/redrive/", DeliveryRedriveApi.as_view(), name="ops-deliveries-redrive"),
    path("dead-letters/", DeadLetterListApi.as_view(), name="ops-dead-letters"),
    path("dead-letters/redrive/", DeadLetterRedriveApi.as_view(), name="ops-dead-letters-redrive"),
    path("dead-letters/dismiss/", DeadLetterDismissApi.as_view(), name="ops-dead-letters-dismiss"),
]
