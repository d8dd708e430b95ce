from django.db import migrations

# Django cascades deletes in Python (it collects the related rows, then deletes them) and makes
# foreign keys DEFERRABLE INITIALLY DEFERRED. Messages and attempts are written outside the ORM
# while an endpoint may be deleted (the projector queues, the notifier records) and the retention
# job deletes messages in SQL, so the database cascades itself: a message deleted takes its
# attempts, an endpoint its messages, and a row inserted meanwhile waits for the delete (the
# check is immediate) instead of failing at commit.
CASCADE = """
DO $$
DECLARE found record;
BEGIN
    FOR found IN
        SELECT c.conname, c.conrelid::regclass AS child, a.attname AS col, c.confrelid::regclass AS parent
          FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f'
           AND ((c.conrelid = 'client_webhook_attempt'::regclass AND a.attname = 'message_id')
             OR (c.conrelid = 'client_webhook_message'::regclass AND a.attname = 'endpoint_id'))
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', found.child, found.conname);
        EXECUTE format(
            'ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s (id) ON DELETE CASCADE',
            found.child, found.conname, found.col, found.parent
        );
    END LOOP;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("client_webhooks", "0002_schedule_prune")]
    operations = [migrations.RunSQL(CASCADE, reverse_sql=migrations.RunSQL.noop)]
