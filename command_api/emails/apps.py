from django.apps import AppConfig


class EmailsConfig(AppConfig):
    name = "command_api.emails"
    label = "emails"
    verbose_name = "Emails"
