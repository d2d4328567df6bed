"""PostgreSQL end to end with the real tools: pg_dump → zstd → storage → verify
(pg_restore --list) → drop → pg_restore → the same content, row for row."""

import psycopg
import pytest

from backups.choices import ArtifactFormat, RestoreMode, RestoreStatus, RunStatus, Verification
from backups.models import RestoreRequest
from backups.storage import get_storage
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import (
    backup_now,
    dump_of,
    pg_source,
    plan_now,
    read_plain,
    store_plain,
    trail,
)
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
    artifact = dump_of(run)
    assert artifact.format == ArtifactFormat.PG_CUSTOM
    assert artifact.facts["tables"] == 2 and artifact.facts["table_data"] == 2
    assert get_storage().list_runs() == [run.artifact_path]
    assert trail(run) == [
        "BACKUP_RUN_REQUESTED", "BACKUP_RUN_STARTED", "BACKUP_RUN_SUCCEEDED", "BACKUP_VERIFIED",
    ]  # fmt: skip

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
        req, plan = plan_now(capture, dump_of(run), target={"database": scratch}, by=operator)
        assert plan["mode"] == RestoreMode.SCRATCH
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == before
        assert pg_snapshot(pg_cluster, name) == before
    finally:
        pg_cluster.drop(scratch)
    assert RestoreRequest.objects.count() == 1


def _objects(cluster, dbname: str) -> dict:
    """Every schema and relation (tables, views, sequences, indexes) and database setting."""
    with cluster.connect(dbname) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        ).fetchall()
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' "
            "AND nspname <> 'information_schema' ORDER BY 1"
        ).fetchall()
        database = conn.execute(
            "SELECT s.setconfig, shobj_description(d.oid, 'pg_database'), "
            "ARRAY(SELECT unnest(d.datacl)::text ORDER BY 1) "
            "FROM pg_database d LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid "
            "WHERE d.datname = current_database()"
        ).fetchone()
    return {"relations": relations, "schemas": schemas, "database": database}


def _leftovers(cluster, name: str) -> list:
    with cluster.connect("postgres") as conn:
        return conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{name[:40]}\\_\\_%"]
        ).fetchall()


def test_an_overwrite_gives_back_exactly_the_backed_up_database(
    pg_cluster, pg_database, operator, approver, approver2, capture
):
    """Objects created since the backup do not survive (pg_restore --clean would keep them or
    fail on their dependencies); an open session is closed; database properties are kept."""
    name = pg_database("exact")
    with pg_cluster.connect(name) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '42s'")
        conn.execute(f'ALTER DATABASE "{name}" SET search_path = public, "$user"')
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'the shop'")
        conn.execute(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
    good, good_objects = pg_snapshot(pg_cluster, name), _objects(pg_cluster, name)
    run = backup_now(pg_source("exact-db", pg_cluster.dsn, name), operator, capture)
    with pg_cluster.connect(name) as conn:
        conn.execute(
            "CREATE TABLE public.added (x int); CREATE SCHEMA extra; "
            "CREATE TABLE extra.t (x int); CREATE VIEW public.names AS SELECT name FROM customers; "
            "DELETE FROM orders WHERE id > 10; UPDATE customers SET name = 'oops'"
        )
    idle = pg_cluster.connect(name)  # an application's session, left open

    req, plan = plan_now(capture, dump_of(run), by=operator, confirmation=name)
    assert plan["mode"] == RestoreMode.OVERWRITE and "replaced as a whole" in plan["overwrites"]
    req = approve_and_run(capture, req, approver, approver2, confirmation=name)

    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert pg_snapshot(pg_cluster, name) == good
    assert _objects(pg_cluster, name) == good_objects  # no "added", no "extra", no "names"
    assert "swapped names" in req.report["method"] and req.report["sessions_closed"] >= 1
    assert req.report["ok"] and req.report["warnings"] == []
    assert _leftovers(pg_cluster, name) == []
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()


def test_a_failed_overwrite_changes_nothing_and_leaves_no_copy(
    pg_cluster, pg_database, operator, approver, approver2, capture, tmp_path
):
    name = pg_database("half")
    run = backup_now(pg_source("half-db", pg_cluster.dsn, name), operator, capture)
    artifact = dump_of(run)
    with pg_cluster.connect(name) as conn:
        conn.execute("CREATE TABLE public.added (x int); DELETE FROM orders WHERE id > 10")
    changed = pg_snapshot(pg_cluster, name), _objects(pg_cluster, name)
    req, _ = plan_now(capture, artifact, by=operator, confirmation=name)
    # The dump loses its second half after verification (still a well-formed stored file):
    # pg_restore fails midway.
    dump = read_plain(artifact)
    store_plain(artifact, tmp_path, dump[: len(dump) // 2])
    req = approve_and_run(capture, req, approver, approver2, confirmation=name)
    assert req.status == RestoreStatus.FAILED
    assert "pg_restore exited" in req.error and "nothing was changed" in req.error
    assert (pg_snapshot(pg_cluster, name), _objects(pg_cluster, name)) == changed
    assert _leftovers(pg_cluster, name) == []
