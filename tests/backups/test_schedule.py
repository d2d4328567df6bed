"""Schedules: one per-minute tick creates each due slot once, even with ticks racing."""

import threading
from datetime import UTC, datetime

import django_rq
import pytest
from django.db import connection

from backups import actions
from backups.choices import SourceKind, Trigger
from backups.models import BackupRun
from tests.backups.helpers import make_source


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_racing_enqueue_a_slot_once():
    source = make_source("pg", SourceKind.POSTGRES, dsn="postgres://backup@db.internal:5432")
    assert source.cron == "0 2 * * *"
    at = datetime(2026, 2, 5, 2, 0, 30, tzinfo=UTC)
    barrier = threading.Barrier(4)
    created: list[list[int]] = []

    def tick():
        try:
            barrier.wait()
            created.append(actions.schedule_due(at))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    runs = list(BackupRun.objects.filter(source=source))
    assert len(runs) == 1 and runs[0].trigger == Trigger.SCHEDULE
    assert runs[0].scheduled_for == datetime(2026, 2, 5, 2, 0, tzinfo=UTC)
    assert sorted(len(c) for c in created) == [0, 0, 0, 1]
    queue = django_rq.get_queue("backups")
    assert queue.job_ids == [actions.run_job_id(runs[0].pk)]
    # A restarted scheduler catching up a few minutes later changes nothing either.
    assert actions.schedule_due(datetime(2026, 2, 5, 2, 4, tzinfo=UTC)) == []
    assert queue.count == 1


@pytest.mark.django_db
def test_a_missed_minute_is_caught_up_and_disabled_sources_wait(capture):
    on = make_source("pg", SourceKind.POSTGRES, dsn="postgres://b@h", schedule="*/30 * * * *")
    make_source("off", SourceKind.REDIS, dsn="redis://h:6379", enabled=False)
    with capture(execute=True):
        created = actions.schedule_due(datetime(2026, 2, 5, 14, 3, tzinfo=UTC))
    assert [BackupRun.objects.get(pk=pk).source for pk in created] == [on]
    assert BackupRun.objects.get().scheduled_for == datetime(2026, 2, 5, 14, 0, tzinfo=UTC)
