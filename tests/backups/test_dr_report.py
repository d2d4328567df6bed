"""The disaster-recovery report (issue 14 §4): `manage.py dr_report` and its admin page.

Readiness is built from real work: a real PostgreSQL backup and restore drill, a real
Terraform state backup and restore against moto in server mode (standing in for MinIO),
through a real RQ worker. Time is moved by ageing rows (a drill's finish), not by sleeping.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from backups import actions, dr, terraform
from backups.choices import RestoreStatus
from backups.models import BackupDrill, BackupRun, BackupSource
from portal.models import AuditEvent
from tests.backups.helpers import backup_now, pg_source, run_jobs
from tests.backups.restoring import approve_and_run, pg_target
from tests.backups.test_terraform import KEY, bucket, moto, tf_source  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def report(capsys, *args) -> tuple[int, str]:
    try:
        call_command("dr_report", *args)
    except CommandError as exc:
        return exc.returncode, capsys.readouterr().out + str(exc)
    return 0, capsys.readouterr().out


@pytest.fixture
def ready(pg_cluster, pg_database, admin_user, operator, approver, approver2, capture,
          moto, bucket):  # noqa: F811  # fmt: skip
    """PostgreSQL with a good backup and a good drill; a Terraform state with a good backup
    and a successful restore of an older version."""
    target = pg_target(admin_user, pg_cluster, name="drill-pg", drills=True)
    source = pg_source("shop", pg_cluster.dsn, pg_database("dr"), drill_target=target)
    assert backup_now(source, operator, capture).usable
    with capture(execute=True):
        actions.request_drill(source, by=operator)
    run_jobs()
    assert BackupDrill.objects.get().good
    client, name, versions = bucket
    tf = tf_source(moto.endpoint, name)
    assert backup_now(tf, operator, capture).usable
    with capture(execute=True):
        req, _, _ = terraform.restore_version(
            tf, versions[1], by=operator, allow_older_serial=True,
            confirmation=f"s3://{name}/{KEY}",
        )  # fmt: skip
    req = approve_and_run(capture, req, approver, approver2,
                          confirmation=f"s3://{name}/{KEY}")  # fmt: skip
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    return source, tf, req


def test_nothing_configured_is_not_ready_and_exits_1(capsys):
    code, out = report(capsys)
    assert code == 1
    for label in ("PostgreSQL", "Redis", "Kubernetes", "Terraform state", "VMs/LXCs"):
        assert label in out
    assert out.count("NOT READY") >= 5 and "no enabled backup source" in out
    assert "no Proxmox node registered" in out
    assert "MinIO rebuild" in out and "target 10 min" in out


def test_ready_components_exit_0_then_an_old_drill_exits_1(ready, capsys):
    source, tf, req = ready
    code, out = report(capsys, "--components", "postgres,terraform")
    assert code == 0, out
    shop = next(line for line in out.splitlines() if line.strip().startswith("shop "))
    assert "drill #" in shop and "/ 900s" in shop and shop.rstrip().endswith("ok")
    tf_line = next(line for line in out.splitlines() if line.strip().startswith("tf-prod "))
    assert f"restore #{req.pk}"[:5] in tf_line and "/ 120s" in tf_line
    data = json.loads(call_command_json("--components", "postgres,terraform"))
    (row,) = data["components"][1]["rows"]
    assert row["restore_what"] == f"restore #{req.pk}"
    assert 0 < row["restore_seconds"] <= 120 and row["target_seconds"] == 120
    # Ten days later (the drill and the restore age), neither counts any more.
    old = timezone.now() - timedelta(days=10)
    BackupDrill.objects.update(finished_at=old)
    code, out = report(capsys, "--components", "postgres")
    assert code == 1 and "last successful restore older than 8 days" in out
    assert "not ready: PostgreSQL" in out


def test_over_target_and_stale_backups_are_not_ready(ready, capsys):
    source, tf, _ = ready
    BackupSource.objects.filter(pk=source.pk).update(rto_target_seconds=0.001)
    code, out = report(capsys, "--components", "postgres")
    assert code == 1 and "over the 0.001 s target" in out
    BackupRun.objects.filter(source=tf).update(created=timezone.now() - timedelta(hours=30))
    code, out = report(capsys, "--components", "terraform")
    assert code == 1 and "last good backup older than 26 h" in out


def test_a_backup_slower_to_verify_than_its_target_is_not_ready(ready, capsys, settings):
    """The seed's "verification under 5 min": the measured time of the last good
    backup's verification, against BACKUP_VERIFY_TARGET."""
    source, _, _ = ready
    last = BackupRun.objects.of_source(source).last_good()
    assert last is not None and last.verify_seconds is not None
    code, out = report(capsys, "--components", "postgres")
    shop = next(line for line in out.splitlines() if line.strip().startswith("shop "))
    assert code == 0 and f"{last.verify_seconds:.1f}s / 300s" in shop, out
    settings.BACKUP_VERIFY_TARGET = 0
    code, out = report(capsys, "--components", "postgres")
    assert code == 1 and "over the 0 s target" in out and "verification took" in out


