from django.db import migrations

# Django gives a varchar primary key a second index with varchar_pattern_ops, for LIKE 'prefix%'
# lookups. Nothing looks provider events up by a prefix of their id: the index only cost each
# event of every webhook post one insert more. Dropped without locking the webhook out. (The
# model does not know the index; a later change of the field's type would make it again.)
NAME = "webhook_provider_event_provider_event_id_2d9c5621_like"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("webhooks", "0002_schedule_prune"),
    ]

    operations = [
        migrations.RunSQL(
            f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}",
            reverse_sql=(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME}"
                " ON webhook_provider_event (provider_event_id varchar_pattern_ops)"
            ),
        ),
    ]
