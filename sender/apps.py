from django.apps import AppConfig


class SenderConfig(AppConfig):
    name = "sender"
    label = "sender"
    verbose_name = "Sender"
