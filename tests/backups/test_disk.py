"""Disk space: an alert once when a watched path passes the threshold, naming what fills it."""

import pytest

from backups.disk import largest_consumers, usage
from backups.jobs import watch_disks
from backups.models import DiskWatch
from portal.models import AuditEvent


@pytest.mark.django_db
def test_alert_names_the_largest_consumers_once_per_crossing(tmp_path, settings, caplog, capture):
    watched = tmp_path / "storage"
    (watched / "pg").mkdir(parents=True)
    (watched / "pg" / "dump").write_bytes(b"x" * 3_000_000)
    (watched / "small").write_bytes(b"x" * 10_000)
    percent = usage(watched).percent
    assert largest_consumers(watched)[0] == (str(watched / "pg"), pytest.approx(3_000_000, rel=0.1))

    settings.BACKUP_DISK_ALERT_PERCENT = 100  # this machine's disk is not that full
    assert watch_disks() == []
    settings.BACKUP_DISK_ALERT_PERCENT = max(1, int(percent) - 1)
    with capture(execute=True):
        assert watch_disks() == [str(watched)]
    assert watch_disks() == []  # still over: no repeat
    event = AuditEvent.objects.get(event_type="DISK_SPACE_ALERT")
    assert event.details["largest"][0]["path"] == str(watched / "pg")
    assert DiskWatch.objects.get().alerting
    assert any("is" in r.message and "largest" in r.message.lower() for r in caplog.records)
    settings.BACKUP_DISK_ALERT_PERCENT = 100
    watch_disks()
    assert not DiskWatch.objects.get().alerting  # back under: the next crossing alerts again
