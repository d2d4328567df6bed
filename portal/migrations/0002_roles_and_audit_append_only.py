"""Role groups, and the database-level guard that keeps the audit log append-only."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

PG_FORBID = """
CREATE OR REPLACE FUNCTION portal_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'portal_auditevent is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
CREATE TRIGGER portal_auditevent_append_only
    BEFORE UPDATE OR DELETE ON portal_auditevent
    FOR EACH ROW EXECUTE FUNCTION portal_auditevent_append_only();
"""
PG_ALLOW = """
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_auditevent_append_only();
"""
# SQLite (local demo only) gets the UPDATE guard; DELETE stays possible there
# because Django's test flush empties tables with DELETE.
SQLITE_FORBID = """
CREATE TRIGGER IF NOT EXISTS portal_auditevent_no_update
BEFORE UPDATE ON portal_auditevent
BEGIN SELECT RAISE(ABORT, 'portal_auditevent is append-only (UPDATE refused)'); END;
"""
SQLITE_ALLOW = "DROP TRIGGER IF EXISTS portal_auditevent_no_update;"


def forbid_changes(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORBID, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_FORBID, params=None)


def allow_changes(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_ALLOW)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_ALLOW)


def create_roles(apps, schema_editor):
    from portal.roles import sync_roles

    # Permissions are normally created after migrate; the roles need them now.
    for label in ("auth", "contenttypes", "portal"):
        create_permissions(global_apps.get_app_config(label), verbosity=0, apps=apps)
    sync_roles(
        apps.get_model("auth", "Group"),
        apps.get_model("auth", "Permission"),
        apps.get_model("contenttypes", "ContentType"),
    )


def remove_roles(apps, schema_editor):
    from portal.roles import Role

    apps.get_model("auth", "Group").objects.filter(name__in=[r.value for r in Role]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_roles, remove_roles),
        migrations.RunPython(forbid_changes, allow_changes),
    ]
