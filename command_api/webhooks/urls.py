from django.urls import path

from command_api.webhooks.apis import SendGridWebhookApi

urlpatterns = [path("sendgrid/", SendGridWebhookApi.as_view(), name="webhook-sendgrid")]
