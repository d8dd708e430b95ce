from django.apps import AppConfig


class SuppressionsConfig(AppConfig):
    """The per-account suppression list: addresses no email of the account goes to. The command
    API writes it (the Event Webhook, the API, the admin); the sender reads it in its claim
    (core.deliveries.store), so its SQL lives here, in core."""

    name = "core.suppressions"
    label = "suppressions"
    verbose_name = "Suppressions"
