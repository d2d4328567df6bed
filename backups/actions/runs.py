"""A backup run's life: requested, claimed by a worker, progressing, finished; freshness alerts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backups import faults

if TYPE_CHECKING:
    from backups.runner import RunOutcome
from backups.actions.common import (
    RUN_JOB,
    RUN_PERMISSION,
    BackupError,
    _actor,
    _announce_run,
    _enqueue_on_commit,
    _move_run,
    _notify,
    _require_perm,
    notify_failure,
    run_event,
    run_job_id,
)
from backups.actions.drills import last_good_drill
from backups.choices import (
    RunStatus,
    Trigger,
)
from backups.models import (
    BackupArtifact,
    BackupRun,
    BackupSource,
    fresh_since,
)
from portal.audit import Actor, record
from portal.choices import AuditEventType, NotificationKind
from portal.live import publish


def request_run(
    source: BackupSource | str,
    *,
    by: User | Actor | str,
    enqueue: bool = True,
) -> BackupRun:
    """Queue a manual ("run now") backup of ``source``; the worker picks it up on commit."""
    actor = _actor(by)
    _require_perm(actor.user, RUN_PERMISSION, "start backups")
    if isinstance(source, str):
        found = BackupSource.objects.filter(name=source).first()
        if found is None:
            raise BackupError("not_found", f"No backup source {source!r}.")
        source = found
    now = timezone.now()
    with transaction.atomic():
        run = BackupRun.objects.create(
            source=source,
            trigger=Trigger.MANUAL,
            requested_by=actor.label,
            status=RunStatus.QUEUED,
            status_changed_at=now,
            created=now,
        )
        record(
            AuditEventType.BACKUP_RUN_REQUESTED,
            actor=actor,
            subject=run,
            details={"source": source.name, "trigger": run.trigger},
        )
        _announce_run(run, f"queued by {actor.label}")
        if enqueue:
            _enqueue_on_commit(RUN_JOB, run.pk, run_job_id(run.pk))
    return run


def claim_run(run_id: int, *, job_id: str) -> BackupRun | None:
    """QUEUED -> RUNNING for exactly one worker; the others get None."""
    now = timezone.now()
    with transaction.atomic():
        if not _move_run(
            run_id, RunStatus.QUEUED, RunStatus.RUNNING,
            started_at=now, heartbeat_at=now, job_id=job_id,
        ):  # fmt: skip
            return None
        run = BackupRun.objects.select_related("source").get(pk=run_id)
        record(
            AuditEventType.BACKUP_RUN_STARTED,
            actor=Actor.system("worker"),
            subject=run,
            details={"source": run.source.name, "trigger": run.trigger, "job_id": job_id},
        )
        _announce_run(run, "running")
    return run


def report_progress(run: BackupRun, progress_bytes: int) -> None:
    """Record and push a run's progress (called outside transactions, throttled by the caller)."""
    now = timezone.now()
    BackupRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        progress_bytes=progress_bytes, heartbeat_at=now
    )
    run.progress_bytes = progress_bytes
    publish(run_event(run, "progress"), dashboard=True)


