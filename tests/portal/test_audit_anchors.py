"""Anchors: the chain head written outside the database, so a shorter chain is caught.

A deleted tail or a truncated table leaves a chain that is intact by itself; only
something kept elsewhere (the anchor file, a scraper's /metrics history) can
tell. The periodic job runs through a real RQ worker.
"""

import json
import time
from datetime import timedelta

import django_rq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker
from rq.registry import FailedJobRegistry

from portal import audit
from portal.audit import Actor, anchors, record, scan_chain, write_anchor
from portal.choices import AuditEventType
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys_and_anchors(settings, tmp_path):
    settings.AUDIT_HMAC_KEYS = "k1:" + "1" * 40
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"


def _events(n: int) -> list[AuditEvent]:
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for i in range(n):
        record(AuditEventType.HOST_ADDED, actor=Actor.system("t"), details={"i": i})
    return list(AuditEvent.objects.filter(id__gt=before).order_by("id"))


def _tamper(sql: str, params=None) -> None:
    """What a superuser (or the table owner) can do: triggers off, change, triggers on."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE portal_auditevent ENABLE TRIGGER USER")


def _verify_fails(**options) -> str:
    with pytest.raises(CommandError) as caught:
        call_command("audit_verify", no_anchor=True, **options)
    return str(caught.value)


def _lines() -> list[dict]:
    path = audit.anchor_file()
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_audit_verify_appends_an_hmaced_anchor_of_the_verified_head(capsys):
    events = _events(3)
    call_command("audit_verify")
    assert "anchored at event #" in capsys.readouterr().out
    (line,) = _lines()
    assert line["id"] == events[-1].pk and line["hash"] == events[-1].hash
    assert line["count"] == AuditEvent.objects.count() and line["key_id"] == "k1"
    assert set(line) == {"v", "id", "hash", "count", "time", "key_id", "prev", "mac"}
    # Unchanged head, young anchor: no new line. A new event: a new line chained to the first.
    call_command("audit_verify")
    assert len(_lines()) == 1
    _events(1)
    call_command("audit_verify")
    first, second = _lines()
    assert second["prev"] == first["mac"] and second["count"] == first["count"] + 1


def test_a_tail_deleted_after_an_anchor_is_caught_and_names_the_anchor():
    events = _events(5)
    anchor = write_anchor()
    _tamper("DELETE FROM portal_auditevent WHERE id >= %s", [events[3].pk])
    assert scan_chain(anchors=audit.AnchorFile(audit.anchor_file())).intact  # chain alone: fine
    message = _verify_fails()
    assert message.startswith(f"audit anchor {audit.anchor_file()}:1 no longer matches: ")
    assert f"it names event #{anchor.event_id}, {anchor.count} events" in message
    assert f"the log now ends at event #{events[2].pk}" in message


def test_a_tail_deleted_then_written_over_by_new_events_is_caught():
    """After the deletion the portal keeps auditing: the new rows are valid, the anchored
    event is gone."""
    events = _events(4)
    write_anchor()
    _tamper("DELETE FROM portal_auditevent WHERE id >= %s", [events[2].pk])
    _events(3)
    message = _verify_fails()
    assert f"it names event #{events[-1].pk}" in message
    assert "that event is gone (deleted)" in message


def test_a_truncate_by_a_superuser_is_caught_through_the_anchors():
    _events(2)
    write_anchor()
    _tamper("TRUNCATE portal_auditevent")
    assert AuditEvent.objects.count() == 0
    assert "the audit table is empty" in _verify_fails()
    assert "the audit table is empty" in _verify_fails(from_anchor=True)


def test_an_anchored_row_rewritten_with_the_key_holder_absent_is_caught():
    events = _events(3)
    write_anchor()
    _tamper("UPDATE portal_auditevent SET hash = %s WHERE id = %s", ["e" * 64, events[-1].pk])
    message = _verify_fails()
    assert message.startswith(f"audit chain broken at event #{events[-1].pk}: content does")


def test_events_removed_before_an_anchor_change_its_count():
    events = _events(4)
    write_anchor()
    # Delete one row and re-link its successor, as if the row had never been there: the
    # link is repaired, but the anchor's count (and the successor's MAC) no longer hold.
    _tamper("DELETE FROM portal_auditevent WHERE id = %s", [events[1].pk])
    _tamper(
        "UPDATE portal_auditevent SET prev_hash = %s WHERE id = %s",
        [events[0].hash, events[2].pk],
    )
    report = scan_chain()
    reasons = [p.reason for p in report.problems]
    assert any("does not match its MAC" in r for r in reasons)
    assert any("there are now" in r and "events up to it" in r for r in reasons)


def test_an_edited_anchor_line_is_caught(tmp_path):
    _events(2)
    write_anchor()
    path = audit.anchor_file()
    line = json.loads(path.read_text())
    line["count"] += 5  # make the log look longer than it was
    path.write_text(json.dumps(line) + "\n")
    message = _verify_fails()
    assert message == (
        f"audit anchor {path}:1 no longer matches: MAC does not match (line edited, or "
        "written without the key)"
    )


def test_from_anchor_checks_the_anchor_and_only_what_follows(capsys):
    events = _events(4)
    write_anchor()
    later = _events(2)
    call_command("audit_verify", from_anchor=True, no_anchor=True)
    out = capsys.readouterr().out
    assert f"verified from the anchor at event #{events[-1].pk}" in out
    assert f"({AuditEvent.objects.count()} events" in out
    # A row before the anchor edited: trusted by --from-anchor, caught by the full check.
    _tamper("UPDATE portal_auditevent SET actor = 'mallory' WHERE id = %s", [events[0].pk])
    call_command("audit_verify", from_anchor=True, no_anchor=True)
    assert f"#{events[0].pk}: content does not match" in _verify_fails()
    # A row after it: caught by both.
    _tamper("UPDATE portal_auditevent SET actor = 'mallory' WHERE id = %s", [later[0].pk])
    assert f"#{later[0].pk}: content does not match" in _verify_fails(from_anchor=True)


def test_the_periodic_job_anchors_on_a_real_worker_and_refuses_a_broken_chain():
    events = _events(3)
    queue = django_rq.get_queue("control", commit_mode="auto")  # now, not on a commit
    job = queue.enqueue(audit.periodic_anchor)
    django_rq.get_worker("control", worker_class=SimpleWorker).work(burst=True)
    job.refresh()
    assert job.is_finished, job.latest_result()
    assert job.return_value() == {
        "anchored": events[-1].pk,
        "count": AuditEvent.objects.count(),
        "time": _lines()[-1]["time"],
    }
    _tamper("DELETE FROM portal_auditevent WHERE id = %s", [events[-1].pk])
    failing = queue.enqueue(audit.periodic_anchor)
    django_rq.get_worker("control", worker_class=SimpleWorker).work(burst=True)
    failing.refresh()
    assert failing.is_failed
    assert failing.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert "AuditChainBroken" in failing.latest_result().exc_string
    assert len(_lines()) == 1  # nothing anchored over the hole


def test_a_quiet_log_still_gets_an_hourly_anchor(monkeypatch):
    _events(1)
    write_anchor()
    assert len(_lines()) == 1
    write_anchor()
    assert len(_lines()) == 1
    monkeypatch.setattr(anchors, "ANCHOR_HEARTBEAT", timedelta(0))
    write_anchor()
    first, second = _lines()
    assert (second["id"], second["count"]) == (first["id"], first["count"])


def test_an_unwritable_anchor_dir_is_a_clear_error(settings):
    _events(1)
    settings.AUDIT_ANCHOR_DIR = "/proc/self"  # a directory where no file can be created (root)
    with pytest.raises(CommandError, match="the chain verifies, but no anchor could be written"):
        call_command("audit_verify")
    call_command("audit_verify", no_anchor=True)


def _audit_gauges(client) -> dict[str, float]:
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("portal_audit_")
    }


def test_metrics_expose_the_chain_head_and_the_last_anchor(client):
    events = _events(2)
    count = AuditEvent.objects.count()
    assert _audit_gauges(client) == {
        "portal_audit_head_id": events[-1].pk,
        "portal_audit_events": count,
        "portal_audit_anchor_head_id": 0,
        "portal_audit_anchor_events": 0,
        "portal_audit_anchor_timestamp_seconds": 0,
    }
    anchor = write_anchor()
    later = _events(3)
    gauges = _audit_gauges(client)
    assert gauges["portal_audit_head_id"] == later[-1].pk
    assert gauges["portal_audit_events"] == count + 3
    assert (gauges["portal_audit_anchor_head_id"], gauges["portal_audit_anchor_events"]) == (
        anchor.event_id,
        count,
    )
    assert abs(gauges["portal_audit_anchor_timestamp_seconds"] - time.time()) < 60
    # A deleted tail shows as a head below the anchor, with the real count.
    _tamper("DELETE FROM portal_auditevent WHERE id >= %s", [events[-1].pk])
    gauges = _audit_gauges(client)
    assert gauges["portal_audit_head_id"] == events[0].pk
    assert gauges["portal_audit_events"] == count - 1
