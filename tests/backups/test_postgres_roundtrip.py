"""PostgreSQL end to end with the real tools: pg_dump → zstd → storage → verify
(pg_restore --list) → drop → pg_restore → the same content, row for row."""

import pytest

from backups.choices import ArtifactFormat, RestoreMode, RestoreStatus, RunStatus, Verification
from backups.models import RestoreRequest
from backups.storage import get_storage
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import backup_now, pg_source, plan_now, trail
from tests.backups.restoring import approve_and_run

pytestmark = pytest.mark.django_db


def test_backup_verify_drop_restore_gives_back_exactly_the_same_data(
    pg_cluster, pg_database, operator, approver, capture
):
    name = pg_database("shop")
    before = pg_snapshot(pg_cluster, name)
    assert len(before["rows"]["orders"]) == 4000
    source = pg_source("shop-db", pg_cluster.dsn, name)

    run = backup_now(source, operator, capture)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.verification == Verification.VERIFIED, run.verify_detail
    assert run.bytes_raw > 100_000 and 0 < run.bytes_stored < run.bytes_raw
    assert len(run.checksum) == 64 and run.duration_s is not None
    artifact = run.artifacts.get()
    assert artifact.format == ArtifactFormat.PG_CUSTOM
    assert artifact.facts["tables"] == 2 and artifact.facts["table_data"] == 2
    assert get_storage().list_runs() == [run.artifact_path]
    assert trail(run) == ["BACKUP_RUN_STARTED", "BACKUP_RUN_SUCCEEDED", "BACKUP_VERIFIED"]

    pg_cluster.drop(name)
    # The database is gone: restoring it is a scratch restore (no overwrite: one approval).
    req, plan = plan_now(capture, artifact, by=operator)
    assert plan["mode"] == RestoreMode.SCRATCH and plan["creates"]
    assert req.status == RestoreStatus.PLANNED
    req = approve_and_run(capture, req, approver)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert req.report["ok"] and req.report["tables"] == 2
    assert req.report["rows"] == {"public.customers": 1500, "public.orders": 4000}
    assert pg_snapshot(pg_cluster, name) == before
    assert req.safety_run is None


def test_restore_into_a_new_scratch_database_leaves_the_original_alone(
    pg_cluster, pg_database, operator, approver, capture
):
    name = pg_database("src")
    before = pg_snapshot(pg_cluster, name)
    run = backup_now(pg_source("src-db", pg_cluster.dsn, name), operator, capture)
    scratch = f"{name}_drill"
    try:
        req, plan = plan_now(
            capture, run.artifacts.get(), target={"database": scratch}, by=operator
        )
        assert plan["mode"] == RestoreMode.SCRATCH
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == before
        assert pg_snapshot(pg_cluster, name) == before
    finally:
        pg_cluster.drop(scratch)
    assert RestoreRequest.objects.count() == 1
