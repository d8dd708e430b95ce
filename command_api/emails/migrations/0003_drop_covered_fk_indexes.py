from django.conf import settings
from django.db import migrations, models

# Each is the leading column of a composite index (sent_email_sender_created_idx on sender and
# created, sent_email_recipient_uniq on email and address), which serves every lookup by it: the
# single-column ones only cost each send one insert more per row. Dropped without locking the
# sends out.
COVERED = {
    "emails_sentemail_sender_id_55c775de": ("emails_sentemail", "sender_id"),
    "emails_sentemailrecipient_email_id_e978b894": ("emails_sentemailrecipient", "email_id"),
}


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("emails", "0002_sent_email_send_at"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="sentemail",
                    name="sender",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="sent_emails",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="sentemailrecipient",
                    name="email",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="recipients",
                        to="emails.sentemail",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
                    reverse_sql=f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column})",
                )
                for name, (table, column) in COVERED.items()
            ],
        ),
    ]
