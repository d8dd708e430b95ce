# A delivery may be `cancelled` (terminal: its owner cancelled the email before any sender claimed
# it). The index of unfinished deliveries leaves it out too: rebuilt without locking out the
# senders' writes (reconcile, its only reader, does without it for the moment in between).

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("sender", "0006_suppressed_state"),
    ]

    operations = [
        migrations.AlterField(
            model_name="delivery",
            name="state",
            field=models.CharField(
                choices=[
                    ("sending", "sending (claimed, leased)"),
                    ("sent", "sent"),
                    ("failed", "failed"),
                    ("retry", "waiting for a retry"),
                    ("unknown", "in doubt (a timeout): waiting for the provider's word"),
                    ("held", "held for ops (outcome unknown)"),
                    ("suppressed", "suppressed (on the owner's list; never sent)"),
                    ("cancelled", "cancelled by its owner before any sender claimed it"),
                ],
                max_length=16,
            ),
        ),
        RemoveIndexConcurrently(
            model_name="delivery",
            name="sender_delivery_open_idx",
        ),
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("state__in", ["sent", "failed", "suppressed", "cancelled"]), _negated=True),
                fields=["email_id"],
                name="sender_delivery_open_idx",
            ),
        ),
    ]
