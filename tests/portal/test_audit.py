import json
import subprocess

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, InternalError, connection, transaction
from django.db.utils import ProgrammingError

from portal.audit import GENESIS_HASH, Actor, record, verify_chain
from portal.choices import AuditEventType
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_anchor_dir(settings, tmp_path):
    """audit_verify appends anchors; each test gets its own, as each has its own rows."""
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"


def _three_events(user):
    """Three events after whatever creating the personas recorded."""
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    record(AuditEventType.HOST_ADDED, actor=user, subject=("pra.host", 1), details={"n": 1})
    record(AuditEventType.PRA_PROPOSED, actor=Actor.system("rules"), details={"é": "ü"})
    record(AuditEventType.PRA_APPROVED, actor=user, subject=user, details={"when": 1.5})
    return list(AuditEvent.objects.filter(id__gt=before).order_by("id"))


def test_events_form_a_hash_chain(operator):
    first = AuditEvent.objects.order_by("id").first()
    assert first.prev_hash == GENESIS_HASH
    events = _three_events(operator)
    assert events[0].prev_hash == AuditEvent.objects.get(id=events[0].id - 1).hash
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert events[0].actor == operator.username and events[0].actor_user_id == operator.pk
    assert events[1].actor == "system:rules" and events[1].actor_user_id is None
    assert list(verify_chain()) == []


def test_an_event_rolls_back_with_its_transaction(operator):
    count = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        record(AuditEventType.HOST_ADDED, actor=operator)
        raise RuntimeError("caller failed")
    assert AuditEvent.objects.count() == count


def test_update_and_delete_are_refused_by_the_database(operator):
    (event, *_) = _three_events(operator)
    if connection.vendor != "postgresql":
        pytest.fail("the audit tests run on PostgreSQL (make test)")
    with pytest.raises((InternalError, ProgrammingError, IntegrityError)), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(actor="mallory")
    with pytest.raises((InternalError, ProgrammingError, IntegrityError)), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).actor == operator.username


def _tamper(sql: str, params: list) -> None:
    """Bypass the append-only trigger the way a database superuser could."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE portal_auditevent DISABLE TRIGGER portal_auditevent_append_only"
        )
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE portal_auditevent ENABLE TRIGGER portal_auditevent_append_only")


def test_audit_verify_names_the_first_modified_row(operator):
    events = _three_events(operator)
    call_command("audit_verify")  # intact: no error
    _tamper(
        "UPDATE portal_auditevent SET details = %s WHERE id = %s",
        [json.dumps({"n": 2}), events[0].pk],
    )
    with pytest.raises(CommandError, match=f"#{events[0].pk}: content does not match"):
        call_command("audit_verify")


def test_audit_verify_detects_a_removed_row(operator):
    events = _three_events(operator)
    _tamper("DELETE FROM portal_auditevent WHERE id = %s", [events[1].pk])
    with pytest.raises(CommandError, match=f"#{events[2].pk}: link to the previous row"):
        call_command("audit_verify")


def test_audit_export_writes_json_lines_that_jq_reads(operator, capsys):
    _three_events(operator)
    call_command("audit_export")
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(line["key_id"] and len(line["hash"]) == 64 for line in lines)
    assert [e["event_type"] for e in lines] == [
        "USER_CREATED",
        "HOST_ADDED",
        "PRA_PROPOSED",
        "PRA_APPROVED",
    ]
    jq = subprocess.run(
        ["jq", "-r", 'select(.event_type == "PRA_PROPOSED") | .details["é"]'],
        input=out,
        capture_output=True,
        text=True,
        check=True,
    )
    assert jq.stdout.strip() == "ü"


def test_audit_export_since_filters_and_rejects_garbage(operator, capsys):
    events = _three_events(operator)
    call_command("audit_export", since=events[2].created.isoformat())
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in out] == [events[2].pk]
    with pytest.raises(CommandError, match="not an ISO 8601"):
        call_command("audit_export", since="yesterday")


def test_admin_cannot_change_or_delete_events(client, admin_user):
    (event, *_) = _three_events(admin_user)
    client.force_login(admin_user)
    page = client.get(f"/admin/portal/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    response = client.post(f"/admin/portal/auditevent/{event.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
