"""Backups on an S3-compatible bucket (issue 13 §7), against a real S3 HTTP server on
loopback (moto in server mode, standing in for AWS S3 or MinIO: see s3server.py).
Streaming multipart upload checked after upload (ETag and size), full verification and
restore reading from the bucket, a corrupted object detected, versioned buckets cleaned
of every version, object-locked files kept."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from backups import actions
from backups.choices import RestoreStatus, SourceKind, Verification
from backups.jobs import verify_run
from backups.models import BackupRun
from backups.s3 import S3Client, S3Config
from backups.storage import get_storage
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import backup_now, dump_of, make_source, pg_source, plan_now
from tests.backups.restoring import approve_and_run
from tests.backups.s3server import MotoServer

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def use_bucket(settings, moto, **kind) -> S3Client:
    bucket = moto.bucket(**kind)
    settings.BACKUP_STORAGE = "s3"
    settings.BACKUP_S3_ENDPOINT = moto.endpoint
    settings.BACKUP_S3_BUCKET = bucket
    settings.BACKUP_S3_PREFIX = "portal"
    settings.BACKUP_S3_ACCESS_KEY_ID = "test"
    settings.BACKUP_S3_SECRET_ACCESS_KEY = "test"
    settings.BACKUP_S3_PART_MB = 5
    return S3Client(S3Config(moto.endpoint, bucket, access_key="test", secret_key="test"))


def test_a_backup_on_s3_verifies_and_restores(
    moto, settings, pg_cluster, pg_database, operator, approver, capture
):
    client = use_bucket(settings, moto)
    name = pg_database("s3")
    before = pg_snapshot(pg_cluster, name)
    run = backup_now(pg_source("s3-db", pg_cluster.dsn, name), operator, capture)
    assert run.verification == Verification.VERIFIED, (run.error, run.verify_detail)
    keys = sorted(o["key"] for o in client.list("portal/"))
    assert keys == sorted(f"portal/{run.artifact_path}/{f}" for f in
                          ("MANIFEST.json", "globals.sql.zst", f"{name}.pgdump.zst"))  # fmt: skip
    assert get_storage().list_runs() == [run.artifact_path]
    assert get_storage().location == f"s3://{settings.BACKUP_S3_BUCKET}/portal/"

    scratch = f"{name}_from_s3"
    try:
        req, _ = plan_now(capture, dump_of(run), target={"database": scratch}, by=operator)
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == before
    finally:
        pg_cluster.drop(scratch)


def test_a_corrupted_object_is_detected(moto, settings, pg_cluster, pg_database, operator, capture):
    client = use_bucket(settings, moto)
    run = backup_now(pg_source("s3-db", pg_cluster.dsn, pg_database("s3")), operator, capture)
    dump = dump_of(run)
    key = f"portal/{dump.key}"
    with get_storage().open(dump.key) as body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    client.request("PUT", key, body=bytes(data)).read()
    assert verify_run(run.pk) == Verification.FAILED
    dump.refresh_from_db()
    assert "checksum mismatch" in dump.verify_detail


def test_a_big_file_goes_up_in_parts_and_comes_back_whole(
    moto, settings, redis_server, operator, capture
):
    use_bucket(settings, moto)
    server = redis_server()
    client = server.client()
    for i in range(12):
        client.set(f"blob:{i}", os.urandom(1 << 20))  # incompressible: ~12 MB stored
    run = backup_now(make_source("cache", SourceKind.REDIS, dsn=server.url), operator, capture)
    assert run.verification == Verification.VERIFIED, (run.error, run.verify_detail)
    artifact = run.artifacts.get()
    assert artifact.bytes_stored > 2 * (5 << 20) and artifact.facts["keys"] == 12


def test_retention_deletes_every_version_in_a_versioned_bucket(
    moto, settings, kube_api, tmp_path, operator, capture
):
    client = use_bucket(settings, moto, versioning=True)
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    old = backup_now(source, operator, capture)
    new = backup_now(source, operator, capture)
    BackupRun.objects.filter(pk=old.pk).update(created=old.created - timedelta(days=30))
    with capture(execute=True):
        result = actions.apply_retention(source)
    assert result.delete == [old.pk]
    assert client.versions(f"portal/{old.artifact_path}/") == []  # no version, no marker left
    assert get_storage().list_runs() == [new.artifact_path]


def test_object_locked_files_are_kept_and_said_so(
    moto, settings, kube_api, tmp_path, operator, capture, caplog
):
    client = use_bucket(settings, moto, object_lock=True)
    assert client.object_lock()
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    old = backup_now(source, operator, capture)  # uploads carry Content-MD5: accepted
    assert old.verification == Verification.VERIFIED, (old.error, old.verify_detail)
    backup_now(source, operator, capture)
    BackupRun.objects.filter(pk=old.pk).update(created=old.created - timedelta(days=30))
    with capture(execute=True):
        actions.apply_retention(source)
    assert any("stays in s3://" in r.message and "object lock" in r.message
               for r in caplog.records)  # fmt: skip
    assert client.versions(f"portal/{old.artifact_path}/")  # still there, locked


def test_a_second_copy_goes_to_s3_and_retention_applies_to_both(
    moto, settings, kube_api, tmp_path, operator, capture
):
    """Local primary, S3 second copy: each backup is copied (hashed against the recorded
    checksum on the way, ETag and size checked), and retention deletes it from both."""
    client = use_bucket(settings, moto, versioning=True)
    settings.BACKUP_STORAGE = "local"
    settings.BACKUP_COPY_TO = "s3"
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    old = backup_now(source, operator, capture)
    assert old.copied_at is not None and old.copy_error == "", old.copy_error
    assert old.copy_location == f"s3://{settings.BACKUP_S3_BUCKET}/portal/{old.artifact_path}"
    local = (settings.BACKUP_STORAGE_DIR / old.artifacts.get().key).read_bytes()
    body = client.request("GET", f"portal/{old.artifacts.get().key}")
    assert body.read() == local
    assert (settings.BACKUP_STORAGE_DIR / old.artifact_path).is_dir()

    new = backup_now(source, operator, capture)
    BackupRun.objects.filter(pk=old.pk).update(created=old.created - timedelta(days=30))
    with capture(execute=True):
        actions.apply_retention(source)
    assert not (settings.BACKUP_STORAGE_DIR / old.artifact_path).exists()
    assert client.versions(f"portal/{old.artifact_path}/") == []
    assert {o["key"].rsplit("/", 1)[0] for o in client.list("portal/")} == {
        f"portal/{new.artifact_path}"
    }


def test_a_failed_copy_is_recorded_and_notified(
    moto, settings, kube_api, tmp_path, operator, capture
):
    from portal.models import Notification, NotificationChannel

    NotificationChannel.objects.create(
        name="ops-hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_FAILED"]
    )
    use_bucket(settings, moto)
    settings.BACKUP_STORAGE = "local"
    settings.BACKUP_COPY_TO = "s3"
    settings.BACKUP_S3_BUCKET = "no-such-bucket"
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    run = backup_now(source, operator, capture)
    assert run.usable and run.copied_at is None  # the backup itself is good
    assert "NoSuchBucket" in run.copy_error
    assert "offsite copy of k8s FAILED" in Notification.objects.get().title


def test_an_unreachable_bucket_fails_the_run_as_a_storage_error(
    settings, kube_api, tmp_path, operator, capture
):
    from portal.lib.localservices import free_port

    settings.BACKUP_STORAGE = "s3"
    settings.BACKUP_S3_ENDPOINT = f"http://127.0.0.1:{free_port()}"  # nothing listens
    settings.BACKUP_S3_BUCKET = "gone"
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    run = backup_now(source, operator, capture)
    assert run.status == "FAILED" and run.failure_cause == "storage"
    assert "Connection refused" in run.error or "refused" in run.error.lower()


def test_an_s3_store_without_endpoint_or_bucket_is_a_system_check_error(settings):
    from django.core.checks import run_checks

    settings.BACKUP_COPY_TO = "s3"
    settings.BACKUP_S3_ENDPOINT = ""
    assert "backups.E004" in {m.id for m in run_checks()}


def test_a_lost_primary_is_verified_and_restored_from_the_copy(
    moto, settings, pg_cluster, pg_database, operator, approver, capture
):
    import shutil

    use_bucket(settings, moto)
    settings.BACKUP_STORAGE = "local"
    settings.BACKUP_COPY_TO = "s3"
    name = pg_database("lost")
    before = pg_snapshot(pg_cluster, name)
    run = backup_now(pg_source("lost-db", pg_cluster.dsn, name), operator, capture)
    assert run.copied_at is not None, run.copy_error
    shutil.rmtree(settings.BACKUP_STORAGE_DIR / run.artifact_path)  # the disk is gone

    assert verify_run(run.pk) == Verification.VERIFIED
    dump = dump_of(run)
    assert "read from the second copy, s3://" in dump.verify_detail
    scratch = f"{name}_from_copy"
    try:
        req, _ = plan_now(capture, dump, target={"database": scratch}, by=operator)
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == before
    finally:
        pg_cluster.drop(scratch)
