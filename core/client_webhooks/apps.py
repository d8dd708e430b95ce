from django.apps import AppConfig


class ClientWebhooksConfig(AppConfig):
    name = "core.client_webhooks"
    label = "client_webhooks"
    verbose_name = "Client webhooks"
