"""The backups panel of the dashboard: each source's last backup, missed slots, runs in progress."""

from datetime import timedelta

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from backups.choices import RunStatus, Verification
from backups.models import BackupRun, BackupSource, RestoreRequest
from portal.dashboard import panel


@panel
def backups_panel(request) -> dict:
    now = timezone.now()
    fresh = now - timedelta(hours=settings.BACKUP_FRESH_HOURS)
    rows = []
    for source in BackupSource.objects.all():
        last = (
            BackupRun.objects.filter(
                source=source, status=RunStatus.SUCCEEDED, restore__isnull=True
            )
            .order_by("-created")
            .first()
        )
        latest = (
            BackupRun.objects.filter(source=source, restore__isnull=True)
            .exclude(status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
            .order_by("-created")
            .first()
        )
        rows.append(
            {
                "source": source,
                "last": last,
                "ok": bool(
                    last
                    and last.verification == Verification.VERIFIED
                    and last.created >= fresh
                    and not last.shrink_flag
                ),
                # The newest finished run failed: say why (cause, as classified).
                "failed": latest if latest and latest.status == RunStatus.FAILED else None,
                # A slot missed within the freshness window stays visible.
                "missed": bool(source.missed_at and source.missed_at >= fresh),
            }
        )
    running = list(
        BackupRun.objects.select_related("source")
        .filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        .order_by("created")[:20]
    )
    return {
        "template": "backups/panel.html",
        "sources": rows,
        "missed": [row for row in rows if row["missed"]],
        "running": running,
        "restores": list(RestoreRequest.objects.exclude(status__in=["REJECTED", "EXPIRED"])[:5]),
        "runs_url": reverse("admin:backups_backuprun_changelist"),
    }
