from django.db import models
from django.db.models.functions import Now


class OutboxEvent(models.Model):
    """One event waiting to be published, written in the same transaction as the change it
    describes. The relay publishes rows that are unpublished and due (`not_before` passed),
    oldest due first, and sets `published_at` once the broker confirmed them.

    Column names follow Debezium's outbox event router (`id`, `aggregatetype`, `aggregateid`,
    `type`, `payload`) so a CDC relay could read this table without a migration.
    """

    id = models.UUIDField(primary_key=True, help_text="The event id: AMQP message_id and dedupe key.")
    aggregatetype = models.CharField(max_length=64)
    aggregateid = models.CharField(max_length=64)
    type = models.CharField(max_length=64)
    payload = models.JSONField()
    headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    not_before = models.DateTimeField(
        db_default=Now(), help_text="Not published before this time (scheduling, retry backoff)."
    )
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "outbox"
        ordering = ["created_at"]
        indexes = [
            # "Unpublished and due, oldest first" is a range scan of this small partial index.
            models.Index(
                fields=["not_before"],
                name="outbox_unpublished_due_idx",
                condition=models.Q(published_at__isnull=True),
            ),
            models.Index(fields=["aggregatetype", "aggregateid"], name="outbox_aggregate_idx"),
            models.Index(fields=["created_at"], name="outbox_created_idx"),
        ]

    def __str__(self):
        return f"{self.type} {self.id}"
