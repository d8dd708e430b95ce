from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "command_api.webhooks"
    label = "webhooks"
    verbose_name = "Provider webhooks"
