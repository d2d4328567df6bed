"""Set PostgreSQL up so the application's role cannot rewrite, truncate or drop the audit log.

A separate role owns ``portal_auditevent`` and its trigger functions; the
application role keeps only SELECT and INSERT. Not owning the table, it can no
longer ``ALTER TABLE ... DISABLE TRIGGER``, TRUNCATE, UPDATE or DELETE, and an
event trigger refuses DROP of the table and its triggers (which a schema owner
could otherwise do). Run with a superuser's DATABASE_URL; docs/security.md.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder

TABLE = "portal_auditevent"
FUNCTIONS = ("portal_auditevent_append_only()", "portal_auditevent_no_truncate()")
EVENT_TRIGGER = "portal_auditevent_no_drop"
NEEDS_MIGRATION = ("portal", "0009_audit_keyed_chain")
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
FORBIDDEN = ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")

NO_DROP_FUNCTION = """
CREATE OR REPLACE FUNCTION portal_auditevent_no_drop() RETURNS event_trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dropped record;
BEGIN
    FOR dropped IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF dropped.object_identity LIKE '%portal_auditevent%' THEN
            RAISE EXCEPTION 'the audit log cannot be dropped (% of %)',
                tg_tag, dropped.object_identity USING ERRCODE = 'insufficient_privilege';
        END IF;
    END LOOP;
