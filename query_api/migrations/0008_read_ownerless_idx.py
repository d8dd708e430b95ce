from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking the projector's writes out: a large read table takes a while.
    atomic = False

    dependencies = [
        ("query_api", "0007_read_owner_template_status_idx"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="sentemaillog",
            index=models.Index(fields=["id"], name="read_ownerless_idx", condition=models.Q(owner_id__isnull=True)),
        ),
    ]
