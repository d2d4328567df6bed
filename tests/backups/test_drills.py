"""Restore drills (issue 13 §8): the newest good backup restored into a registered scratch
target, validated (counts, checksums of sampled tables against the backup, key counts),
timed per component against the source's RTO target, cleaned up; a failed drill or one
over its target notifies. Real PostgreSQL, real redis-servers, a real RQ worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups import actions, drills
from backups.choices import DrillStatus, RestoreMode, SourceKind
from backups.models import BackupDrill, BackupRun, BackupSource
from backups.storage import get_storage
from portal.models import Notification, NotificationChannel
from tests.backups.helpers import backup_now, dump_of, make_source, pg_source, run_jobs, trail
from tests.backups.restoring import pg_target, redis_target

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def channel(db):
    return NotificationChannel.objects.create(
        name="ops-hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_FAILED"]
    )


@pytest.fixture
def drilled_pg(pg_cluster, pg_database, admin_user, operator, capture):
    """A PostgreSQL source with a verified backup and a drill target on the same server."""
    target = pg_target(admin_user, pg_cluster, name="drill-pg", drills=True)
    source = pg_source("shop", pg_cluster.dsn, pg_database("drill"), drill_target=target)
    run = backup_now(source, operator, capture)
    assert run.usable, run.verify_detail
    return source, run


def _drill(source, operator, capture) -> BackupDrill:
    with capture(execute=True):
        drill = actions.request_drill(source, by=operator)
    run_jobs()
    drill.refresh_from_db()
    return drill


def _drill_databases(cluster) -> list:
    with cluster.connect("postgres") as conn:
        return conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_drill\\_%'"
        ).fetchall()


def test_a_drill_restores_validates_and_meets_its_target(drilled_pg, pg_cluster, operator, capture):
    source, run = drilled_pg
    drill = _drill(source, operator, capture)

    assert drill.status == DrillStatus.SUCCEEDED, drill.error
    assert drill.run == run and drill.met_target and drill.good
    assert drill.rto_target_seconds == 900  # BACKUP_RTO_POSTGRES
    assert 0 < drill.rto_seconds < 900
    (part,) = drill.report["components"]
    assert part["component"] == dump_of(run).component and part["ok"]
    assert part["rows"] == {"public.customers": 1500, "public.orders": 4000}
    sampled = part["sampled_tables"]
    assert set(sampled) == {"public.orders", "public.customers"}
    assert all(t["ok"] and t["checksum"] == t["checksum_in_backup"] for t in sampled.values())
    assert sampled["public.orders"]["rows_in_backup"] == 4000
    assert part["restore_seconds"] > 0 and part["validate_seconds"] > 0
    assert _drill_databases(pg_cluster) == []  # cleaned up
    assert trail(drill) == [
        "BACKUP_DRILL_REQUESTED", "BACKUP_DRILL_STARTED", "BACKUP_DRILL_SUCCEEDED",
    ]  # fmt: skip
    assert not Notification.objects.filter(kind="BACKUP_FAILED").exists()


def test_a_drill_over_its_target_notifies_and_the_command_exits_non_zero(
    drilled_pg, operator, capsys
):
    source, _ = drilled_pg
    BackupSource.objects.filter(pk=source.pk).update(rto_target_seconds=0.001)
    with pytest.raises(CommandError, match="over its RTO target of 0.001 s"):
        call_command("backup_drill", "shop", "--as", operator.username)
    err = capsys.readouterr().err
    assert "[####################] 1/1 done" in err  # the progress bar
    drill = BackupDrill.objects.get()
    assert drill.status == DrillStatus.SUCCEEDED and drill.met_target is False
    note = Notification.objects.get(kind="BACKUP_FAILED")
    assert "OVER ITS RTO TARGET" in note.title and "0.001 s" in note.title
    assert trail(drill)[-1] == "BACKUP_DRILL_FAILED"


def test_a_drill_whose_target_was_cleared_meanwhile_fails_with_a_reason(
    drilled_pg, operator, capture
):
    """The target is checked when the drill is requested; cleared before the worker runs
    it, the drill fails saying so (it used to end as "AttributeError: 'NoneType' ...")."""
    source, _ = drilled_pg
    with capture(execute=True):
        drill = actions.request_drill(source, by=operator)
    BackupSource.objects.filter(pk=source.pk).update(drill_target=None)
    run_jobs()
    drill.refresh_from_db()

    assert drill.status == DrillStatus.FAILED
    assert drill.error == "source shop has no restore target for drills"
    assert trail(drill)[-1] == "BACKUP_DRILL_FAILED"


def test_the_sample_checksums_tell_a_changed_table_from_the_backup(
    drilled_pg, pg_cluster, operator
):
    """The validator itself: a restored copy with one row changed does not match."""
    from backups.postgres_restore import restore_pg

    source, run = drilled_pg
    artifact = dump_of(run)
    target = drills.pg_drill_target(source, f"{artifact.component[:30]}__drill_check")
    try:
        report = restore_pg(target, get_storage(), artifact, RestoreMode.SCRATCH)
        same = drills.sample_checksums(
            target, target.database, get_storage(), artifact, report["rows"], 2
        )
        assert same["ok"]
        with pg_cluster.connect(target.database) as conn:
            conn.execute("UPDATE orders SET note = 'changed' WHERE id = 7")
        changed = drills.sample_checksums(
            target, target.database, get_storage(), artifact, report["rows"], 2
        )
        assert not changed["ok"] and not changed["tables"]["public.orders"]["ok"]
        assert changed["tables"]["public.customers"]["ok"]
    finally:
        pg_cluster.drop(target.database)


def test_a_redis_drill_fills_the_empty_target_then_empties_it(
    redis_server, admin_user, operator, capture
):
    live, scratch = redis_server(), redis_server()
    for db in (0, 3):
        client = live.client(db)
        for i in range(200):
            client.set(f"k{i}", i)
    target = redis_target(admin_user, scratch, name="drill-redis", drills=True)
    source = make_source("cache", SourceKind.REDIS, dsn=live.url, drill_target=target)
    backup_now(source, operator, capture)
    drill = _drill(source, operator, capture)
    assert drill.status == DrillStatus.SUCCEEDED and drill.met_target, drill.error
    (part,) = drill.report["components"]
    assert part["keys"] == part["keys_expected"] == {"0": 200, "3": 200}
    assert scratch.client().dbsize() == 0 and scratch.client(3).dbsize() == 0

    scratch.client().set("someone", "else")  # the target is no longer empty
    failed = _drill(source, operator, capture)
    assert failed.status == DrillStatus.FAILED and "now holds 1 keys" in failed.error
    assert scratch.client().get("someone") == b"else"
    assert "restore drill of cache FAILED" in Notification.objects.get().title


def test_drills_are_scheduled_once_per_slot(drilled_pg):
    source, _ = drilled_pg
    BackupSource.objects.filter(pk=source.pk).update(drill_schedule="* * * * *")
    later = timezone.now() + timedelta(minutes=2)
    first = actions.schedule_drills(later)
    assert len(first) == 1 and actions.schedule_drills(later) == []
    drill = BackupDrill.objects.get()
    assert drill.scheduled_for is not None and drill.status == DrillStatus.QUEUED


def test_a_source_with_drills_is_fresh_only_after_a_good_drill(drilled_pg, operator, capture):
    source, run = drilled_pg
    BackupSource.objects.filter(pk=source.pk).update(created=timezone.now() - timedelta(days=10))
    assert actions.check_freshness()["stale"] == ["shop"]  # a fresh backup, but no drill
    _drill(source, operator, capture)
    assert actions.check_freshness()["fresh"] == ["shop"]


def test_the_report_shows_backup_verification_and_drill_per_component(
    drilled_pg, operator, capture, capsys
):
    source, run = drilled_pg
    _drill(source, operator, capture)
    call_command("backup_report")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("shop "))
    assert "VERIFIED full" in line and "/ 900s ok" in line
    assert f"  {dump_of(run).component}" in out and "restored" in out and "globals" in out


def test_a_drill_target_must_be_registered_for_drills(pg_cluster, pg_database, admin_user):
    plain = pg_target(admin_user, pg_cluster, name="not-for-drills")
    source = BackupSource(
        name="x", kind=SourceKind.POSTGRES, dsn=pg_cluster.dsn, drill_target=plain
    )
    with pytest.raises(ValidationError, match="not registered for drills"):
        source.full_clean()
    assert BackupRun.objects.count() == 0