def finish_run(run_id: int, outcome: RunOutcome) -> BackupRun | None:
    """RUNNING -> SUCCEEDED (files committed) or FAILED, with sizes, checksum and stderr."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "finished_at": now,
        "heartbeat_at": now,
        "duration_s": round(outcome.duration_s, 3),
        "stderr": outcome.stderr,
        "error": outcome.error[:4000],
        "bytes_raw": outcome.bytes_raw,
        "bytes_stored": outcome.bytes_stored,
    }
    if outcome.ok:
        fields.update(
            checksum=outcome.manifest_sha256,
            artifact_path=outcome.run_key,
            progress_bytes=outcome.bytes_raw,
        )
    else:  # progress_bytes stays: how far it got
        fields["failure_cause"] = outcome.cause or faults.FailureCause.TOOL_ERROR
    new = RunStatus.SUCCEEDED if outcome.ok else RunStatus.FAILED
    with transaction.atomic():
        if not _move_run(run_id, RunStatus.RUNNING, new, **fields):
            return None  # the reaper already ended it; its verdict stands
        run = BackupRun.objects.select_related("source").get(pk=run_id)
        for item in outcome.artifacts if outcome.ok else []:
            BackupArtifact.objects.create(
                run=run,
                component=item.component,
                key=item.key,
                format=item.format,
                bytes_raw=item.stream.bytes_raw,
                bytes_stored=item.stream.bytes_stored,
                sha256=item.stream.sha256,
                **item.stream.recorded(),
            )
        record(
            AuditEventType.BACKUP_RUN_SUCCEEDED if outcome.ok else AuditEventType.BACKUP_RUN_FAILED,
            actor=Actor.system("worker"),
            subject=run,
            details={
                "source": run.source.name,
                "bytes_raw": run.bytes_raw,
                "bytes_stored": run.bytes_stored,
                "checksum": run.checksum,
                "duration_s": run.duration_s,
                "components": [a.component for a in outcome.artifacts],
                "error": run.error[:1000],
                "cause": run.failure_cause,
            },
        )
        summary = (
            f"succeeded: {run.bytes_stored} bytes stored in {run.duration_s:.1f}s"
            if outcome.ok
            else f"FAILED: {run.error[:200]}"
        )
        _announce_run(run, summary)
        if not outcome.ok:
            notify_failure(run)
    return run


def check_freshness(now: datetime | None = None) -> dict[str, list[str]]:
    """Notify once when a source loses its fresh verified backup, and once when it has one again."""
    now = now or timezone.now()
    fresh_after = fresh_since(now)  # a source younger than this has missed nothing yet
    changed: dict[str, list[str]] = {"stale": [], "fresh": []}
    drill_after = now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS)
    for source in BackupSource.objects.filter(enabled=True):
        last = BackupRun.objects.of_source(source).last_good()
        fresh = bool(last and last.is_fresh(now))
        drilled = ""
        if fresh and source.drill_target_id and source.created < drill_after:
            # With drills configured, fresh also means a recent drill that met its target
            # (a source younger than the drill window has not missed one yet).
            drill = last_good_drill(source)
            if not (drill and drill.finished_at and drill.finished_at >= drill_after):
                fresh = False
                drilled = (
                    f" Last good restore drill: {drill.finished_at if drill else 'never'} "
                    f"(needed within {settings.BACKUP_DRILL_FRESH_DAYS} days)."
                )
        # A source younger than the window has not missed anything yet.
        if not fresh and source.created >= fresh_after:
            continue
        with transaction.atomic():
            if not fresh and BackupSource.objects.filter(
                pk=source.pk, stale_since__isnull=True
            ).update(stale_since=now):
                _notify(
                    NotificationKind.BACKUP_STALE,
                    title=f"No fresh backup of {source.name}",
                    body=f"Last good backup: {last.created if last else 'never'} "
                    f"(fresh means verified, not awaiting acceptance, and under "
                    f"{settings.BACKUP_FRESH_HOURS} h old).{drilled}",
                    subject=source,
                    severity="warning",
                )
                changed["stale"].append(source.name)
            elif fresh and BackupSource.objects.filter(
                pk=source.pk, stale_since__isnull=False
            ).update(stale_since=None):
                changed["fresh"].append(source.name)
    return changed


def previous_good(run: BackupRun) -> BackupRun | None:
    """The good backup before ``run`` (what a shrink is measured against)."""
    return (
        BackupRun.objects.of_source(run.source_id)
        .filter(created__lt=run.created)
        .exclude(pk=run.pk)
        .last_good()
    )


def _notify_shrunk(run: BackupRun, previous: BackupRun) -> None:
    percent = 100 * run.bytes_raw / previous.bytes_raw
    _notify(
        "BACKUP_FAILED",
        title=f"Backup of {run.source.name} is suspiciously small (run #{run.pk}, "
        f"{percent:.0f}% of the last good one): NOT counted until accepted",
        body=(
            f"Run #{run.pk} of {run.source.name} verified, but holds {run.bytes_raw} bytes, "
            f"{percent:.1f}% of the previous good backup #{previous.pk} "
            f"({previous.bytes_raw} bytes; alert under {settings.BACKUP_SHRINK_ALERT_PERCENT}%). "
            f"Until an approver or administrator accepts it (admin: Backup runs › "
            f'"Accept a suspiciously small backup"), #{previous.pk} stays the last good '
            "backup: freshness, retention and restores go by it, and backup_verify exits 1."
        ),
        subject=run,
        severity="critical",
    )
