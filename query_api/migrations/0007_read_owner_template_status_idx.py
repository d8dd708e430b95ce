from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking the projector's writes out: a large read table takes a while.
    atomic = False

    dependencies = [
        ("query_api", "0006_status_seq"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="sentemaillog",
            index=models.Index(
                fields=["owner_id", "template_id", "status", "-created"], name="read_owner_template_status_idx"
            ),
        ),
    ]