def test_an_unknown_component_is_refused(capsys):
    with pytest.raises(CommandError, match="unknown component vmware"):
        call_command("dr_report", "--components", "postgres,vmware")


def test_the_admin_page_shows_the_same_report(ready, viewer):
    client = Client()
    client.force_login(viewer)
    page = client.get("/admin/backups/backupsource/dr-report/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-component="postgres" data-ok="1"' in html
    assert 'data-component="proxmox" data-ok="0"' in html
    assert 'data-name="shop"' in html and 'data-name="tf-prod"' in html
    assert client.post("/admin/backups/backupsource/dr-report/").status_code == 405
    built = dr.build(components=("postgres", "terraform"))
    assert built.ok and [c.key for c in built.components] == ["postgres", "terraform"]


def call_command_json(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("dr_report", "--json", *args, stdout=out)
    return out.getvalue()


def test_rehearsed_rebuilds_are_recorded_and_judged(capsys, admin_user):
    """MinIO and monitoring rebuilds are not run by the portal: a person times them and
    records the time; the report judges the newest record against the seed's target."""
    code, out = report(capsys, "--components", "minio_rebuild,monitoring_rebuild")
    assert code == 1 and out.count("never rehearsed") == 2, out
    call_command("dr_report", "--record", "minio_rebuild", "--took", "480",
                 "--by", admin_user.username, "--note", "rebuilt on the spare node")  # fmt: skip
    assert "MinIO rebuild took 480 s (within the 600 s target)" in capsys.readouterr().out
    call_command("dr_report", "--record", "monitoring_rebuild", "--took", "1000")
    assert "OVER the 900 s target" in capsys.readouterr().out
    # What is said is what is stored and judged: 600.04 s is 600.0 s, within 600 s.
    call_command("dr_report", "--record", "minio_rebuild", "--took", "600.04",
                 "--at", (timezone.now() - timedelta(hours=1)).isoformat())  # fmt: skip
    assert "took 600 s (within the 600 s target)" in capsys.readouterr().out
    code, out = report(capsys, "--components", "minio_rebuild,monitoring_rebuild")
    assert code == 1 and "took 1000.0 s, over the 900 s target" in out
    assert (
        "not ready: Monitoring rebuild" in out and "MinIO rebuild" not in out.split("not ready")[1]
    )
    data = json.loads(call_command_json("--components", "minio_rebuild"))
    (row,) = data["components"][0]["rows"]
    assert row["restore_seconds"] == 480 and row["target_seconds"] == 600
    assert row["restore_what"] == f"exercise by {admin_user.username}" and row["restore_ok"]
    assert row["notes"] == ["rebuilt on the spare node"] and not row["has_backups"]
    call_command("dr_report", "--record", "monitoring_rebuild", "--took", "700")
    code, out = report(capsys, "--components", "minio_rebuild,monitoring_rebuild")
    assert code == 0, out
    later = dr.build(now=timezone.now() + timedelta(days=10), components=("minio_rebuild",))
    assert not later.ok
    assert "older than 8 days" in " ".join(later.components[0].rows[0].problems)
    assert AuditEvent.objects.filter(event_type="DR_EXERCISE_RECORDED").count() == 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nas_rebuild", "--took", "5"], "unknown exercise 'nas_rebuild'"),
        (["minio_rebuild"], "--took needs the time taken"),
        (["minio_rebuild", "--took", "-3"], "--took needs the time taken"),
        (["minio_rebuild", "--took", "nan"], "--took needs the time taken"),
        (["minio_rebuild", "--took", "5_0"], "--took needs the time taken"),
        (["minio_rebuild", "--took", "0.01"], "at least 0.1 s"),
        (["minio_rebuild", "--took", "5", "--at", "2099-01-01T00:00Z"], "in the future"),
        (["minio_rebuild", "--took", "5", "--at", "2020-01-01T00:00Z"], "more than a year old"),
        (["minio_rebuild", "--took", "5", "--at", "2026-11-30T02:00"], "needs a time zone"),
        (["minio_rebuild", "--took", "5", "--at", "yesterday"], "not an ISO time"),
        (["minio_rebuild", "--took", "5", "--by", "ghost"], "no active user 'ghost'"),
        (["minio_rebuild", "--took", "5", "--note", "bad\x00note"], "note"),
    ],
)
def test_a_bad_exercise_record_is_refused_and_writes_nothing(args, says):
    with pytest.raises(CommandError, match=re.escape(says)):
        call_command("dr_report", "--record", *args)
    assert not AuditEvent.objects.filter(event_type="DR_EXERCISE_RECORDED").exists()