END;
$$"""


def setup_sql(app_role: str, owner_role: str) -> list[str]:
    app, owner = f'"{app_role}"', f'"{owner_role}"'
    return [
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = "
        f"'{owner_role}') THEN CREATE ROLE {owner} NOLOGIN; END IF; END $$",
        # The identity sequence follows its table to the new owner.
        f"ALTER TABLE {TABLE} OWNER TO {owner}",
        *(f"ALTER FUNCTION {function} OWNER TO {owner}" for function in FUNCTIONS),
        f"REVOKE ALL ON TABLE {TABLE} FROM PUBLIC",
        f"REVOKE ALL ON TABLE {TABLE} FROM {app}",
        f"GRANT SELECT, INSERT ON TABLE {TABLE} TO {app}",
        f"GRANT USAGE ON SEQUENCE {TABLE}_id_seq TO {app}",
        # Membership would hand the owner's rights back to the application role.
        f"REVOKE {owner} FROM {app}",
        NO_DROP_FUNCTION,
        f"DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER}",
        f"CREATE EVENT TRIGGER {EVENT_TRIGGER} ON sql_drop EXECUTE FUNCTION {EVENT_TRIGGER}()",
    ]


def check_roles(app_role: str) -> list[str]:
    """What is still wrong, as sentences (empty: the application role is boxed in)."""
    problems = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s", [app_role])
        row = cursor.fetchone()
        if row is None:
            return [f"role {app_role!r} does not exist"]
        if row[0]:
            problems.append(
                f"{app_role} is a superuser: no grant or trigger can stop it; "
                "connect the portal as an ordinary role"
            )
        cursor.execute(
            "SELECT c.relowner::regrole::text, n.nspowner::regrole::text "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s::regclass",
            [TABLE],
        )
        owner, schema_owner = cursor.fetchone()
        owner = owner.strip('"')
        if owner == app_role:
            problems.append(f"{app_role} owns {TABLE} (it can disable the triggers)")
        else:
            cursor.execute("SELECT pg_catalog.pg_has_role(%s, %s, 'MEMBER')", [app_role, owner])
            if cursor.fetchone()[0]:
                problems.append(f"{app_role} is a member of {owner}, the owner of {TABLE}")
        for privilege in FORBIDDEN:
            cursor.execute(
                "SELECT pg_catalog.has_table_privilege(%s, %s, %s)", [app_role, TABLE, privilege]
            )
            if cursor.fetchone()[0]:
                problems.append(f"{app_role} has {privilege} on {TABLE}")
        for privilege in ("SELECT", "INSERT"):
            cursor.execute(
                "SELECT pg_catalog.has_table_privilege(%s, %s, %s)", [app_role, TABLE, privilege]
            )
            if not cursor.fetchone()[0]:
                problems.append(f"{app_role} lacks {privilege} on {TABLE}: the portal cannot audit")
        for function in FUNCTIONS:
            cursor.execute(
                "SELECT pg_catalog.pg_has_role(%s, p.proowner, 'MEMBER') "
                "FROM pg_catalog.pg_proc p WHERE p.oid = %s::regprocedure",
                [app_role, function],
            )
            if cursor.fetchone()[0]:
                problems.append(f"{app_role} owns {function} (it can replace the trigger's body)")
        cursor.execute(
            "SELECT evtenabled FROM pg_catalog.pg_event_trigger WHERE evtname = %s",
            [EVENT_TRIGGER],
        )
        row = cursor.fetchone()
        if row is None or row[0] == "D":
            problems.append(
                f"event trigger {EVENT_TRIGGER} is missing or disabled"
                + (f" ({schema_owner} owns the schema and could drop the table)" if schema_owner
                   else "")
            )  # fmt: skip
    return problems


class Command(BaseCommand):
    help = (
        "Print (default), --apply or --check the PostgreSQL setup in which a separate role "
        "owns the audit table and the application role may only SELECT and INSERT."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--app-role",
            help="The role the portal connects as (default: DATABASE_URL's user).",
        )
        parser.add_argument(
            "--owner-role",
            default="portal_audit_owner",
            help="The role that will own the audit table (created NOLOGIN if missing).",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--apply", action="store_true", help="Run the SQL now (connect as a superuser)."
        )
        mode.add_argument(
            "--check", action="store_true", help="Report what is still open; exit 1 if anything."
        )

    def handle(self, *args, app_role=None, owner_role="", apply=False, check=False, **options):
        if connection.vendor != "postgresql":
            raise CommandError(
                "audit_db_setup is for PostgreSQL (SQLite has no roles; it is for local demos)."
            )
        app_role = app_role or settings.DATABASES["default"].get("USER") or ""
        for label, role in (("--app-role", app_role), ("--owner-role", owner_role)):
            if not _ROLE.fullmatch(role or ""):
                raise CommandError(
                    f"{label} {role!r} is not a plain role name (letters, digits, _; "
                    "max 63, not starting with a digit)."
                )
        if app_role == owner_role:
            raise CommandError("--app-role and --owner-role must be different roles.")
        statements = setup_sql(app_role, owner_role)
        if not apply and not check:
            self.stdout.write(
                f"-- Run as a superuser. {app_role} keeps SELECT and INSERT on {TABLE}; "
                f"{owner_role} owns it.\n-- Afterwards, run migrations that change {TABLE} "
                "as a superuser (docs/security.md).\n"
            )
            self.stdout.write(";\n".join(statements) + ";\n")
            return
        if apply:
            applied = MigrationRecorder(connection).applied_migrations()
            if NEEDS_MIGRATION not in applied:
                raise CommandError(f"run `manage.py migrate` first ({'.'.join(NEEDS_MIGRATION)}).")
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [app_role])
                if cursor.fetchone() is None:
                    raise CommandError(f"role {app_role!r} does not exist.")
                cursor.execute("SELECT current_setting('is_superuser') = 'on'")
                if not cursor.fetchone()[0]:
                    raise CommandError(
                        "--apply needs a superuser connection (it creates a role and an event "
                        "trigger); set DATABASE_URL to a superuser for this command."
                    )
            with transaction.atomic(), connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        problems = check_roles(app_role)
        if problems:
            raise CommandError(
                f"the audit table is not protected from {app_role}: " + "; ".join(problems) + "."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"{TABLE} is owned by {owner_role if apply else 'another role'}; {app_role} may "
                "only SELECT and INSERT (no UPDATE, DELETE, TRUNCATE, DISABLE TRIGGER or DROP)."
            )
        )
