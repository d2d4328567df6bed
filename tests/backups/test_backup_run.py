"""Backup runs: tool failures, credentials, pg_dumpall, and a worker killed mid-run."""

import os
import subprocess
from datetime import timedelta

import pytest
from django.db import connection

from backups import actions
from backups.choices import RunStatus
from backups.faults import FailureCause
from backups.jobs import housekeeping, tick
from backups.models import BackupArtifact, BackupRun
from backups.sources import PostgresTransport
from backups.storage import get_storage
from tests.backups.helpers import backup_now, pg_source, run_jobs, trail
from tests.stack import BASE_DIR, PYTHON, kill_tree, wait_for


@pytest.mark.django_db
def test_a_failing_tool_fails_the_run_keeps_its_stderr_and_leaves_no_file(
    pg_cluster, operator, capture, caplog
):
    source = pg_source("ghost", pg_cluster.dsn, "no_such_database")
    run = backup_now(source, operator, capture)
    assert run.status == RunStatus.FAILED
    assert "pg_dump for no_such_database exited 1" in run.error
    assert run.failure_cause == FailureCause.TOOL_ERROR
    assert "no_such_database" in run.stderr and "does not exist" in run.stderr
    assert get_storage().list_runs() == [] and not BackupArtifact.objects.exists()
    assert trail(run) == ["BACKUP_RUN_REQUESTED", "BACKUP_RUN_STARTED", "BACKUP_RUN_FAILED"]
    assert any("ghost FAILED" in r.message for r in caplog.records)


@pytest.mark.django_db
def test_missing_credentials_fail_clearly_and_passwords_never_reach_argv(
    pg_cluster, operator, capture, monkeypatch, tmp_path
):
    source = pg_source("db", pg_cluster.dsn, "postgres", password_env="TEST_ABSENT_PW")
    monkeypatch.delenv("TEST_ABSENT_PW", raising=False)
    run = backup_now(source, operator, capture)
    assert run.status == RunStatus.FAILED
    assert "TEST_ABSENT_PW" in run.error

    secret_file = tmp_path / "pw"
    secret_file.write_text("hunter2-secret\n")
    source.password_env, source.password_file = "", str(secret_file)
    command = PostgresTransport(source).command(PostgresTransport(source).components()[0])
    assert "hunter2-secret" not in " ".join(command.argv)
    assert command.env == {"PGPASSWORD": "hunter2-secret", "PGCONNECT_TIMEOUT": "10"}


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_backup_leaves_nothing_listed(
    pg_cluster, pg_database, operator, settings
):
    first, second = pg_database("first"), pg_database("second")
    source = pg_source("two-dbs", pg_cluster.dsn, f"{first},{second}")
    blocker = pg_cluster.connect(second)
    blocker.autocommit = False
    # pg_dump of the second database waits for this lock: the run is caught mid-way,
    # with the first database already streamed into the staging area.
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    db = connection.settings_dict
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{host}/{db['NAME']}",
        "BACKUP_STORAGE_DIR": str(settings.BACKUP_STORAGE_DIR),
        "PYTHONPATH": str(BASE_DIR),
    }
    run = actions.request_run(source, by=operator)
    worker = subprocess.Popen(
        [PYTHON, "manage.py", "rqworker", "backups", "--burst"],
        env=env, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:

        def dump_waits() -> bool:
            with pg_cluster.connect("postgres") as conn:
                return (
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND wait_event_type = 'Lock'",
                        [second],
                    ).fetchone()[0]
                    > 0
                )

        wait_for(dump_waits, 60, "pg_dump to block on the second database")
        staged = list(settings.BACKUP_STORAGE_DIR.glob("two-dbs/.incomplete/*/*"))
        assert any(p.name == f"{first}.pgdump.zst" and p.stat().st_size > 0 for p in staged)
    finally:
        kill_tree(worker.pid)
        worker.wait()
        blocker.close()

    storage = get_storage()
    assert storage.list_runs() == [] and not BackupArtifact.objects.exists()
    assert BackupRun.objects.get(pk=run.pk).status == RunStatus.RUNNING
    later = run.created + timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE + 60)
    assert actions.reap_lost_runs(now=later) == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "worker lost" in run.error
    assert run.failure_cause == FailureCause.WORKER_LOST
    # The sweeper (housekeeping, enqueued by the tick) removes the staging once its run
    # is no longer running.
    settings.BACKUP_HEARTBEAT_GRACE = 0
    assert tick(now=later)["housekeeping"] is True
    assert housekeeping() == [run.storage_key]
    assert not list(settings.BACKUP_STORAGE_DIR.glob("two-dbs/.incomplete/*"))
    run_jobs()  # nothing brings it back
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


@pytest.mark.django_db
def test_pg_dumpall_mode_backs_up_the_whole_cluster(pg_cluster, pg_database, operator, capture):
    name = pg_database("cluster")
    source = pg_source("whole", pg_cluster.dsn, "", pg_mode="dumpall")
    run = backup_now(source, operator, capture)
    assert run.verification == "VERIFIED", (run.error, run.verify_detail)
    artifact = run.artifacts.get()
    assert (artifact.component, artifact.format) == ("cluster", "pg_sql")
    assert "header and trailer present" in artifact.verify_detail
    with pytest.raises(actions.BackupError, match="restored by hand"):
        actions.plan_restore(artifact, by=operator, dry_run=True)
    assert name
