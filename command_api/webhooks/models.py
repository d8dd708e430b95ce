from django.db import models


class ProviderEvent(models.Model):
    """A SendGrid Event Webhook event we accepted, kept as the write side's record of what the
    provider said (the rebuild reads it) and to drop SendGrid's repeated posts."""

    provider_event_id = models.CharField(max_length=100, primary_key=True, help_text="SendGrid's sg_event_id")
    email_id = models.BigIntegerField(db_index=True)
    request_event_id = models.UUIDField()
    recipient = models.CharField(max_length=254)
    status = models.CharField(max_length=24)
    provider_message_id = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    reported_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    payload = models.JSONField()

    class Meta:
        db_table = "webhook_provider_event"

    def __str__(self) -> str:
        return f"{self.provider_event_id}: {self.status} for {self.recipient} of email #{self.email_id}"
