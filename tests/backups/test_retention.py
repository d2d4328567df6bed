"""Retention: N days plus weekly/monthly keeps; never the newest verified backup."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from backups import actions, retention
from backups.choices import RunStatus, SourceKind, Trigger, Verification
from backups.models import BackupRun
from backups.storage import get_storage
from tests.backups.helpers import make_source, trail


def test_property_the_newest_verified_backup_is_never_deleted():
    rng = random.Random(20260204)
    now = datetime(2026, 2, 4, 19, 31, tzinfo=UTC)
    for _ in range(500):
        candidates = [
            retention.Candidate(
                id=i,
                created=now - timedelta(hours=rng.uniform(0, 24 * 400)),
                verified=rng.random() < 0.6,
            )
            for i in range(rng.randint(0, 40))
        ]
        days = rng.randint(1, 30)
        keep, delete = retention.plan(
            candidates, now=now, days=days, weekly=rng.randint(0, 8), monthly=rng.randint(0, 12)
        )
        assert keep | delete == {c.id for c in candidates} and not keep & delete
        verified = [c for c in candidates if c.verified]
        if verified:
            assert max(verified, key=lambda c: (c.created, c.id)).id in keep
        elif candidates:
            assert max(candidates, key=lambda c: (c.created, c.id)).id in keep
        assert all(c.id in keep for c in candidates if c.created >= now - timedelta(days=days))


def test_weekly_and_monthly_keeps():
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    daily = [retention.Candidate(i, now - timedelta(days=i), True) for i in range(90)]
    keep, _ = retention.plan(daily, now=now, days=7, weekly=4, monthly=3)
    assert {0, 1, 2, 3, 4, 5, 6, 7} <= keep  # the last 7 days (and the 7th day itself)
    weeks = {c.created.isocalendar()[:2] for c in daily if c.id in keep}
    assert len(weeks) >= 4
    months = {(c.created.year, c.created.month) for c in daily if c.id in keep}
    assert months == {(2026, 1), (2026, 2), (2026, 3)}
    assert len(keep) < 20


def _stored_run(source, created, verified=True) -> BackupRun:
    run = BackupRun.objects.create(
        source=source,
        trigger=Trigger.SCHEDULE,
        status=RunStatus.SUCCEEDED,
        status_changed_at=created,
        created=created,
        verification=Verification.VERIFIED if verified else Verification.FAILED,
    )
    staging = get_storage().begin(run.storage_key)
    with staging.create("resources.yaml.zst") as fh:
        fh.write(b"not important here")
    staging.commit({"run": run.storage_key})
    BackupRun.objects.filter(pk=run.pk).update(artifact_path=run.storage_key)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_dry_run_lists_then_deletion_is_audited_and_keeps_the_last_verified(capsys):
    source = make_source("k8s", SourceKind.KUBERNETES, retention_days=7)
    now = timezone.now()
    old_verified = _stored_run(source, now - timedelta(days=30))
    older = _stored_run(source, now - timedelta(days=40))
    recent_unverified = _stored_run(source, now - timedelta(days=1), verified=False)
    storage = get_storage()
    assert len(storage.list_runs()) == 3

    call_command("backup_retention", "--dry-run")
    out = capsys.readouterr().out
    assert "would delete 1" in out and older.artifact_path in out
    assert len(storage.list_runs()) == 3 and not BackupRun.objects.filter(deleted_at__isnull=False)

    result = actions.apply_retention(source)
    assert result.delete == [older.pk]
    assert set(result.keep) == {old_verified.pk, recent_unverified.pk}
    older.refresh_from_db()
    assert older.deleted_at is not None
    assert trail(older)[-1] == "BACKUP_DELETED"
    # The transaction of a test never commits; files go on commit, so call what it runs.
    storage.delete_run(older.artifact_path)
    assert sorted(storage.list_runs()) == sorted(
        [old_verified.artifact_path, recent_unverified.artifact_path]
    )
