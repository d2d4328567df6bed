"""The one definition of "the last good backup" and of "fresh" (issue 16 §6):
``BackupRun.objects.usable()/last_good()/fresh()``, ``size_reference()`` and
``BackupArtifact.objects.restorable()``, each with the row's own property that must agree.

Rows are written directly (PostgreSQL): the states they stand for are produced for real by
the runs, verification, retention and acceptance tests; here every combination at once.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from backups.choices import ArtifactFormat, RunStatus, SourceKind, Trigger, Verification
from backups.models import BackupArtifact, BackupRun, fresh_since
from tests.backups.helpers import make_source

pytestmark = pytest.mark.django_db


def _run(source, hours_ago: float, **fields) -> BackupRun:
    at = timezone.now() - timedelta(hours=hours_ago)
    values = {
        "trigger": Trigger.MANUAL,
        "status": RunStatus.SUCCEEDED,
        "verification": Verification.VERIFIED,
        "bytes_raw": 1000,
        "bytes_stored": 400,
        **fields,
    }
    run = BackupRun.objects.create(source=source, created=at, status_changed_at=at, **values)
    BackupArtifact.objects.create(
        run=run, component="db", key=f"k{run.pk}", format=ArtifactFormat.RDB, sha256="0" * 64,
        verification=run.verification,
    )  # fmt: skip
    return run


@pytest.fixture
def world(settings):
    settings.BACKUP_FRESH_HOURS = 26
    source = make_source("redis-main", SourceKind.REDIS, dsn="redis://127.0.0.1:1")
    now = timezone.now()
    runs = {
        "old_good": _run(source, 40),
        "recent_good": _run(source, 10),
        "deleted": _run(source, 6, deleted_at=now),  # retention removed its files
        "shrunk": _run(source, 4, shrink_flag=True),  # nobody accepted it
        "accepted_old": _run(source, 30, shrink_flag=True, accepted_at=now, accepted_by="a"),
        "unverified": _run(source, 3, verification=Verification.PENDING),
        "bad": _run(source, 2, verification=Verification.FAILED),
        "failed": _run(source, 1, status=RunStatus.FAILED, verification=Verification.PENDING),
    }
    return source, runs


def test_the_last_good_backup_is_the_newest_stored_verified_counted_one(world):
    source, runs = world
    assert BackupRun.objects.of_source(source).last_good() == runs["recent_good"]
    assert set(BackupRun.objects.usable()) == {
        runs["old_good"], runs["recent_good"], runs["accepted_old"]
    }  # fmt: skip
    assert set(BackupRun.objects.fresh()) == {runs["recent_good"]}
    later = timezone.now() + timedelta(hours=20)  # recent_good is 30 h old then
    assert not BackupRun.objects.fresh(later).exists()
    assert BackupRun.objects.of_source(source).filter(pk=runs["deleted"].pk).last_good() is None


def test_each_row_s_own_rule_agrees_with_its_queryset(world):
    source, runs = world
    usable = set(BackupRun.objects.usable().values_list("pk", flat=True))
    fresh = set(BackupRun.objects.fresh().values_list("pk", flat=True))
    restorable = set(BackupArtifact.objects.restorable().values_list("pk", flat=True))
    for name, run in runs.items():
        assert run.usable == (run.pk in usable), name
        assert run.is_fresh() == (run.pk in fresh), name
        artifact = run.artifacts.get()
        assert artifact.restorable == (artifact.pk in restorable), name
    assert fresh_since() < timezone.now() - timedelta(hours=25)


def test_a_run_s_size_is_expected_from_the_newest_other_succeeded_run(world):
    source, runs = world
    new = _run(source, 0, status=RunStatus.RUNNING, verification=Verification.PENDING)
    assert BackupRun.objects.size_reference(new) == runs["bad"]  # newest succeeded, any state
    assert BackupRun.objects.size_reference(runs["bad"]) == runs["unverified"]
    other = make_source("redis-other", SourceKind.REDIS, dsn="redis://127.0.0.1:1")
    assert BackupRun.objects.size_reference(_run(other, 0)) is None
