"""Restore drills: scheduling, claiming, recording their measured restore times."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups.actions.common import (
    RUN_PERMISSION,
    BackupError,
    _actor,
    _due,
    _enqueue_on_commit,
    _notify,
    _require_perm,
)
from backups.choices import (
    DRILL_TRANSITIONS,
    DrillStatus,
    Trigger,
)
from backups.models import (
    BackupDrill,
    BackupRun,
    BackupSource,
)
from backups.scrub import scrub
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind
from portal.lib import jobs
from portal.lib.transitions import compare_and_swap
from portal.live import LiveEvent, publish

DRILL_JOB = "backups.jobs.run_drill"


def drill_job_id(drill_id: int) -> str:
    return f"backup-drill-{drill_id}"


def _move_drill(drill_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(BackupDrill, drill_id, current, new, DRILL_TRANSITIONS, **fields)


def _announce_drill(drill: BackupDrill, summary: str = "") -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.BACKUP_RUN,
            subject_type="backups.backupdrill",
            subject_id=str(drill.pk),
            status=drill.status,
            summary=summary[:300],
            data={
                "source": drill.source.name,
                "rto_seconds": drill.rto_seconds,
                "rto_target_seconds": drill.rto_target_seconds,
                "met_target": drill.met_target,
            },
        )
    )


def _drillable(source: BackupSource) -> None:
    target = source.drill_target
    if target is None:
        raise BackupError(
            "drill", f"{source.name} has no drill target (Backup sources › Restore drills)."
        )
    if not target.enabled or not target.drills or target.kind != source.kind:
        raise BackupError(
            "drill",
            f"restore target {target.name} is not an enabled {source.get_kind_display()} "
            "target registered for drills.",
        )


def request_drill(
    source: BackupSource | str, *, by: User | Actor | str, enqueue: bool = True
) -> BackupDrill:
    """Queue a restore drill of ``source`` now (admin action, ``backup_drill``)."""
    actor = _actor(by)
    _require_perm(actor.user, RUN_PERMISSION, "run restore drills")
    if isinstance(source, str):
        found = BackupSource.objects.select_related("drill_target").filter(name=source).first()
        if found is None:
            raise BackupError("not_found", f"No backup source {source!r}.")
        source = found
    _drillable(source)
    now = timezone.now()
    with transaction.atomic():
        drill = BackupDrill.objects.create(
            source=source, target=source.drill_target, trigger=Trigger.MANUAL,
            requested_by=actor.label, status=DrillStatus.QUEUED, status_changed_at=now,
            created=now,
        )  # fmt: skip
        record(
            AuditEventType.BACKUP_DRILL_REQUESTED,
            actor=actor,
            subject=drill,
            details={"source": source.name, "target": drill.target.name if drill.target else None},
        )
        _announce_drill(drill, f"queued by {actor.label}")
        if enqueue:
            _enqueue_on_commit(DRILL_JOB, drill.pk, drill_job_id(drill.pk))
    return drill


def schedule_drills(now: datetime | None = None) -> list[int]:
    """Create (once per slot, like backups) and enqueue each drilled source's due drill."""
    now = now or timezone.now()
    created = []
    for source in BackupSource.objects.filter(enabled=True, drill_target__isnull=False):
        horizon = source.drill_horizon
        since = max(horizon, source.created) if horizon else source.created
        slot, _, _ = _due(source.drill_cron, since, now)
        if slot is None:
            continue
        with transaction.atomic():
            unchanged: dict[str, Any] = (
                {"drill_horizon": horizon} if horizon else {"drill_horizon__isnull": True}
            )
            won = BackupSource.objects.filter(pk=source.pk, **unchanged).update(drill_horizon=now)
            if not won:
                continue
            try:
                with transaction.atomic():
                    drill = BackupDrill.objects.create(
                        source=source, target=source.drill_target, trigger=Trigger.SCHEDULE,
                        scheduled_for=slot, requested_by="system:scheduler",
                        status=DrillStatus.QUEUED, status_changed_at=now, created=timezone.now(),
                    )  # fmt: skip
            except IntegrityError:
                continue
            _announce_drill(drill, f"scheduled for {slot:%Y-%m-%d %H:%M}")
            _enqueue_on_commit(DRILL_JOB, drill.pk, drill_job_id(drill.pk))
        created.append(drill.pk)
    return created


