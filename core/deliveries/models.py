"""The delivery records. The sender writes them with psycopg2 (see store.py); the models exist
for migrations, the admin, the ops tools and tests."""

from django.db import models
from django.db.models.functions import Now

from core.deliveries.states import TERMINAL


class Delivery(models.Model):
    """One recipient of one email.requested event: the claim (with a lease) a sender takes
    before calling the provider, and the outcome it records afterwards."""

    class State(models.TextChoices):
        SENDING = "sending", "sending (claimed, leased)"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        RETRY = "retry", "waiting for a retry"
        UNKNOWN = "unknown", "in doubt (a timeout): waiting for the provider's word"
        HELD = "held", "held for ops (outcome unknown)"
        SUPPRESSED = "suppressed", "suppressed (on the owner's list; never sent)"
        CANCELLED = "cancelled", "cancelled by its owner before any sender claimed it"

    event_id = models.UUIDField()
    recipient = models.CharField(max_length=254)
    email_id = models.BigIntegerField(db_index=True)
    state = models.CharField(max_length=16, choices=State.choices)
    attempts = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    claim_token = models.UUIDField(
        null=True, blank=True, help_text="The claim that holds it: outcome writes apply only while it does."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a retry is due.")
    provider_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the provider's own events first reported on it: it has the mail, and never gets it twice.",
    )
    last_redrive = models.ForeignKey(
        "Redrive", null=True, blank=True, on_delete=models.SET_NULL, db_index=False, related_name="deliveries"
    )
    provider_message_id = models.CharField(max_length=128, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "sender_delivery"
        constraints = [models.UniqueConstraint(fields=["event_id", "recipient"], name="sender_delivery_uniq")]
        indexes = [
            models.Index(
                fields=["state", "updated_at"],
                name="sender_delivery_state_idx",
                condition=models.Q(state__in=["unknown", "held", "sending"]),
            ),
            # Deliveries not finished (suppressed ones are): reconcile looks at their emails.
            models.Index(
                fields=["email_id"],
                name="sender_delivery_open_idx",
                condition=~models.Q(state__in=list(TERMINAL)),
            ),
        ]

    def __str__(self):
        return f"{self.recipient} of {self.event_id}: {self.state}"


class ProviderPause(models.Model):
    """A pause every sender honours (the provider answered 429): nobody calls it before
    `paused_until`."""

    provider = models.CharField(max_length=32, primary_key=True)
    paused_until = models.DateTimeField()
    reason = models.TextField(blank=True, default="")

    class Meta:
        db_table = "sender_provider_pause"

    def __str__(self) -> str:
        return f"{self.provider} paused until {self.paused_until}"


class Redrive(models.Model):
    """Who sent failed or held deliveries again, when, why, and how many."""

    created_at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=150, help_text="The staff user or the CLI's operator.")
    via = models.CharField(max_length=16, help_text="cli, api or admin")
    filters = models.JSONField(help_text="The selection, as given.")
    retried = models.PositiveIntegerField(default=0, help_text="Deliveries set to go again.")
    settled = models.PositiveIntegerField(default=0, help_text="Held deliveries the provider had reported on: sent.")
    reason = models.TextField(blank=True, default="")

    class Meta:
        db_table = "sender_redrive"
        ordering = ["-created_at"]

    def __str__(self):
        return f"re-drive #{self.pk} of {self.retried + self.settled} by {self.actor}"
