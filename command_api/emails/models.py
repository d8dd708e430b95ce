from django.conf import settings
from django.db import models
from django.db.models.functions import Now


class EmailTemplate(models.Model):
    """Subject and HTML body in Django template syntax (`Hello {{ name }}`)."""

    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=998)
    body = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.name


class SentEmail(models.Model):
    """An accepted send request, rendered, as the sender will deliver it."""

    # No index of its own: sent_email_sender_created_idx (sender, created) serves every lookup by
    # sender, and each index costs every send an insert.
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sent_emails", db_index=False
    )
    # The rendered subject and body are kept, so a later change of the template changes nothing.
    template = models.ForeignKey(EmailTemplate, null=True, on_delete=models.SET_NULL, related_name="sent_emails")
    template_name = models.CharField(max_length=200)
    from_email = models.EmailField()
    subject = models.CharField(max_length=998)
    body = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=64)
    # NULL, not "", when absent: the unique constraint below holds only for emails sent with a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    created = models.DateTimeField(db_default=Now(), db_index=True)
    # A scheduled send: its email.requested outbox row is not published before this time. NULL:
    # sent at once. Cancelling is recorded by the sender's delivery rows (state `cancelled`).
    send_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["sender", "created"], name="sent_email_sender_created_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["sender", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="sent_email_idempotency_key_uniq",
            )
        ]

    def __str__(self):
        return f"#{self.pk} {self.subject[:60]}"


class SentEmailRecipient(models.Model):
    # No index of its own: sent_email_recipient_uniq (email, address) serves every lookup by email.
    email = models.ForeignKey(SentEmail, on_delete=models.CASCADE, related_name="recipients", db_index=False)
    address = models.EmailField()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["email", "address"], name="sent_email_recipient_uniq")]

    def __str__(self):
        return self.address
