from django.urls import path

from command_api.ops.apis import OutboxListApi, OutboxReplayApi, OutboxStatusApi

urlpatterns = [
    path("outbox/", OutboxListApi.as_view(), name="ops-outbox-list"),
    path("outbox/status/", OutboxStatusApi.as_view(), name="ops-outbox-status"),
    path("outbox/replay/", OutboxReplayApi.as_view(), name="ops-outbox-replay"),
]