def claim_drill(drill_id: int, *, job_id: str) -> BackupDrill | None:
    """QUEUED -> RUNNING for one worker, with the backup it will restore (the newest good one)."""
    now = timezone.now()
    with transaction.atomic():
        drill = (
            BackupDrill.objects.select_related("source__drill_target").filter(pk=drill_id).first()
        )
        if drill is None or drill.status != DrillStatus.QUEUED:
            return None
        run = BackupRun.objects.of_source(drill.source).last_good()
        if not _move_drill(
            drill_id, DrillStatus.QUEUED, DrillStatus.RUNNING,
            started_at=now, heartbeat_at=now, job_id=job_id, run=run,
            rto_target_seconds=drill.source.rto_target,
        ):  # fmt: skip
            return None
        drill.refresh_from_db()
        record(
            AuditEventType.BACKUP_DRILL_STARTED,
            actor=Actor.system("worker"),
            subject=drill,
            details={
                "source": drill.source.name,
                "run": run.pk if run else None,
                "target": drill.target.name if drill.target else None,
            },
        )
        _announce_drill(drill, "running")
    return drill


def finish_drill(drill_id: int, *, report: dict[str, Any], error: str = "") -> BackupDrill | None:
    """RUNNING -> SUCCEEDED (restored and validated) or FAILED; timed against the target.

    A failed drill, or one over its RTO target, is notified (BACKUP_FAILED) and audited
    as BACKUP_DRILL_FAILED.
    """
    now = timezone.now()
    error = scrub(error)
    ok = bool(report.get("ok")) and not error
    rto = report.get("rto_seconds")
    with transaction.atomic():
        drill = BackupDrill.objects.select_related("source").get(pk=drill_id)
        target_s = drill.rto_target_seconds or drill.source.rto_target
        met = bool(ok and rto is not None and rto <= target_s)
        if not _move_drill(
            drill_id, DrillStatus.RUNNING,
            DrillStatus.SUCCEEDED if ok else DrillStatus.FAILED,
            finished_at=now, heartbeat_at=now, report=report, error=error[:8000],
            rto_seconds=rto, rto_target_seconds=target_s, met_target=met if ok else False,
        ):  # fmt: skip
            return None
        drill.refresh_from_db()
        record(
            AuditEventType.BACKUP_DRILL_SUCCEEDED if met else AuditEventType.BACKUP_DRILL_FAILED,
            actor=Actor.system("worker"),
            subject=drill,
            details={
                "source": drill.source.name, "run": drill.run_id, "ok": ok,
                "rto_seconds": rto, "rto_target_seconds": target_s, "met_target": met,
                "error": error[:1000],
            },
        )  # fmt: skip
        if not ok:
            summary = f"FAILED: {(error or 'validation found a mismatch')[:200]}"
            _notify(
                "BACKUP_FAILED",
                title=f"restore drill of {drill.source.name} FAILED (drill #{drill.pk})",
                body=f"Drill #{drill.pk} of {drill.source.name} (backup #{drill.run_id}) into "
                f"{drill.target.name if drill.target else '?'}: "
                f"{(error or 'validation found a mismatch: see the report')[:2000]}",
                subject=drill,
                severity="critical",
            )
        elif not met:
            summary = f"OVER TARGET: {rto:.1f} s (target {target_s:g} s)"
            _notify(
                "BACKUP_FAILED",
                title=f"restore drill of {drill.source.name} OVER ITS RTO TARGET "
                f"({rto:.1f} s > {target_s:g} s)",
                body=f"Drill #{drill.pk} restored backup #{drill.run_id} of {drill.source.name} "
                f"correctly but took {rto:.1f} s, over the target of {target_s:g} s. Per "
                "component: "
                + ", ".join(
                    f"{c.get('component')} {c.get('restore_seconds')} s"
                    for c in report.get("components", [])
                ),
                subject=drill,
                severity="warning",
            )
        else:
            summary = f"succeeded: {rto:.1f} s (target {target_s:g} s)"
        _announce_drill(drill, summary)
    return drill


def reap_lost_drills(now: datetime | None = None) -> list[int]:
    """FAIL drills left RUNNING by a worker that died (no heartbeat within the grace)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE)
    lost = BackupDrill.objects.filter(status=DrillStatus.RUNNING, heartbeat_at__lt=cutoff)
    return jobs.reap(
        lost.values_list("pk", flat=True),
        lambda pk: finish_drill(pk, report={}, error="worker lost mid-drill"),
    )


def last_good_drill(source: BackupSource) -> BackupDrill | None:
    return (
        BackupDrill.objects.filter(source=source, status=DrillStatus.SUCCEEDED, met_target=True)
        .order_by("-finished_at")
        .first()
    )
