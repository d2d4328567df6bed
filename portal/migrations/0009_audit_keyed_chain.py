"""Keyed audit chain (a key id on every row) and a statement-level guard against TRUNCATE.

Rows written before this migration keep an empty ``key_id`` and their plain SHA-256
hash: ``audit_verify`` checks them as "legacy" up to the first keyed row (they are
never rewritten, which would launder any earlier tampering). Adding the column
rewrites no row, so the append-only triggers never see an UPDATE.
"""

from django.db import migrations, models

# Django's test runner empties test databases with TRUNCATE, as a superuser, between
# transactional tests: exactly that (database named test_*, superuser session) passes;
# every other TRUNCATE is refused, a superuser's in production included (a superuser
# can still disable the trigger first; anchors outside the database detect that).
# Functions are schema-qualified and search_path is pinned, so a role cannot shadow
# current_setting() with a function of its own.
PG_FORBID_TRUNCATE = r"""
CREATE OR REPLACE FUNCTION portal_auditevent_no_truncate() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_database() LIKE 'test\_%'
       AND pg_catalog.current_setting('is_superuser') = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'portal_auditevent is append-only (TRUNCATE refused)'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
DROP TRIGGER IF EXISTS portal_auditevent_no_truncate ON portal_auditevent;
CREATE TRIGGER portal_auditevent_no_truncate
    BEFORE TRUNCATE ON portal_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION portal_auditevent_no_truncate();
ALTER FUNCTION portal_auditevent_append_only() SET search_path = pg_catalog, pg_temp;
"""
PG_ALLOW_TRUNCATE = """
DROP TRIGGER IF EXISTS portal_auditevent_no_truncate ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_auditevent_no_truncate();
ALTER FUNCTION portal_auditevent_append_only() RESET search_path;
"""


# SQLite (local demo only): adding the column rebuilt the table and with it dropped
# 0002's UPDATE guard; put it back.
SQLITE_FORBID_UPDATE = """
CREATE TRIGGER IF NOT EXISTS portal_auditevent_no_update
BEFORE UPDATE ON portal_auditevent
BEGIN SELECT RAISE(ABORT, 'portal_auditevent is append-only (UPDATE refused)'); END;
"""


def forbid_truncate(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FORBID_TRUNCATE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_FORBID_UPDATE, params=None)


def allow_truncate(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_ALLOW_TRUNCATE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0008_audit_restore_targets"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(
                blank=True,
                default="",
                help_text="HMAC key that signed it; empty: legacy",
                max_length=32,
            ),
        ),
        migrations.RunPython(forbid_truncate, allow_truncate),
    ]
