"""The dashboard's backups panel: failed and slow restore drills, overdue drills and failed
second copies need attention; the panel's queries do not grow with the sources."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backups.choices import DrillStatus
from backups.dashboard import backups_panel
from backups.models import BackupDrill, BackupRun, BackupSource, RestoreTarget
from tests.portal import dashboard_world as world

pytestmark = pytest.mark.django_db


def _drill(source, *, status=DrillStatus.SUCCEEDED, rto=20.0, target=300.0, error="",
           age=timedelta(hours=2)):  # fmt: skip
    at = timezone.now() - age
    return BackupDrill.objects.create(
        source=source, trigger="schedule", status=status, status_changed_at=at, created=at,
        started_at=at, finished_at=at + timedelta(seconds=rto), rto_seconds=rto,
        rto_target_seconds=target, met_target=None if status == DrillStatus.FAILED
        else rto <= target, error=error,
    )  # fmt: skip


def _rows(client) -> tuple[str, dict[str, str]]:
    html = client.get("/").content.decode()
    return html, dict(re.findall(r'<li data-source="([\w-]+)"(.*?)</li>', html, re.S))


def test_failed_and_slow_drills_and_failed_copies_need_attention(client, viewer):
    good, _ = world.backup_source("drilled")
    _drill(good)
    failed, _ = world.backup_source("drill-failed")
    _drill(good, age=timedelta(days=3))  # an older drill of another source changes nothing
    broken = _drill(failed, status=DrillStatus.FAILED, error="restore: connection refused\nmore")
    slow, _ = world.backup_source("drill-slow")
    _drill(slow, rto=420.0, target=300.0)
    copy, runs = world.backup_source("copy-failed")
    BackupRun.objects.filter(pk=runs[0].pk).update(copy_error="S3 PUT: 403 AccessDenied")
    client.force_login(viewer)
    html, rows = _rows(client)
    assert 'class="attention"' not in rows["drilled"]
    assert "drill " in rows["drilled"] and "restore 20 s of 5 min 0 s" in rows["drilled"]
    assert "last drill FAILED: restore: connection refused" in rows["drill-failed"]
    assert f'href="/admin/backups/backupdrill/{broken.pk}/change/"' in rows["drill-failed"]
    assert "last drill over its RTO target (420 s &gt; 300 s)" in rows["drill-slow"]
    assert "offsite copy failed" in rows["copy-failed"]
    assert "S3 PUT: 403 AccessDenied" in rows["copy-failed"]  # on hover
    assert f'href="/admin/backups/backuprun/{runs[0].pk}/change/"' in rows["copy-failed"]
    for name in ("drill-failed", "drill-slow", "copy-failed"):
        assert 'class="attention"' in rows[name], name
    assert "3 need attention" in html


def test_a_source_with_drills_configured_and_no_recent_good_drill_says_so(client, viewer):
    target = RestoreTarget.objects.create(
        name="drill-redis", kind="redis", host="192.0.2.9", port=6379, drills=True
    )
    source, _ = world.backup_source("overdue")
    BackupSource.objects.filter(pk=source.pk).update(
        drill_target=target, created=timezone.now() - timedelta(days=30)
    )
    _drill(source, age=timedelta(days=20))
    client.force_login(viewer)
    _, rows = _rows(client)
    assert "no good drill in 8 days" in rows["overdue"]


def _panel_queries(user) -> int:
    request = RequestFactory().get("/")
    request.user = user
    with CaptureQueriesContext(connection) as queries:
        panel = backups_panel(request)
    assert panel["sources"]
    return len(queries)


def test_the_panel_costs_the_same_queries_for_2_and_12_sources(viewer):
    def grow(start: int, stop: int) -> None:
        for i in range(start, stop):
            source, runs = world.backup_source(f"src-{i}", failed=i % 2 == 0)
            _drill(source, status=DrillStatus.FAILED if i % 3 == 0 else DrillStatus.SUCCEEDED)
            BackupRun.objects.filter(pk=runs[0].pk).update(copy_error="x" if i % 2 else "")

    grow(0, 2)
    small = _panel_queries(viewer)
    grow(2, 12)
    assert _panel_queries(viewer) == small
