"""Backup storage disk usage alerts."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups.actions.common import _notify
from backups.models import (
    DiskWatch,
)
from portal.audit import Actor, record
from portal.choices import AuditEventType


def record_disk_usage(
    path: str, percent: float, consumers: Callable[[], Iterable[tuple[str, int]]]
) -> bool:
    """Store a watched path's usage; alert once when it crosses the threshold. True if alerted.

    ``consumers`` is called only when alerting (walking a big tree is not free).
    The alert is an audit event and a WARNING log line until the incidents app
    can open an incident for it.
    """
    threshold = settings.BACKUP_DISK_ALERT_PERCENT
    now = timezone.now()
    with transaction.atomic():
        watch, _ = DiskWatch.objects.select_for_update().get_or_create(path=path)
        over = percent >= threshold
        alert = over and not watch.alerting
        watch.percent = percent
        watch.checked_at = now
        if alert:
            largest = list(consumers())
            top = [{"path": p, "bytes": b} for p, b in largest]
            watch.consumers = top
            watch.alerted_at = now
            record(
                AuditEventType.DISK_SPACE_ALERT,
                actor=Actor.system("disk-watch"),
                subject=("backups.diskwatch", str(watch.pk)),
                details={"path": path, "percent": percent, "threshold": threshold, "largest": top},
            )
            names = ", ".join(f"{p} ({b / 1e6:.0f} MB)" for p, b in largest)
            _notify(
                "DISK_SPACE",
                title=f"disk space: {path} is {percent:.0f}% full",
                body=f"{path} is {percent:.1f}% full (alert at {threshold}%). Largest: {names}",
                subject=("backups.diskwatch", str(watch.pk)),
                severity="warning",
            )
        watch.alerting = over
        watch.save()
    return alert
