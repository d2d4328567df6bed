"""audit_db_setup on the real PostgreSQL: afterwards the application role, connected as
itself, can append to the audit log and do nothing else to it.

Roles are cluster-wide, so each test makes its own and removes them afterwards.
"""

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.models import AuditEvent
from tests.stack import BASE_DIR

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = "k1:" + "1" * 40


@pytest.fixture
def roles(settings, tmp_path):
    settings.AUDIT_HMAC_KEYS = KEYS
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"
    suffix = uuid.uuid4().hex[:8]
    app, owner = f"audit_app_{suffix}", f"audit_owner_{suffix}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{app}" LOGIN')
    yield app, owner
    with connection.cursor() as cursor:
        cursor.execute("DROP EVENT TRIGGER IF EXISTS portal_auditevent_no_drop")
        cursor.execute("DROP FUNCTION IF EXISTS portal_auditevent_no_drop()")
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [owner])
        if cursor.fetchone():
            cursor.execute(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER')
            cursor.execute(f'DROP OWNED BY "{owner}"')
            cursor.execute(f'DROP ROLE "{owner}"')
        cursor.execute(f'DROP OWNED BY "{app}"')
        cursor.execute(f'DROP ROLE "{app}"')


def _connect_as(role: str) -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        dbname=db["NAME"],
        user=role,
        autocommit=True,
    )


def _record_as(role: str) -> subprocess.CompletedProcess:
    """portal.audit.record in a process whose DATABASE_URL is the application role's."""
    db = connection.settings_dict
    url = f"postgres://{role}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    code = (
        "import django; django.setup()\n"
        "from portal.audit import Actor, record\n"
        "from portal.choices import AuditEventType\n"
        "e = record(AuditEventType.HOST_ADDED, actor=Actor.system('as-app-role'), "
        "details={'via': 'app role'})\n"
        "print(e.pk, e.key_id)\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "AUDIT_HMAC_KEYS": KEYS,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONPATH": str(BASE_DIR),
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=BASE_DIR, capture_output=True, text=True
    )


def test_after_setup_the_app_role_can_append_and_nothing_else(roles, capsys):
    app, owner = roles
    record(AuditEventType.HOST_ADDED, actor=Actor.system("before"), details={"n": 1})
    with pytest.raises(CommandError, match="not protected"):
        call_command("audit_db_setup", app_role=app, check=True)

    call_command("audit_db_setup", app_role=app, owner_role=owner, apply=True)
    assert f"owned by {owner}; {app} may only SELECT and INSERT" in capsys.readouterr().out
    call_command("audit_db_setup", app_role=app, check=True)

    refused = {
        "ALTER TABLE portal_auditevent DISABLE TRIGGER portal_auditevent_append_only": "owner",
        "ALTER TABLE portal_auditevent DISABLE TRIGGER USER": "owner",
        "TRUNCATE portal_auditevent": "permission denied",
        "UPDATE portal_auditevent SET actor = 'mallory'": "permission denied",
        "DELETE FROM portal_auditevent": "permission denied",
        "DROP TABLE portal_auditevent": "owner",
        "ALTER TABLE portal_auditevent OWNER TO CURRENT_USER": "owner",
        "CREATE OR REPLACE FUNCTION portal_auditevent_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$": "owner|permission denied for schema",
        "DROP FUNCTION portal_auditevent_no_truncate() CASCADE": "owner",
    }
    with _connect_as(app) as db:
        assert db.execute("SELECT current_user").fetchone() == (app,)
        for statement, why in refused.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=why):
                db.execute(statement)
                pytest.fail(f"the app role could run: {statement}")
        assert db.execute("SELECT count(*) FROM portal_auditevent").fetchone()[0] >= 1

    done = _record_as(app)
    assert done.returncode == 0, done.stderr
    event_id, key_id = done.stdout.split()
    event = AuditEvent.objects.get(pk=int(event_id))
    assert (event.actor, key_id) == ("system:as-app-role", "k1")
    call_command("audit_verify", no_anchor=True)


def test_the_event_trigger_refuses_to_drop_the_audit_table_even_for_a_superuser(roles):
    app, owner = roles
    call_command("audit_db_setup", app_role=app, owner_role=owner, apply=True)
    with pytest.raises(DatabaseError, match="the audit log cannot be dropped"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DROP TABLE portal_auditevent")
    assert "portal_auditevent" in connection.introspection.table_names()


def test_without_flags_it_prints_the_sql_and_changes_nothing(roles, capsys):
    app, owner = roles
    call_command("audit_db_setup", app_role=app, owner_role=owner)
    out = capsys.readouterr().out
    assert f'ALTER TABLE portal_auditevent OWNER TO "{owner}";' in out
    assert f'GRANT SELECT, INSERT ON TABLE portal_auditevent TO "{app}";' in out
    assert "CREATE EVENT TRIGGER portal_auditevent_no_drop ON sql_drop" in out
    with connection.cursor() as cursor:
        cursor.execute("SELECT relowner::regrole::text FROM pg_class WHERE relname = %s", [
            "portal_auditevent"
        ])  # fmt: skip
        assert cursor.fetchone()[0] != owner


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"app_role": 'x"; DROP TABLE y; --'}, "is not a plain role name"),
        ({"app_role": "same", "owner_role": "same"}, "must be different roles"),
        ({"app_role": "no_such_role_here", "apply": True}, "does not exist"),
    ],
)
def test_bad_arguments_are_clear_errors_that_change_nothing(roles, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("audit_db_setup", **options)
