"""A long backup across another source's slot, with the real scheduler and real workers.

``manage.py rqcron`` ticks (every second here, on the control queue, served by
its own worker); ``manage.py rqworker backups`` workers run the backups. The
slow source is a real PostgreSQL behind a throttling proxy. With a second
backups worker the other slot runs at once; with one, it waits and is
reported missed after ``BACKUP_MISSED_AFTER`` (2 s here) while the long
backup still runs.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from backups.choices import RunStatus
from backups.models import BackupRun
from portal.models import Notification, NotificationChannel
from tests.backups.helpers import pg_source
from tests.backups.netfaults import ThrottledProxy
from tests.stack import BASE_DIR, PYTHON, kill_tree, stack_env, wait_for

ROWS = "CREATE TABLE events (id int, body text); INSERT INTO events SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 8000) i;"  # noqa: E501


def cron_at(moment: datetime) -> str:
    """A 6-field cron expression (seconds last) firing once, at ``moment``."""
    return f"{moment.minute} {moment.hour} {moment.day} {moment.month} * {moment.second}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backup_workers", [2, 1])
def test_a_long_backup_never_makes_another_sources_slot_vanish(
    backup_workers, pg_cluster, pg_database, settings, tmp_path
):
    NotificationChannel.objects.create(name="ops", kind="WEBHOOK", url="http://127.0.0.1:9/x")
    slow_db, quick_db = pg_database("slow", schema=ROWS), pg_database("quick")
    proxy = ThrottledProxy(pg_cluster.host, pg_cluster.port, rate=250_000)  # ~2 MB: ~8 s
    start = datetime.now(tz=UTC).replace(microsecond=0) + timedelta(seconds=8)
    slow = pg_source("slow", f"postgres://postgres@127.0.0.1:{proxy.port}", slow_db,
                     schedule=cron_at(start))  # fmt: skip
    quick = pg_source("quick", pg_cluster.dsn, quick_db,
                      schedule=cron_at(start + timedelta(seconds=2)))  # fmt: skip
    env = stack_env(
        BACKUP_STORAGE_DIR=str(settings.BACKUP_STORAGE_DIR),
        BACKUP_MISSED_AFTER="2",
    )
    commands = {
        "rqcron": ["rqcron", "tests.backups.cron_every_second"],
        "control": ["rqworker", "control"],
        **{f"backups-{i}": ["rqworker", "backups"] for i in range(backup_workers)},
    }
    procs = []
    try:
        for name, argv in commands.items():
            log = open(tmp_path / f"{name}.log", "w")
            procs.append(
                subprocess.Popen([PYTHON, "manage.py", *argv], env=env, cwd=BASE_DIR,
                                 stdout=log, stderr=log, start_new_session=True)
            )  # fmt: skip

        def run_of(source) -> BackupRun | None:
            return BackupRun.objects.filter(source=source).first()

        wait_for(lambda: (r := run_of(slow)) and r.status == RunStatus.RUNNING, 30, "slow run")
        long_run = run_of(slow)
        assert long_run.scheduled_for == start
        if backup_workers == 2:
            wait_for(
                lambda: (r := run_of(quick)) and r.status == RunStatus.SUCCEEDED, 20,
                "the other slot to run on the second worker",
            )  # fmt: skip
            long_run.refresh_from_db()
            assert long_run.status == RunStatus.RUNNING  # it ran while the long one still did
            assert not Notification.objects.filter(title__contains="MISSED").exists()
        else:
            wait_for(lambda: (r := run_of(quick)) and r.missed_at, 20, "the missed report")
            late = run_of(quick)
            long_run.refresh_from_db()
            assert late.status == RunStatus.QUEUED and long_run.status == RunStatus.RUNNING
            assert late.scheduled_for == start + timedelta(seconds=2)
            note = Notification.objects.get(title__contains="MISSED")
            assert note.title == f"Backup of quick MISSED its slot (run #{late.pk} not started)"
            assert "Workers serving the backups queue: 1; running: " in note.body
            assert f"#{long_run.pk} slow (since" in note.body
            quick.refresh_from_db()
            assert quick.missed_at is not None
            # Late, but not lost: it runs once the worker is free.
            wait_for(lambda: run_of(quick).status == RunStatus.SUCCEEDED, 40, "the late run")
        wait_for(lambda: run_of(slow).status == RunStatus.SUCCEEDED, 40, "the long run")
        assert BackupRun.objects.count() == 2  # one run per slot, no catch-up burst
    finally:
        for proc in procs:
            kill_tree(proc.pid)
            proc.wait()
        proxy.close()
