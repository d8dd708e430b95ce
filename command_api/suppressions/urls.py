from django.urls import path

from command_api.suppressions.apis import SuppressionDetailApi, SuppressionListCreateApi

urlpatterns = [
    path("", SuppressionListCreateApi.as_view(), name="suppression-list"),
    path("<str:address>/", SuppressionDetailApi.as_view(), name="suppression-detail"),
]
