"""Verification re-reads what is on disk: a flipped byte, a valid file of the wrong
content, or a backup much smaller than the last good one are all caught."""

import pytest
import zstandard

from backups.choices import SourceKind, Verification
from backups.jobs import verify_run
from backups.models import BackupArtifact
from backups.storage import get_storage
from tests.backups.helpers import backup_now, make_source, pg_source, trail

pytestmark = pytest.mark.django_db


def _path(settings, artifact):
    return settings.BACKUP_STORAGE_DIR / artifact.key


def test_a_flipped_byte_fails_the_checksum(kube_api, tmp_path, operator, capture, settings):
    source = make_source(
        "k8s", SourceKind.KUBERNETES,
        kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc")),
    )  # fmt: skip
    run = backup_now(source, operator, capture)
    assert run.verification == Verification.VERIFIED
    artifact = run.artifacts.get()
    path = _path(settings, artifact)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    assert verify_run(run.pk) == Verification.FAILED
    run.refresh_from_db()
    artifact.refresh_from_db()
    assert "checksum mismatch" in artifact.verify_detail
    assert not run.usable
    assert trail(run)[-1] == "BACKUP_VERIFY_FAILED"


def test_a_well_formed_file_that_is_not_a_dump_fails_the_format_check(
    pg_cluster, pg_database, operator, capture, settings
):
    run = backup_now(pg_source("db", pg_cluster.dsn, pg_database()), operator, capture)
    artifact = run.artifacts.get()
    path = _path(settings, artifact)
    # Right checksum, wrong content: only pg_restore --list can tell.
    path.write_bytes(zstandard.ZstdCompressor().compress(b"PGDMP" + b"\0" * 300))
    from backups.streaming import sha256_of

    with open(path, "rb") as fh:
        digest, size = sha256_of(fh)
    BackupArtifact.objects.filter(pk=artifact.pk).update(sha256=digest, bytes_stored=size)

    assert verify_run(run.pk) == Verification.FAILED
    artifact.refresh_from_db()
    assert artifact.verify_detail.startswith("pg_restore --list failed")


def test_a_truncated_file_is_unreadable(kube_api, tmp_path, operator, capture, settings):
    source = make_source(
        "k8s", SourceKind.KUBERNETES,
        kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc")),
    )  # fmt: skip
    run = backup_now(source, operator, capture)
    artifact = run.artifacts.get()
    path = _path(settings, artifact)
    path.write_bytes(path.read_bytes()[:-20])
    assert verify_run(run.pk) == Verification.FAILED


def test_a_backup_far_smaller_than_the_previous_good_one_is_flagged(
    kube_api, tmp_path, operator, capture, caplog
):
    source = make_source(
        "k8s", SourceKind.KUBERNETES,
        kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc")),
    )  # fmt: skip
    first = backup_now(source, operator, capture)
    assert not first.shrink_flag
    for key in list(kube_api.objects)[1:]:
        del kube_api.objects[key]  # someone deleted almost everything
    second = backup_now(source, operator, capture)
    assert second.verification == Verification.VERIFIED  # still a readable backup…
    assert second.shrink_flag  # …but a suspicious one
    assert "under 50% of the previous good backup" in second.verify_detail
    assert any("FAILED" in r.message and "k8s" in r.message for r in caplog.records)
    assert get_storage().list_runs() == [first.artifact_path, second.artifact_path]


@pytest.mark.django_db
def test_a_source_without_a_fresh_backup_notifies_once_and_recovers(settings):
    """BACKUP_STALE goes out once when a source loses its fresh verified backup."""
    from datetime import timedelta

    from django.utils import timezone

    from backups import actions
    from backups.models import BackupSource
    from portal.models import Notification, NotificationChannel

    NotificationChannel.objects.create(
        name="ops-hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_STALE"]
    )
    source = BackupSource.objects.create(name="db", kind="postgres", dsn="postgres://x@h/db")
    later = timezone.now() + timedelta(hours=settings.BACKUP_FRESH_HOURS + 1)
    assert actions.check_freshness(timezone.now()) == {"stale": [], "fresh": []}  # too young
    assert actions.check_freshness(later) == {"stale": ["db"], "fresh": []}
    assert actions.check_freshness(later) == {"stale": [], "fresh": []}  # once
    note = Notification.objects.get(kind="BACKUP_STALE")
    assert note.title == "No fresh backup of db" and "never" in note.body
    source.refresh_from_db()
    assert source.stale_since == later
