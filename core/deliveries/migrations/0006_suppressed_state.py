# A delivery may be `suppressed` (terminal): the index of unfinished deliveries leaves it out. The
# new index is built, and the old one dropped, without locking out the senders' writes.

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("sender", "0005_schedule_prune"),
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
                ],
                max_length=16,
            ),
        ),
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("state__in", ["sent", "failed", "suppressed"]), _negated=True),
                fields=["email_id"],
                name="sender_delivery_open_idx",
            ),
        ),
        RemoveIndexConcurrently(
            model_name="delivery",
            name="sender_delivery_unfinished_idx",
        ),
    ]
