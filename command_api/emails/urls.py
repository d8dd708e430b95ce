from django.urls import path

from command_api.emails.apis import (
    EmailTemplateDetailApi,
    EmailTemplateListCreateApi,
    SentEmailCancelApi,
    SentEmailCreateApi,
)
from core import converters  # noqa: F401  (registers <id:…>)

urlpatterns = [
    path("email-template/", EmailTemplateListCreateApi.as_view(), name="email-template-list"),
    path("email-template/<id:template_id>/", EmailTemplateDetailApi.as_view(), name="email-template-detail"),
    path("sent-email/", SentEmailCreateApi.as_view(), name="sent-email"),
    path("sent-email/<id:email_id>/cancel/", SentEmailCancelApi.as_view(), name="sent-email-cancel"),
]
