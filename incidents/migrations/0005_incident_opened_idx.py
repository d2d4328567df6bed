"""The incidents list's order (``-opened_at``) from an index (issue 17)."""

from django.db import migrations, models

from portal.lib.migrations import AddIndexConcurrently


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("incidents", "0004_storms_and_dependencies")]

    operations = [
        AddIndexConcurrently(
            model_name="incident",
            index=models.Index(fields=["opened_at"], name="incident_opened_idx"),
        ),
    ]
