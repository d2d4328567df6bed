"""Schedules: one per-minute tick creates each source's newest due slot once, even with ticks
racing; slots start at the source's creation; a skipped or late slot is reported missed."""

import threading
from datetime import UTC, datetime, timedelta

import django_rq
import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test import RequestFactory

from backups import actions
from backups.choices import RunStatus, SourceKind, Trigger
from backups.dashboard import backups_panel
from backups.models import BackupRun, BackupSource
from portal.models import Notification, NotificationChannel
from tests.backups.helpers import make_source


def created_at(source: BackupSource, when: datetime) -> BackupSource:
    BackupSource.objects.filter(pk=source.pk).update(created=when)
    source.refresh_from_db()
    return source


@pytest.fixture
def ops_channel(db):
    return NotificationChannel.objects.create(
        name="ops", kind="WEBHOOK", url="http://127.0.0.1:9/hook"
    )


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_racing_enqueue_a_slot_once():
    source = make_source("pg", SourceKind.POSTGRES, dsn="postgres://backup@db.internal:5432")
    created_at(source, datetime(2026, 2, 5, 1, 0, tzinfo=UTC))
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
    source.refresh_from_db()
    assert source.missed_at is None  # no slot was skipped


@pytest.mark.django_db
def test_a_missed_minute_is_caught_up_and_disabled_sources_wait(capture):
    on = make_source("pg", SourceKind.POSTGRES, dsn="postgres://b@h", schedule="*/30 * * * *")
    off = make_source("off", SourceKind.REDIS, dsn="redis://h:6379", enabled=False)
    created_at(on, datetime(2026, 2, 5, 13, 50, tzinfo=UTC))
    created_at(off, datetime(2026, 2, 5, 13, 50, tzinfo=UTC))
    with capture(execute=True):
        created = actions.schedule_due(datetime(2026, 2, 5, 14, 3, tzinfo=UTC))
    assert [BackupRun.objects.get(pk=pk).source for pk in created] == [on]
    assert BackupRun.objects.get().scheduled_for == datetime(2026, 2, 5, 14, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_slots_start_at_the_sources_creation(capture, ops_channel):
    """A source created at 10:05:30 gets its first slot at 10:06, never one before."""
    source = make_source("cache", SourceKind.REDIS, dsn="redis://h:6379", schedule="* * * * *")
    created_at(source, datetime(2026, 3, 2, 10, 5, 30, tzinfo=UTC))
    with capture(execute=True):
        assert actions.schedule_due(datetime(2026, 3, 2, 10, 5, 45, tzinfo=UTC)) == []
        created = actions.schedule_due(datetime(2026, 3, 2, 10, 6, 1, tzinfo=UTC))
    assert [r.scheduled_for for r in BackupRun.objects.all()] == [
        datetime(2026, 3, 2, 10, 6, tzinfo=UTC)
    ]
    assert len(created) == 1
    assert not Notification.objects.exists()  # nothing was missed


@pytest.mark.django_db
def test_a_late_tick_creates_only_the_newest_slot_and_reports_the_skipped_ones(
    capture, ops_channel, rf: RequestFactory, viewer
):
    source = make_source("cache", SourceKind.REDIS, dsn="redis://h:6379", schedule="* * * * *")
    created_at(source, datetime(2026, 3, 2, 10, 0, 10, tzinfo=UTC))
    with capture(execute=True):
        actions.schedule_due(datetime(2026, 3, 2, 10, 1, tzinfo=UTC))
        # The scheduler stalls for ten minutes, then ticks again.
        created = actions.schedule_due(datetime(2026, 3, 2, 10, 11, 2, tzinfo=UTC))
    slots = sorted(r.scheduled_for.minute for r in BackupRun.objects.all() if r.scheduled_for)
    assert slots == [1, 11]  # never ten runs for ten past minutes
    assert len(created) == 1
    assert django_rq.get_queue("backups").count == 2
    note = Notification.objects.get()
    assert note.kind == "BACKUP_MISSED"
    assert note.title == "Backup of cache: 9 scheduled slot(s) MISSED"
    assert "2026-03-02 10:02:00, 2026-03-02 10:03:00" in note.body and "and 4 more" in note.body
    source.refresh_from_db()
    assert source.missed_at == datetime(2026, 3, 2, 10, 11, 2, tzinfo=UTC)
    # A retried tick reports nothing twice.
    with capture(execute=True):
        assert actions.schedule_due(datetime(2026, 3, 2, 10, 11, 30, tzinfo=UTC)) == []
    assert Notification.objects.count() == 1

    request = rf.get("/")
    request.user = viewer
    context = backups_panel(request)
    assert [row["source"].name for row in context["missed"]] == []  # 2026: older than fresh
    source.missed_at = datetime.now(tz=UTC)
    source.save(update_fields=["missed_at"])
    context = backups_panel(request)
    assert [row["source"].name for row in context["missed"]] == ["cache"]
    html = render_to_string("backups/panel.html", {"panel": context})
    assert "missed slot" in html and "9 slot(s) of cache (* * * * *) were skipped" in html


@pytest.mark.django_db
def test_a_slot_not_started_in_time_is_reported_missed_once(settings, ops_channel, capture):
    settings.BACKUP_MISSED_AFTER = 900
    source = make_source("db", SourceKind.POSTGRES, dsn="postgres://b@h", schedule="0 * * * *")
    now = datetime.now(tz=UTC).replace(microsecond=0)
    slot = now.replace(minute=0, second=0) - timedelta(hours=1)
    created_at(source, slot - timedelta(days=1))
    with capture(execute=True):
        run = BackupRun.objects.create(
            source=source, trigger=Trigger.SCHEDULE, scheduled_for=slot,
            status=RunStatus.QUEUED, status_changed_at=slot, created=slot,
        )  # fmt: skip
        assert actions.report_missed(slot + timedelta(seconds=899)) == []
        assert actions.report_missed(slot + timedelta(seconds=901)) == [run.pk]
        assert actions.report_missed(slot + timedelta(seconds=960)) == []
    note = Notification.objects.get()
    assert note.title == f"Backup of db MISSED its slot (run #{run.pk} not started)"
    assert "has not started after 901 s (limit 900 s); it is still queued" in note.body
    assert "Workers serving the backups queue: 0; running: nothing." in note.body
    run.refresh_from_db()
    source.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.missed_at is not None  # it still runs later
    assert source.missed_detail.startswith(f"The {slot:%Y-%m-%d %H:%M:%S} UTC slot of db")


@pytest.mark.django_db
def test_a_source_enabled_again_does_not_report_the_time_it_was_off(capture, ops_channel):
    source = make_source("cache", SourceKind.REDIS, dsn="redis://h:6379", schedule="* * * * *")
    created_at(source, datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    source.enabled = False
    source.save()
    with capture(execute=True):
        actions.schedule_due(datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC))
        BackupSource.objects.filter(pk=source.pk).update(enabled=True)
        created = actions.schedule_due(datetime(2026, 3, 2, 10, 1, 5, tzinfo=UTC))
    assert [r.scheduled_for.minute for r in BackupRun.objects.all()] == [1]
    assert len(created) == 1 and not Notification.objects.exists()
