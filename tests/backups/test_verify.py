"""Verification re-reads what is on disk: a flipped byte, a valid file of the wrong
content, a dump cut short, or a backup much smaller than the last good one are all caught.
"Verified" means every byte was read and decoded by the real tool (issue 13 §3)."""

import pytest

from backups.choices import SourceKind, Verification, VerifyLevel
from backups.jobs import verify_run
from backups.storage import get_storage
from backups.verify import verify_artifact
from tests.backups.helpers import (
    backup_now,
    make_source,
    pg_source,
    read_plain,
    store_plain,
    trail,
)

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
    pg_cluster, pg_database, operator, capture, tmp_path
):
    run = backup_now(pg_source("db", pg_cluster.dsn, pg_database()), operator, capture)
    artifact = run.artifacts.get()
    # Right checksum, wrong content: only pg_restore --list can tell.
    store_plain(artifact, tmp_path, b"PGDMP" + b"\0" * 300)

    assert verify_run(run.pk) == Verification.FAILED
    artifact.refresh_from_db()
    assert artifact.verify_detail.startswith("pg_restore --list failed")


def test_a_dump_cut_short_fails_full_verification_though_its_table_of_contents_reads(
    pg_cluster, pg_database, operator, capture, tmp_path
):
    """The dump loses its last two thirds but keeps a valid checksum: ``pg_restore --list``
    (the quick level) still reads its table of contents; reading every byte does not."""
    run = backup_now(pg_source("db", pg_cluster.dsn, pg_database()), operator, capture)
    assert run.verification == Verification.VERIFIED, run.verify_detail
    assert run.verify_level == VerifyLevel.FULL and run.verify_seconds > 0
    artifact = run.artifacts.get()
    assert artifact.verify_level == VerifyLevel.FULL and artifact.verify_seconds > 0
    assert "pg_restore read all" in artifact.verify_detail
    assert artifact.facts["bytes_decoded"] == artifact.bytes_raw
    dump = read_plain(artifact)
    store_plain(artifact, tmp_path, dump[: len(dump) // 3])
    artifact.refresh_from_db()

    quick = verify_artifact(get_storage(), artifact, VerifyLevel.QUICK)
    assert quick.ok and quick.facts["tables"] == 2, quick.detail  # the TOC alone passes
    assert verify_run(run.pk, level=VerifyLevel.QUICK) == Verification.VERIFIED  # unchanged

    assert verify_run(run.pk) == Verification.FAILED
    run.refresh_from_db()
    artifact.refresh_from_db()
    assert "pg_restore -f /dev/null failed" in artifact.verify_detail, artifact.verify_detail
    assert run.verify_level == VerifyLevel.FULL and run.verify_seconds is not None
    assert not run.usable
    assert trail(run)[-3:] == ["BACKUP_VERIFIED", "BACKUP_VERIFIED", "BACKUP_VERIFY_FAILED"]


def test_a_quick_check_that_fails_fails_the_backup(
    pg_cluster, pg_database, operator, capture, tmp_path
):
    run = backup_now(pg_source("db", pg_cluster.dsn, pg_database()), operator, capture)
    store_plain(run.artifacts.get(), tmp_path, b"not a dump at all")
    assert verify_run(run.pk, level=VerifyLevel.QUICK) == Verification.FAILED
    run.refresh_from_db()
    assert run.verify_level == VerifyLevel.QUICK and "pg_restore --list failed" in run.verify_detail


def test_an_rdb_cut_short_fails_full_verification(redis_server, operator, capture, tmp_path):
    """redis-check-rdb reads every object and the RDB's CRC64; the header alone passes."""
    server = redis_server()
    client = server.client()
    for i in range(3000):
        client.set(f"key:{i}", f"value {i} " * 20)
    run = backup_now(make_source("cache", SourceKind.REDIS, dsn=server.url), operator, capture)
    assert run.verification == Verification.VERIFIED, run.verify_detail
    artifact = run.artifacts.get()
    assert artifact.facts["keys"] == 3000 and "redis-check-rdb read all" in artifact.verify_detail
    rdb = read_plain(artifact)
    store_plain(artifact, tmp_path, rdb[: len(rdb) // 2])
    artifact.refresh_from_db()
    assert verify_artifact(get_storage(), artifact, VerifyLevel.QUICK).ok
    full = verify_artifact(get_storage(), artifact)
    assert not full.ok and "redis-check-rdb failed" in full.detail, full.detail


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
    assert second.awaiting_acceptance and not second.usable  # not a good backup (yet)
    assert any(
        "suspiciously small" in r.message and "NOT counted until accepted" in r.message
        for r in caplog.records
    )
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
