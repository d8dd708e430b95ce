"""The suppression list. Its SQL on the hot paths (the webhook's upsert, the sender's claim) is in
sql.py beside this model."""

from django.conf import settings
from django.db import models
from django.db.models.functions import Now


class Suppression(models.Model):
    """An address the account's emails never go to again, until someone removes it."""

    class Reason(models.TextChoices):
        BOUNCE = "bounce", "hard bounce"
        SPAM_REPORT = "spam_report", "spam report"
        UNSUBSCRIBE = "unsubscribe", "unsubscribe"
        MANUAL = "manual", "added by hand"

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "the provider's Event Webhook"
        API = "api", "the API"
        ADMIN = "admin", "the Django admin"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="suppressions", db_index=False
    )
    address = models.CharField(max_length=254, help_text="Lower-cased.")
    reason = models.CharField(max_length=16, choices=Reason.choices)
    detail = models.CharField(max_length=1000, blank=True, default="", help_text="What the provider said, or why.")
    source = models.CharField(max_length=16, choices=Source.choices)
    email_id = models.BigIntegerField(null=True, blank=True, help_text="The email whose event added it, if any.")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "suppression"
        ordering = ["-created_at", "-id"]
        # Also the index of the sender's check: one probe per recipient on (owner, address).
        constraints = [models.UniqueConstraint(fields=["owner", "address"], name="suppression_owner_address_uniq")]

    def __str__(self) -> str:
        return f"{self.address} ({self.reason})"
