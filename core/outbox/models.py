from django.db import models
from django.db.models.functions import Now

from core.outbox.sql import TABLE


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
    failed_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when the broker refused the event; a replay clears it."
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # Indexed only where set (below): nearly every row is never replayed, and a full index would
    # cost every insert one more btree entry.
    last_replay = models.ForeignKey(
        "OutboxReplay", null=True, blank=True, on_delete=models.SET_NULL, related_name="events", db_index=False
    )

    class Meta:
        db_table = TABLE
        ordering = ["created_at"]
        indexes = [
            # "Unpublished and due, oldest first" is a range scan of this small partial index.
            models.Index(
                fields=["not_before"],
                name="outbox_pending_due_idx",
                condition=models.Q(published_at__isnull=True, failed_at__isnull=True),
            ),
            models.Index(
                fields=["published_at"],
                name="outbox_published_idx",
                condition=models.Q(published_at__isnull=False),
            ),
            models.Index(fields=["failed_at"], name="outbox_failed_idx", condition=models.Q(failed_at__isnull=False)),
            models.Index(fields=["aggregatetype", "aggregateid"], name="outbox_aggregate_idx"),
            models.Index(fields=["created_at"], name="outbox_created_idx"),
            models.Index(
                fields=["last_replay"], name="outbox_last_replay_idx", condition=models.Q(last_replay__isnull=False)
            ),
        ]

    def __str__(self):
        return f"{self.type} {self.id}"


class OutboxReplay(models.Model):
    """Who put which published or failed events back into the outbox, when, and why."""

    created_at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=150, help_text="The staff user or the CLI's operator.")
    via = models.CharField(max_length=16, help_text="cli, api or admin")
    filters = models.JSONField(help_text="The selection, as given.")
    event_count = models.PositiveIntegerField()
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"replay #{self.pk} of {self.event_count} by {self.actor}"


class DeadLetter(models.Model):
    """A message that reached a consumer's dead-letter queue, recorded by that consumer's keeper
    so that nothing is parked silently: ops see it here (and as `dead_letters_parked`), and
    re-drive or dismiss it. The body is kept as it was received."""

    class Resolution(models.TextChoices):
        PARKED = "parked", "parked: waiting for ops"
        FAILED = "failed", "its recipients were failed with the reason"
        REDRIVEN = "redriven", "re-driven by ops"
        DISMISSED = "dismissed", "dismissed by ops"

    received_at = models.DateTimeField(db_default=Now(), db_index=True)
    queue = models.CharField(max_length=200, help_text="The work queue it died in.")
    reason = models.CharField(max_length=32, help_text="RabbitMQ's: rejected, delivery_limit, expired …")
    deaths = models.PositiveIntegerField(default=1, help_text="How many times it died there.")
    died_at = models.DateTimeField(help_text="When it first died there (RabbitMQ's x-death time).")
    message_id = models.CharField(max_length=200, blank=True, default="", help_text="The event id, when it has one.")
    type = models.CharField(max_length=64, blank=True, default="", help_text="The routing key: the event type.")
    email_id = models.BigIntegerField(null=True, blank=True)
    body = models.TextField(help_text="As received (bytes that are not UTF-8 escaped).")
    headers = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True, default="", help_text="What the keeper found and did.")
    resolution = models.CharField(max_length=16, choices=Resolution.choices, default=Resolution.PARKED)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        db_table = "outbox_dead_letter"
        ordering = ["-received_at"]
        constraints = [
            # A keeper that dies before its ack sees the message again: it records it once.
            models.UniqueConstraint(fields=["queue", "message_id", "died_at", "deaths"], name="dead_letter_once"),
        ]
        indexes = [
            models.Index(
                fields=["received_at"], name="dead_letter_parked_idx", condition=models.Q(resolution="parked")
            ),
            models.Index(fields=["email_id"], name="dead_letter_email_idx"),
        ]

    def __str__(self):
        return f"{self.type or 'message'} {self.message_id or self.pk} dead in {self.queue} ({self.reason})"
