from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class WebhookEndpoint(models.Model):
    """Where a user wants the status changes of their emails posted, signed with `secret`.

    Written by the command API (the owner) and the notifier (`failing_since`, and disabling an
    endpoint that kept failing); read by the projector, which queues messages only for enabled
    endpoints that want the event type."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    event_types = ArrayField(
        models.CharField(max_length=40), default=list, blank=True, help_text="Empty: every event type."
    )
    secret = models.CharField(max_length=100, help_text="whsec_<base64>: the Standard Webhooks signing key.")
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Until then, deliveries are signed with the previous secret too."
    )
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=1000, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failed attempt since the last success; null while it answers."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "client_webhook_endpoint"
        indexes = [
            # The projector's one question per batch: the enabled endpoints of these owners.
            models.Index(fields=["owner"], name="client_webhook_enabled_idx", condition=models.Q(enabled=True)),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.url}"


class WebhookMessage(models.Model):
    """One status change for one endpoint: the client webhooks' outbox. The projector inserts it
    in the transaction that applies the change; the notifier delivers it at least once. Its id is
    the `webhook-id` header, the same on every attempt and replay, so a client can deduplicate."""

    PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
    STATES = [(PENDING, "pending"), (DELIVERED, "delivered"), (FAILED, "failed")]

    id = models.UUIDField(primary_key=True)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="messages")
    email_id = models.BigIntegerField()
    sequence = models.IntegerField(help_text="The email's status sequence number: higher is later.")
    event_type = models.CharField(max_length=40)
    payload = models.JSONField()
    state = models.CharField(max_length=12, choices=STATES, default=PENDING)
    attempts = models.IntegerField(default=0, help_text="Attempts since it was queued or last replayed.")
    next_attempt_at = models.DateTimeField(help_text="Due then; a claim pushes it a lease ahead.")
    last_error = models.CharField(max_length=1000, blank=True, default="")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "client_webhook_message"
        indexes = [
            # The notifier's claim: due, pending messages (few, behind a partial index).
            models.Index(
                fields=["next_attempt_at"], name="client_webhook_due_idx", condition=models.Q(state="pending")
            ),
            models.Index(fields=["endpoint", "-created_at"], name="client_webhook_log_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.email_id}/{self.sequence} → endpoint {self.endpoint_id}: {self.state}"


class WebhookAttempt(models.Model):
    """One delivery attempt of a message, whatever its outcome: the endpoint's delivery log."""

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField()
    status_code = models.IntegerField(null=True, blank=True, help_text="Null when no answer came.")
    duration_ms = models.IntegerField()
    response = models.CharField(max_length=500, blank=True, default="", help_text="The answer's first bytes.")
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "client_webhook_attempt"
        indexes = [models.Index(fields=["message", "attempted_at"], name="client_webhook_attempt_idx")]

    def __str__(self) -> str:
        return f"{self.message_id} at {self.attempted_at}: {self.status_code or self.error}"
