"""Indexes for a year of data (issue 17): the dashboard's sort on ``status_changed_at``,
the diagnostics list's order, and trigram indexes for the actions list's substring search
(PostgreSQL only)."""

from django.db import migrations, models

from portal.lib.migrations import AddIndexConcurrently, TrigramExtension, TrigramIndex


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("pra", "0002_approval_revisions")]

    operations = [
        AddIndexConcurrently(
            model_name="praaction",
            index=models.Index(fields=["status_changed_at"], name="praaction_status_changed_idx"),
        ),
        AddIndexConcurrently(  # the diagnostics list's order
            model_name="diagnosticrun",
            index=models.Index(fields=["created"], name="diagnosticrun_created_idx"),
        ),
        TrigramExtension(),
        TrigramIndex("pra_praaction", "action", "praaction_action_trgm"),
        TrigramIndex("pra_praaction", "proposer_label", "praaction_proposer_trgm"),
        TrigramIndex("pra_praaction", "rationale", "praaction_rationale_trgm"),
    ]
