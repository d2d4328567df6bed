"""Scheduling: due runs from each source's cron, missed runs reported, lost runs reaped."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from backups import faults
from backups.actions.common import (
    RUN_JOB,
    _announce_run,
    _due,
    _enqueue,
    _enqueue_on_commit,
    _move_run,
    _notify,
    job_alive,
    notify_failure,
    run_job_id,
)
from backups.choices import (
    RunStatus,
    Trigger,
)
from backups.models import (
    BackupRun,
    BackupSource,
)
from portal.audit import Actor, record
from portal.choices import AuditEventType, NotificationKind
from portal.lib import jobs


def _record_missed(
    source: BackupSource, now: datetime, title: str, detail: str, subject: Model
) -> None:
    """Show a missed slot on the source (dashboard) and notify (inside the transaction)."""
    BackupSource.objects.filter(pk=source.pk).update(missed_at=now, missed_detail=detail[:500])
    _notify(
        NotificationKind.BACKUP_MISSED,
        title=title,
        body=detail,
        subject=subject,
        severity="warning",
    )


def schedule_due(now: datetime | None = None) -> list[int]:
    """The per-minute tick: create (once) and enqueue each source's newest due slot.

    Slots start at the source's creation. Each source keeps a horizon: every
    slot up to it was created or reported. A tick creates only the newest
    slot past the horizon (a late tick never starts a burst of runs for the
    minutes it missed) and reports the older ones it skipped as missed. The
    horizon moves by compare-and-swap and the slot's row is unique on
    (source, slot), so a second scheduler, a restart or a retried tick
    creates nothing twice. Nothing here waits on a backup: runs go to the
    ``backups`` queue.
    """
    now = now or timezone.now()
    # A disabled source skips its slots on purpose: its horizon follows the clock, so
    # enabling it later does not report the time it was off as missed.
    BackupSource.objects.filter(enabled=False).update(schedule_horizon=now)
    created = []
    for source in BackupSource.objects.filter(enabled=True):
        run = _schedule_source(source, now)
        if run is not None:
            created.append(run.pk)
    return created


def _schedule_source(source: BackupSource, now: datetime) -> BackupRun | None:
    horizon = source.schedule_horizon
    since = max(horizon, source.created) if horizon else source.created
    slot, skipped, count = _due(source.cron, since, now)
    if slot is None:
        return None
    with transaction.atomic():
        unchanged: dict[str, Any] = (
            {"schedule_horizon": horizon} if horizon else {"schedule_horizon__isnull": True}
        )
        won = BackupSource.objects.filter(pk=source.pk, **unchanged).update(schedule_horizon=now)
        if not won:
            return None  # another tick moved the horizon first: it does this slot
        if count:
            names = ", ".join(f"{s:%Y-%m-%d %H:%M:%S}" for s in skipped)
            more = f" and {count - len(skipped)} more" if count > len(skipped) else ""
            _record_missed(
                source,
                now,
                title=f"Backup of {source.name}: {count} scheduled slot(s) MISSED",
                detail=f"{count} slot(s) of {source.name} ({source.cron}) were skipped: {names}"
                f"{more} UTC. The scheduler did not tick in time (is `rqcron` and the control "
                f"worker running?); only the newest slot, {slot:%Y-%m-%d %H:%M:%S} UTC, is run.",
                subject=source,
            )
        try:
            with transaction.atomic():
                run = BackupRun.objects.create(
                    source=source,
                    trigger=Trigger.SCHEDULE,
                    scheduled_for=slot,
                    requested_by="system:scheduler",
                    status=RunStatus.QUEUED,
                    status_changed_at=now,
                    created=timezone.now(),
                )
        except IntegrityError:
            return None  # this slot already has its run
        _announce_run(run, f"scheduled for {slot:%H:%M}")
        _enqueue_on_commit(RUN_JOB, run.pk, run_job_id(run.pk))
    return run


def _busy_workers() -> str:
    """What the backups workers are doing, for a missed-slot report."""
    from rq import Queue, Worker

    from portal.lib.redis import get_redis

    running = [
        f"#{r.pk} {r.source.name} (since {r.started_at:%H:%M:%S} UTC, "
        f"{r.progress_bytes / 1e6:.1f} MB so far)"
        for r in BackupRun.objects.select_related("source")
        .filter(status=RunStatus.RUNNING)
        .order_by("started_at")[:5]
    ]
    try:
        workers = len(Worker.all(queue=Queue("backups", connection=get_redis())))
    except Exception:  # Redis down: say so rather than fail the report
        workers = None
    serving = "unknown (Redis unreachable)" if workers is None else str(workers)
    doing = "; ".join(running) if running else "nothing"
    return f"Workers serving the backups queue: {serving}; running: {doing}."


def report_missed(now: datetime | None = None) -> list[int]:
    """Notify once per scheduled run still QUEUED ``BACKUP_MISSED_AFTER`` s after its slot.

    It stays queued and runs when a worker is free; the report (and the
    dashboard) says it is late and what keeps the workers busy.
    """
    now = now or timezone.now()
    delay = faults.missed_after()
    reported = []
    late = BackupRun.objects.select_related("source").filter(
        trigger=Trigger.SCHEDULE,
        status=RunStatus.QUEUED,
        missed_at__isnull=True,
        scheduled_for__lte=now - timedelta(seconds=delay),
    )
    for run in late:
        with transaction.atomic():
            if not BackupRun.objects.filter(
                pk=run.pk, status=RunStatus.QUEUED, missed_at__isnull=True
            ).update(missed_at=now):
                continue
            run.missed_at = now
            waited = (now - (run.scheduled_for or run.created)).total_seconds()
            detail = (
                f"The {run.scheduled_for:%Y-%m-%d %H:%M:%S} UTC slot of {run.source.name} "
                f"(run #{run.pk}) has not started after {waited:.0f} s (limit "
                f"{delay} s); it is still queued. {_busy_workers()}"
            )
            _record_missed(
                run.source,
                now,
                title=f"Backup of {run.source.name} MISSED its slot (run #{run.pk} not started)",
                detail=detail,
                subject=run,
            )
            _announce_run(run, f"MISSED: not started {waited:.0f} s after its slot")
        reported.append(run.pk)
    return reported


def reap_lost_runs(now: datetime | None = None) -> list[int]:
    """FAIL (worker lost) every RUNNING backup whose worker stopped reporting. Never re-runs."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE)
    lost = BackupRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=now - grace)
    return jobs.reap(lost.values_list("pk", flat=True), lambda pk: _fail_lost_run(pk, now))


def _fail_lost_run(pk: int, now: datetime) -> bool:
    with transaction.atomic():
        if not _move_run(
            pk, RunStatus.RUNNING, RunStatus.FAILED,
            finished_at=now, error="worker lost: no progress reported",
            failure_cause=faults.FailureCause.WORKER_LOST,
        ):  # fmt: skip
            return False
        run = BackupRun.objects.select_related("source").get(pk=pk)
        record(
            AuditEventType.BACKUP_RUN_FAILED,
            actor=Actor.system("reaper"),
            subject=run,
            details={"source": run.source.name, "error": run.error},
        )
        _announce_run(run, "FAILED: worker lost")
        notify_failure(run)
    return True


def reconcile_queued(now: datetime | None = None) -> list[int]:
    """Re-enqueue QUEUED runs whose job vanished (Redis flushed or restarted)."""
    now = now or timezone.now()
    requeued = []
    for run in BackupRun.objects.filter(
        status=RunStatus.QUEUED, restore__isnull=True, created__lt=now - timedelta(seconds=60)
    ):
        if not job_alive(run_job_id(run.pk)):
            _enqueue(RUN_JOB, run.pk, run_job_id(run.pk))
            requeued.append(run.pk)
    return requeued
