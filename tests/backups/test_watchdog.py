"""Tools that hang end in a classified FAILED run within their timeout, never RUNNING forever.

Real servers and real tools throughout: a TCP listener that accepts and never
answers stands for a hung PostgreSQL, Redis or Kubernetes API server; a real
PostgreSQL backend is SIGSTOPped in the middle of a dump (behind a throttling
proxy, so the dump is caught mid-stream); a real session holds the lock a
real pg_dump or pg_restore waits for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from backups import actions
from backups.choices import RunStatus, SourceKind
from backups.faults import FailureCause
from backups.jobs import _Heartbeat
from backups.models import BackupRun
from backups.runner import PgLockWatch, run_tool
from backups.sources import pg_url
from portal.models import Notification, NotificationChannel
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import backup_now, make_source, pg_source, run_jobs
from tests.backups.netfaults import Blackhole, ThrottledProxy
from tests.stack import wait_for


@pytest.fixture
def blackhole():
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture
def ops_channel(db):
    """A channel subscribed to backup failures (its sends are never delivered in tests)."""
    return NotificationChannel.objects.create(
        name="ops", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_FAILED"]
    )


@pytest.fixture
def short_timeouts(settings):
    settings.BACKUP_CONNECT_TIMEOUT = 2
    settings.BACKUP_KUBECTL_TIMEOUT = 1
    settings.BACKUP_LOCK_TIMEOUT = 1
    settings.BACKUP_STALL_TIMEOUT = 5  # above the connect timeout: that one must fire first
    return settings


def _timed_backup(source, operator, capture) -> tuple[BackupRun, float]:
    started = time.monotonic()
    run = backup_now(source, operator, capture)
    return run, time.monotonic() - started


@pytest.mark.django_db
@pytest.mark.parametrize("databases", ["app", ""], ids=["pg_dump", "psql-listing"])
def test_a_postgres_that_never_answers_fails_within_the_connect_timeout(
    databases, blackhole, short_timeouts, operator, capture, ops_channel
):
    source = pg_source("hung-db", f"postgres://backup@127.0.0.1:{blackhole.port}", databases)
    run, elapsed = _timed_backup(source, operator, capture)
    assert run.status == RunStatus.FAILED
    assert run.failure_cause == FailureCause.CONNECT_TIMEOUT, (run.error, run.stderr)
    assert "timeout expired" in run.error
    assert blackhole.accepted, "the tool never connected"
    assert 2 <= elapsed < 6, elapsed
    note = Notification.objects.get(kind="BACKUP_FAILED")
    assert note.title.endswith("Server did not answer (connect timeout)")
    assert "cause connect_timeout" in note.body


@pytest.mark.django_db
def test_a_redis_that_never_answers_fails_within_the_connect_timeout(
    blackhole, short_timeouts, operator, capture
):
    source = make_source("hung-cache", SourceKind.REDIS, dsn=f"redis://127.0.0.1:{blackhole.port}")
    run, elapsed = _timed_backup(source, operator, capture)
    assert run.status == RunStatus.FAILED
    assert run.failure_cause == FailureCause.CONNECT_TIMEOUT, (run.error, run.stderr)
    assert run.error == (
        f"redis-cli PING to redis://127.0.0.1:{blackhole.port}: no answer within 2 s"
    )
    assert blackhole.accepted
    assert 2 <= elapsed < 6, elapsed


@pytest.mark.django_db
def test_a_kubernetes_api_that_never_answers_fails_within_its_request_timeouts(
    blackhole, short_timeouts, operator, capture, tmp_path
):
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{blackhole.port}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {}}]\ncurrent-context: c\n"
    )
    source = make_source("hung-k8s", SourceKind.KUBERNETES, kubeconfig=str(kubeconfig))
    run, elapsed = _timed_backup(source, operator, capture)
    assert run.status == RunStatus.FAILED
    assert run.failure_cause == FailureCause.CONNECT_TIMEOUT, (run.error, run.stderr)
    assert "--request-timeout=1s" in " ".join(source_argv(source))
    # kubectl retries its API discovery: about five 1 s request timeouts, never forever.
    assert elapsed < 15, elapsed


def source_argv(source) -> list[str]:
    from backups.sources import transport_for

    transport = transport_for(source)
    return transport.command(transport.components()[0]).argv


def _pids_of(program: str, needle: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program.encode()) and any(needle.encode() in a for a in argv):
            found.append(int(cmdline.parent.name))
    return found


BIG = """
CREATE TABLE events (id int, body text);
INSERT INTO events SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 40000) i;
"""


@pytest.mark.django_db(transaction=True)
def test_a_server_stopped_mid_dump_is_killed_by_the_watchdog_and_the_run_fails(
    pg_cluster, pg_database, short_timeouts, operator
):
    """SIGSTOP the real backend serving pg_dump once bytes flow: no byte for 2 s ends it."""
    short_timeouts.BACKUP_STALL_TIMEOUT = 2
    name = pg_database("stall", schema=BIG)  # ~11 MB of COPY output
    proxy = ThrottledProxy(pg_cluster.host, pg_cluster.port, rate=1_000_000)
    stopped: list[int] = []
    dumps: list[int] = []

    def stop_backend_mid_copy() -> None:
        with pg_cluster.connect("postgres") as conn:

            def copying() -> bool:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name LIKE 'portal-backup-%%' AND query LIKE 'COPY%%'",
                    [name],
                ).fetchone()
                if row and proxy.downstream > 300_000:
                    dumps.extend(_pids_of("pg_dump", name))
                    os.kill(row[0], signal.SIGSTOP)
                    stopped.append(row[0])
                    return True
                return False

            wait_for(copying, 30, "pg_dump to stream the table")

    thread = threading.Thread(target=stop_backend_mid_copy, daemon=True)
    try:
        source = pg_source("stalling", f"postgres://postgres@127.0.0.1:{proxy.port}", name)
        run = actions.request_run(source, by=operator)  # enqueued at once (autocommit)
        thread.start()
        started = time.monotonic()
        run_jobs()
        elapsed = time.monotonic() - started
        thread.join(5)
        run.refresh_from_db()
        assert stopped and dumps, "the dump was not caught mid-stream"
        assert run.status == RunStatus.FAILED
        assert run.failure_cause == FailureCause.STALLED, (run.error, run.stderr)
        assert run.error.startswith("no progress for 2 s: pg_dump for " + name)
        assert 300_000 < run.progress_bytes < 11_000_000  # it was mid-dump
        # The tool's whole process group is gone.
        assert all(not Path(f"/proc/{pid}").exists() for pid in dumps)
        assert _pids_of("pg_dump", name) == []
        assert elapsed < 20, elapsed
        assert not list(Path(short_timeouts.BACKUP_STORAGE_DIR).glob("stalling/2*"))
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        proxy.close()


@pytest.mark.django_db
def test_a_dump_waiting_on_an_applications_lock_fails_naming_the_holder(
    pg_cluster, pg_database, short_timeouts, operator, capture
):
    name = pg_database("locked")
    holder = psycopg.connect(
        host=pg_cluster.host, port=pg_cluster.port, user=pg_cluster.user, dbname=name,
        application_name="billing-app",
    )  # fmt: skip
    try:
        holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        holder_pid = holder.info.backend_pid
        run, elapsed = _timed_backup(pg_source("db", pg_cluster.dsn, name), operator, capture)
    finally:
        holder.close()
    assert run.status == RunStatus.FAILED
    assert run.failure_cause == FailureCause.LOCK_TIMEOUT, (run.error, run.stderr)
    assert run.error.startswith(f"waited more than 1 s for a lock held by pid {holder_pid} ")
    assert "application 'billing-app', user postgres" in run.error
    assert "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE" in run.error
    assert elapsed < 6, elapsed


@pytest.mark.django_db
def test_run_tool_ends_a_restore_waiting_on_a_lock_and_leaves_the_target_as_it_was(
    pg_cluster, pg_database, tmp_path
):
    """The helper restore.py uses: pg_restore resets lock_timeout itself (its script starts
    with ``SET lock_timeout = 0``), so only the watch can bound its wait."""
    name = pg_database("target")
    url = pg_url(pg_cluster.dsn, name)
    dump = tmp_path / "db.pgdump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), "-d", url], check=True)
    before = pg_snapshot(pg_cluster, name)
    holder = pg_cluster.connect(name)
    holder.autocommit = False
    holder.execute("SET application_name = 'billing-app'")
    holder.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    watch = PgLockWatch(url, lock_timeout=1, label="portal-restore")
    started = time.monotonic()
    try:
        with open(dump, "rb") as fh:
            result = run_tool(
                ["pg_restore", "--clean", "--if-exists", "--single-transaction",
                 "--exit-on-error", "-d", url],
                stdin=fh, lock_watch=watch, stall_timeout=30, what="pg_restore",
            )  # fmt: skip
        elapsed = time.monotonic() - started
        assert not result.ok and result.cause == FailureCause.LOCK_TIMEOUT, result
        assert f"held by pid {holder.info.backend_pid} (application 'billing-app'" in result.message
        assert "canceling statement due to user request" in result.stderr
        assert elapsed < 5, elapsed
        with pg_cluster.connect("postgres") as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [watch.application_name],
            ).fetchone()[0]
        assert left == 0  # its session was cancelled, not left queued for the lock
    finally:
        holder.rollback()
        holder.close()
    assert pg_snapshot(pg_cluster, name) == before  # one transaction, rolled back


def test_a_heartbeat_stops_beating_when_the_work_stops_moving(monkeypatch):
    monkeypatch.setattr("backups.jobs.HEARTBEAT_EVERY", 0.02)
    beats: list[float] = []
    moving = threading.Event()
    moving.set()
    with _Heartbeat(lambda: beats.append(time.monotonic()), moving.is_set):
        wait_for(lambda: len(beats) >= 3, 5, "beats while moving")
        moving.clear()
        time.sleep(0.05)  # let a beat already in flight land
        stalled_at = len(beats)
        time.sleep(0.2)  # ten heartbeat periods: none may come
        assert len(beats) == stalled_at
