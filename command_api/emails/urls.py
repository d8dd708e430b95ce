from django.urls import path

from command_api.emails.apis import EmailTemplateDetailApi, EmailTemplateListCreateApi, SentEmailCreateApi

urlpatterns = [
    path("email-template/", EmailTemplateListCreateApi.as_view(), name="email-template-list"),
    path("email-template/<int:template_id>/", EmailTemplateDetailApi.as_view(), name="email-template-detail"),
    path("sent-email/", SentEmailCreateApi.as_view(), name="sent-email"),
]
