"""Trigram indexes for the substring search of the audit log and the notifications
(issue 17: ``UPPER(actor) LIKE '%x%'`` scanned 500,000 rows). PostgreSQL only."""

from django.db import migrations

from portal.lib.migrations import TrigramExtension, TrigramIndex


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("portal", "0014_backup_drill_events")]

    operations = [
        TrigramExtension(),
        TrigramIndex("portal_auditevent", "actor", "auditevent_actor_trgm"),
        TrigramIndex("portal_auditevent", "subject_id", "auditevent_subject_id_trgm"),
        TrigramIndex("portal_notification", "title", "notification_title_trgm"),
        TrigramIndex("portal_notification", "subject_id", "notification_subject_id_trgm"),
    ]
