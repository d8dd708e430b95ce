from django.apps import AppConfig


class QueryApiConfig(AppConfig):
    name = "query_api"
    label = "query_api"
    verbose_name = "Sent-email log (read model)"
