"""The shared database cache (settings.CACHES; the registration throttle counts there, and the
login throttle did when this was written) gets its table here, so `migrate` alone leaves a
working system (no extra createcachetable step for a deployment to forget). Creating it again is
a no-op, as createcachetable skips tables that exist."""

from django.conf import settings
from django.core.cache.backends.db import DatabaseCache
from django.core.management import call_command
from django.db import migrations


def create_cache_tables(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


def drop_cache_tables(apps, schema_editor):
    for cache in settings.CACHES.values():
        if cache["BACKEND"] == f"{DatabaseCache.__module__}.{DatabaseCache.__name__}":
            schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(cache['LOCATION'])}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_schedule_token_purge")]

    operations = [migrations.RunPython(create_cache_tables, drop_cache_tables)]
