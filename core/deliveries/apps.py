from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    """The delivery records: one row per recipient of each email.requested event, the claim a
    sender takes and the outcome it records. The sender writes them on its hot path; re-drive,
    reconcile and the ops tools read and change them too, so their SQL lives here, in core.
    The label is `sender`, the tables' app since their first migration."""

    name = "core.deliveries"
    label = "sender"
    verbose_name = "Deliveries"
