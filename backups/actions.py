"""Every write to backup and restore state. Admin, commands and jobs call these.

Status moves are compare-and-swap updates (``_move_run``, ``_move_restore``):
whoever loses a race changes nothing. Audit events are written in the same
transaction; live events and jobs go out only on commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from croniter import croniter
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups import faults, retention
from backups.choices import (
    DRILL_TRANSITIONS,
    RESTORE_TRANSITIONS,
    RUN_TRANSITIONS,
    DrillStatus,
    RestoreMode,
    RestoreStatus,
    RunStatus,
    Trigger,
    Verification,
    VerifyLevel,
)
from backups.models import (
    BackupArtifact,
    BackupDrill,
    BackupRun,
    BackupSource,
    DiskWatch,
    RestoreRequest,
    RestoreTarget,
)
from backups.scrub import last_lines, scrub
from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.errors import RequestRefused
from portal.lib.transitions import compare_and_swap
from portal.live import LiveEvent, publish

logger = logging.getLogger(__name__)

RUN_PERMISSION = "portal.execute_action"
PLAN_PERMISSION = "portal.propose_action"
RUN_JOB = "backups.jobs.run_backup"
VERIFY_JOB = "backups.jobs.verify_run"
RESTORE_JOB = "backups.jobs.run_restore"


class BackupError(RequestRefused):
    """A refused backup or restore request."""


def run_job_id(run_id: int) -> str:
    return f"backup-run-{run_id}"


def restore_job_id(restore_id: int) -> str:
    return f"backup-restore-{restore_id}"


# --- helpers -------------------------------------------------------------------------


def _move_run(run_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(BackupRun, run_id, current, new, RUN_TRANSITIONS, **fields)


def _move_restore(restore_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(RestoreRequest, restore_id, current, new, RESTORE_TRANSITIONS, **fields)


def run_event(run: BackupRun, summary: str = "", **data: Any) -> LiveEvent:
    """The live event of a run (small, declared shape: see ``portal.live.LiveEvent``)."""
    return LiveEvent(
        kind=LiveEventKind.BACKUP_RUN,
        subject_type="backups.backuprun",
        subject_id=str(run.pk),
        status=run.status,
        summary=summary[:300],
        data={
            "source": run.source.name,
            "kind": run.source.kind,
            "trigger": run.trigger,
            "progress_bytes": run.progress_bytes,
            "bytes_stored": run.bytes_stored,
            "verification": run.verification,
            **data,
        },
    )


def _announce_run(run: BackupRun, summary: str = "", **data: Any) -> None:
    publish(run_event(run, summary, **data))


def _announce_restore(obj: RestoreRequest, summary: str = "", **data: Any) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.BACKUP_RUN,
            subject_type="backups.restorerequest",
            subject_id=str(obj.pk),
            status=obj.status,
            summary=summary[:300],
            data={"target": obj.target_name, "mode": obj.mode, "phase": obj.phase, **data},
        )
    )


def _require_perm(user: AbstractBaseUser | None, perm: str, what: str) -> None:
    if user is not None and not user.has_perm(perm):
        raise BackupError("permission", f"You are not allowed to {what}.")


def _enqueue(func_path: str, obj_id: int, job_id: str) -> None:
    import django_rq

    django_rq.get_queue("backups").enqueue(
        func_path, obj_id, job_id=job_id, result_ttl=86400, failure_ttl=7 * 86400
    )


def _enqueue_on_commit(func_path: str, obj_id: int, job_id: str) -> None:
    transaction.on_commit(lambda: _enqueue(func_path, obj_id, job_id))


def _actor(by: AbstractBaseUser | Actor | str) -> Actor:
    return Actor.of(by)


# --- runs ------------------------------------------------------------------------------


def request_run(
    source: BackupSource | str,
    *,
    by: AbstractBaseUser | Actor | str,
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
        _announce_run(run, f"queued by {actor.label}")
        if enqueue:
            _enqueue_on_commit(RUN_JOB, run.pk, run_job_id(run.pk))
    return run


# Listed by name in a missed-slot report; beyond this only counted.
MISSED_LISTED = 5
# Counting skipped slots stops here (a per-minute schedule off for weeks).
MISSED_COUNTED = 10000


def _due(cron: str, since, now) -> tuple[Any, list, int]:
    """(newest slot in (since, now] or None, the older skipped ones listed, how many skipped)."""
    base = now.replace(microsecond=0) + timedelta(seconds=1)
    newest = croniter(cron, base).get_prev(type(now))
    if newest <= since or newest > now:
        return None, [], 0
    listed, count = [], 0
    it = croniter(cron, since)
    while count < MISSED_COUNTED:
        slot = it.get_next(type(now))
        if slot >= newest:
            break
        count += 1
        if len(listed) < MISSED_LISTED:
            listed.append(slot)
    return newest, listed, count


def _record_missed(source: BackupSource, now, title: str, detail: str, subject) -> None:
    """Show a missed slot on the source (dashboard) and notify (inside the transaction)."""
    BackupSource.objects.filter(pk=source.pk).update(missed_at=now, missed_detail=detail[:500])
    _notify(
        NotificationKind.BACKUP_MISSED,
        title=title,
        body=detail,
        subject=subject,
        severity="warning",
    )


def schedule_due(now=None) -> list[int]:
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


def _schedule_source(source: BackupSource, now) -> BackupRun | None:
    horizon = source.schedule_horizon
    since = max(horizon, source.created) if horizon else source.created
    slot, skipped, count = _due(source.cron, since, now)
    if slot is None:
        return None
    with transaction.atomic():
        won = BackupSource.objects.filter(
            pk=source.pk,
            **({"schedule_horizon": horizon} if horizon else {"schedule_horizon__isnull": True}),
        ).update(schedule_horizon=now)
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


def report_missed(now=None) -> list[int]:
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
            waited = (now - run.scheduled_for).total_seconds()
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


def finish_run(run_id: int, outcome) -> BackupRun | None:
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


def _notify(kind: str, *, title: str, body: str, subject, severity: str) -> None:
    """Send through the portal's notification channels (inside the caller's transaction).

    Always also a log line, so a portal without channels configured still says it.
    """
    log = logger.error if severity == "critical" else logger.warning
    transaction.on_commit(lambda: log("%s: %s", title, body[:500]))
    try:
        from portal import notify
    except ImportError:  # the notification channels are not there yet: the log line it is
        return
    notify.notify(kind, title=title, body=body, subject=subject, severity=severity)


def check_freshness(now=None) -> dict[str, list[str]]:
    """Notify once when a source loses its fresh verified backup, and once when it has one again."""
    now = now or timezone.now()
    fresh_after = now - timedelta(hours=settings.BACKUP_FRESH_HOURS)
    changed: dict[str, list[str]] = {"stale": [], "fresh": []}
    drill_after = now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS)
    for source in BackupSource.objects.filter(enabled=True):
        last = BackupRun.objects.of_source(source).usable().order_by("-created").first()
        fresh = bool(last and last.created >= fresh_after)
        drilled = ""
        if fresh and source.drill_target_id and source.created < drill_after:
            # With drills configured, fresh also means a recent drill that met its target
            # (a source younger than the drill window has not missed one yet).
            drill = last_good_drill(source)
            if not (drill and drill.finished_at >= drill_after):
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


ALERT_STDERR_LINES = 10


def notify_failure(run: BackupRun, what: str = "backup") -> None:
    """Tell people a backup (or its verification) failed, and why; call inside the transaction.

    The body names the classified cause and ends with the tool's last stderr lines,
    scrubbed of secrets (``backups.scrub``).
    """
    cause = f": {run.get_failure_cause_display()}" if run.failure_cause else ""
    said = last_lines(run.stderr, ALERT_STDERR_LINES) if what == "backup" else []
    body = (
        f"Source {run.source.name}, run #{run.pk}, trigger {run.trigger}"
        + (f", cause {run.failure_cause} ({run.get_failure_cause_display()})" if cause else "")
        + f": {scrub(run.error or run.verify_detail or 'see the run')[:2000]}"
    )
    if said:
        body += "\n\nLast lines the tool wrote to stderr:\n" + "\n".join(said)
    _notify(
        "BACKUP_FAILED",
        title=f"{what} of {run.source.name} FAILED (run #{run.pk}){cause}",
        body=body,
        subject=run,
        severity="critical",
    )


def previous_good(run: BackupRun) -> BackupRun | None:
    """The good backup before ``run`` (what a shrink is measured against)."""
    return (
        BackupRun.objects.of_source(run.source_id)
        .usable()
        .filter(created__lt=run.created)
        .exclude(pk=run.pk)
        .order_by("-created")
        .first()
    )


def record_verification(
    run_id: int,
    checks: dict[int, Any],
    *,
    by: AbstractBaseUser | Actor | str = "system:verifier",
    level: str = VerifyLevel.FULL,
) -> BackupRun:
    """Store each artifact's verdict and the run's; flag one much smaller than the last good.

    A full verification that passed makes the run VERIFIED; any failed check
    makes it FAILED. A quick check that passed changes no state (it read too
    little to vouch for the backup): it is audited, nothing more.
    """
    now = timezone.now()
    ok = bool(checks) and all(c.ok for c in checks.values())
    seconds = round(sum(c.seconds for c in checks.values()), 3)
    with transaction.atomic():
        run = BackupRun.objects.select_for_update().select_related("source").get(pk=run_id)
        lines = [
            f"{a.component}: {checks[a.pk].detail}" for a in run.artifacts.all() if a.pk in checks
        ]
        if ok and level == VerifyLevel.QUICK:
            BackupRun.objects.filter(pk=run.pk).update(verify_requested_at=None, verify_job_id="")
            run.refresh_from_db()
            record(
                AuditEventType.BACKUP_VERIFIED,
                actor=by,
                subject=run,
                details={
                    "source": run.source.name,
                    "level": level,
                    "seconds": seconds,
                    "state": run.verification,
                    "detail": "\n".join(lines)[:1000],
                },
            )
            return run
        for artifact in run.artifacts.all():
            check = checks.get(artifact.pk)
            if check is None:
                continue
            artifact.verification = Verification.VERIFIED if check.ok else Verification.FAILED
            artifact.verified_at = now
            artifact.verify_level = level
            artifact.verify_seconds = check.seconds
            artifact.verify_detail = check.detail[:4000]
            if check.ok or not artifact.facts:
                artifact.facts = check.facts
            artifact.save(
                update_fields=["verification", "verified_at", "verify_level", "verify_seconds",
                               "verify_detail", "facts"]
            )  # fmt: skip
        previous = previous_good(run)
        ratio = settings.BACKUP_SHRINK_ALERT_PERCENT / 100
        shrunk = bool(
            previous is not None
            and run.restore_id is None
            and previous.bytes_raw > 0
            and run.bytes_raw < previous.bytes_raw * ratio
        )
        if shrunk:
            lines.append(
                f"WARNING: {run.bytes_raw} bytes, under {settings.BACKUP_SHRINK_ALERT_PERCENT}% "
                f"of the previous good backup #{previous.pk} ({previous.bytes_raw} bytes)"
            )
        BackupRun.objects.filter(pk=run.pk).update(
            verification=Verification.VERIFIED if ok else Verification.FAILED,
            verified_at=now,
            verify_level=level,
            verify_seconds=seconds,
            verify_detail="\n".join(lines)[:8000],
            shrink_flag=shrunk,
            # A pending "verify again" request is answered by this verification.
            verify_requested_at=None,
            verify_job_id="",
        )
        run.refresh_from_db()
        record(
            AuditEventType.BACKUP_VERIFIED if ok else AuditEventType.BACKUP_VERIFY_FAILED,
            actor=by,
            subject=run,
            details={
                "source": run.source.name,
                "level": level,
                "seconds": seconds,
                "artifacts": {str(k): v.ok for k, v in checks.items()},
                "detail": run.verify_detail[:1000],
                "shrink_flag": shrunk,
            },
        )
        _announce_run(run, "verified" if ok else "verification FAILED")
        if not ok:
            notify_failure(run, "verification")
        elif shrunk and run.accepted_at is None:
            _notify_shrunk(run, previous)
    return run


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


ACCEPT_PERMISSIONS = (approvals.APPROVE_PERMISSION, "portal.manage_portal")


def accept_backup(run: BackupRun | int, *, by: AbstractBaseUser, reason: str) -> BackupRun:
    """A person (approver or administrator) vouches for a suspiciously small backup.

    Until then it does not count as a good backup (``BackupRun.objects.usable``).
    Audited (``BACKUP_ACCEPTED``, with the reason and the sizes). Accepting one
    already accepted changes nothing.
    """
    if by is None or not getattr(by, "is_authenticated", False):
        raise BackupError("permission", "Only a signed-in person can accept a backup.")
    if not any(by.has_perm(perm) for perm in ACCEPT_PERMISSIONS):
        raise BackupError(
            "permission", "Only approvers and administrators can accept a suspicious backup."
        )
    reason = " ".join((reason or "").split())
    if len(reason) < 5:
        raise BackupError("reason", "Accepting a backup needs a reason (at least 5 characters).")
    if len(reason) > 500:
        raise BackupError("reason", "The reason is longer than 500 characters.")
    run_id = run.pk if isinstance(run, BackupRun) else run
    with transaction.atomic():
        found = BackupRun.objects.select_related("source").filter(pk=run_id).first()
        if found is None:
            raise BackupError("not_found", f"No backup run #{run_id}.")
        if found.accepted_at is not None:
            return found
        if not found.awaiting_acceptance:
            raise BackupError(
                "state",
                f"Backup #{found.pk} is not awaiting acceptance (status {found.status}, "
                f"verification {found.verification}, "
                f"{'shrank' if found.shrink_flag else 'normal size'}"
                f"{', deleted' if found.deleted_at else ''}).",
            )
        now = timezone.now()
        # Compare-and-swap on the row's own columns: of two people accepting, one records it.
        won = (
            BackupRun.objects.awaiting_acceptance()
            .filter(pk=found.pk)
            .update(accepted_at=now, accepted_by=by.get_username(), accept_reason=reason)
        )
        if not won:
            found.refresh_from_db()
            if found.accepted_at is not None:
                return found
            raise BackupError("state", f"Backup #{found.pk} changed meanwhile; look again.")
        found.refresh_from_db()
        previous = previous_good(found)
        record(
            AuditEventType.BACKUP_ACCEPTED,
            actor=by,
            subject=found,
            details={
                "source": found.source.name,
                "reason": reason,
                "bytes_raw": found.bytes_raw,
                "previous_good": previous.pk if previous else None,
                "previous_bytes_raw": previous.bytes_raw if previous else None,
            },
        )
        _announce_run(found, f"accepted by {by.get_username()}: counts as a good backup")
    return found


def verify_job_id(run_id: int, when) -> str:
    return f"backup-verify-{run_id}-{int(when.timestamp() * 1000)}"


@dataclass(frozen=True)
class VerificationRequest:
    run: BackupRun
    queued: bool  # False: one was already pending, nothing new was queued
    message: str


def request_verification(
    run: BackupRun | int, *, by: AbstractBaseUser | Actor | str
) -> VerificationRequest:
    """Queue a re-verification of a stored backup ("Verify again now"), at most one at a time.

    While one is pending (its job still queued or running), a second request
    changes nothing and returns the pending one. A request whose job vanished
    (Redis flushed, worker crashed) is replaced. Audited (BACKUP_VERIFY_REQUESTED).
    """
    actor = _actor(by)
    _require_perm(actor.user, RUN_PERMISSION, "verify backups")
    run_id = run.pk if isinstance(run, BackupRun) else run
    found = BackupRun.objects.select_related("source").filter(pk=run_id).first()
    if found is None:
        raise BackupError("not_found", f"No backup run #{run_id}.")
    if found.status != RunStatus.SUCCEEDED or found.deleted_at is not None:
        raise BackupError(
            "state",
            f"Backup #{found.pk} has no stored files to verify ({found.status}"
            f"{', deleted' if found.deleted_at else ''}).",
        )
    pending_since = found.verify_requested_at
    if (
        pending_since is not None
        and found.verify_job_id
        and (job_alive(found.verify_job_id) or _reserved(found.verify_job_id))
    ):
        return VerificationRequest(
            found,
            False,
            f"Verification of backup #{found.pk} is already pending (requested by "
            f"{found.verify_requested_by} at {pending_since:%Y-%m-%d %H:%M:%S} UTC); "
            "nothing new was queued.",
        )
    now = timezone.now()
    job_id = verify_job_id(found.pk, now)
    with transaction.atomic():
        # Compare-and-swap on the request's own columns: of two racing clicks one wins.
        won = BackupRun.objects.filter(
            pk=found.pk, verify_requested_at=pending_since, verify_job_id=found.verify_job_id
        ).update(verify_requested_at=now, verify_requested_by=actor.label, verify_job_id=job_id)
        if not won:
            found.refresh_from_db()
            return VerificationRequest(
                found,
                False,
                f"Verification of backup #{found.pk} was just requested by "
                f"{found.verify_requested_by}; nothing new was queued.",
            )
        record(
            AuditEventType.BACKUP_VERIFY_REQUESTED,
            actor=actor,
            subject=found,
            details={
                "source": found.source.name,
                "job_id": job_id,
                "replaces": found.verify_job_id or None,
            },
        )
        label = f"user:{actor.label}" if actor.user is not None else actor.label
        _reserve(job_id)
        transaction.on_commit(lambda: _enqueue_verify(found.pk, label, job_id), robust=False)
    found.refresh_from_db()
    return VerificationRequest(found, True, f"Verification of backup #{found.pk} queued.")


# Between the request's commit and its job's enqueue, the job does not exist yet: a
# concurrent request must not take it for a vanished one. The reservation lasts until the
# job is enqueued (or this long, if the process died in between).
RESERVATION_SECONDS = 60


def _reservation(job_id: str) -> str:
    return f"backups:verify-reserved:{job_id}"


def _reserve(job_id: str) -> None:
    from portal.lib.redis import get_redis

    get_redis().set(_reservation(job_id), 1, ex=RESERVATION_SECONDS)


def _reserved(job_id: str) -> bool:
    from portal.lib.redis import get_redis

    return bool(get_redis().exists(_reservation(job_id)))


def _enqueue_verify(run_id: int, by: str, job_id: str) -> None:
    import django_rq

    from portal.lib.redis import get_redis

    django_rq.get_queue("backups").enqueue(
        VERIFY_JOB, run_id, by, job_id=job_id, result_ttl=86400, failure_ttl=7 * 86400
    )
    get_redis().delete(_reservation(job_id))


def reap_lost_runs(now=None) -> list[int]:
    """FAIL (worker lost) every RUNNING backup whose worker stopped reporting. Never re-runs."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE)
    reaped = []
    for pk in BackupRun.objects.filter(
        status=RunStatus.RUNNING, heartbeat_at__lt=now - grace
    ).values_list("pk", flat=True):
        with transaction.atomic():
            if not _move_run(
                pk, RunStatus.RUNNING, RunStatus.FAILED,
                finished_at=now, error="worker lost: no progress reported",
                failure_cause=faults.FailureCause.WORKER_LOST,
            ):  # fmt: skip
                continue
            run = BackupRun.objects.select_related("source").get(pk=pk)
            record(
                AuditEventType.BACKUP_RUN_FAILED,
                actor=Actor.system("reaper"),
                subject=run,
                details={"source": run.source.name, "error": run.error},
            )
            _announce_run(run, "FAILED: worker lost")
            notify_failure(run)
        reaped.append(pk)
    return reaped


def job_alive(job_id: str) -> bool:
    """Is the RQ job still waiting or running (False when Redis lost it)?"""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from portal.lib.redis import get_redis

    try:
        status = Job.fetch(job_id, connection=get_redis()).get_status()
    except NoSuchJobError:
        return False
    return status in {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def reconcile_queued(now=None) -> list[int]:
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


# --- retention --------------------------------------------------------------------------


@dataclass
class RetentionResult:
    source: str
    keep: list[int]
    delete: list[int]
    dry_run: bool


def apply_retention(
    source: BackupSource,
    *,
    now=None,
    dry_run: bool = False,
    by: AbstractBaseUser | Actor | str = "system:retention",
) -> RetentionResult:
    """Delete the files of backups past retention (never the newest verified one)."""
    from backups.storage import get_storage

    now = now or timezone.now()
    runs = list(BackupRun.objects.filter(source=source).stored().order_by("created"))
    # "Verified" for retention is a good backup: a suspiciously small one nobody accepted
    # never stands in for the previous good one.
    good = set(BackupRun.objects.filter(source=source).usable().values_list("pk", flat=True))
    candidates = [
        retention.Candidate(r.pk, r.created, r.pk in good)
        for r in runs
        if r.trigger != Trigger.SAFETY
    ]
    keep, delete = retention.plan(
        candidates,
        now=now,
        days=source.retention,
        weekly=source.keep_weekly,
        monthly=source.keep_monthly,
    )
    # Safety backups (one target each, taken before a restore) go by age alone: they never
    # stand in for the source's newest verified backup.
    cutoff = now - timedelta(days=source.retention)
    for r in runs:
        if r.trigger == Trigger.SAFETY:
            (delete if r.created < cutoff else keep).add(r.pk)
    result = RetentionResult(source.name, sorted(keep), sorted(delete), dry_run)
    if dry_run:
        return result
    storage = get_storage()
    busy = set(
        RestoreRequest.objects.filter(
            artifact__run__source=source,
            status__in=[RestoreStatus.APPROVED, RestoreStatus.RUNNING],
        ).values_list("artifact__run_id", flat=True)
    )
    for run in runs:
        if run.pk not in delete or run.pk in busy:
            continue  # kept, or a restore is about to read it
        with transaction.atomic():
            won = BackupRun.objects.filter(pk=run.pk, deleted_at__isnull=True).update(
                deleted_at=timezone.now()
            )
            if not won:
                continue
            record(
                AuditEventType.BACKUP_DELETED,
                actor=by,
                subject=run,
                details={
                    "source": source.name,
                    "created": run.created.isoformat(),
                    "path": run.artifact_path,
                    "bytes_stored": run.bytes_stored,
                    "reason": f"older than {source.retention} days and not a weekly/monthly keep",
                },
            )
            # Files go once the row says so: a crash in between leaves files, never a
            # row pointing at a backup that is gone.
            if run.artifact_path:
                transaction.on_commit(
                    lambda key=run.artifact_path, copied=bool(run.copied_at): _delete_files(
                        storage, key, copied
                    )
                )
    return result


def _delete_files(storage, run_key: str, copied: bool = False) -> None:
    """Remove a run's files after its row says so, from each copy; a store that refuses
    (an S3 object lock still holding them) keeps them, and says so: they go when the lock
    allows."""
    from backups.storage import StorageError, get_copy_storage

    stores = [storage] + ([get_copy_storage()] if copied else [])
    for store in [s for s in stores if s is not None]:
        try:
            store.delete_run(run_key)
        except StorageError as exc:
            logger.warning("retention: %s stays in %s: %s", run_key, store.location, exc)


def record_copy(run_id: int, *, location: str, error: str = "") -> BackupRun:
    """Record a run's second copy (or why it failed: notified)."""
    now = timezone.now()
    with transaction.atomic():
        BackupRun.objects.filter(pk=run_id).update(
            copy_location=location if not error else "",
            copied_at=now if not error else None,
            copy_error=scrub(error)[:4000],
        )
        run = BackupRun.objects.select_related("source").get(pk=run_id)
        if error:
            _notify(
                "BACKUP_FAILED",
                title=f"offsite copy of {run.source.name} FAILED (run #{run.pk})",
                body=f"Run #{run.pk} is stored locally but its copy to {location} failed: "
                f"{run.copy_error[:2000]}",
                subject=run,
                severity="critical",
            )
    return run


# --- restores ----------------------------------------------------------------------------


def plan_restore(
    artifact: BackupArtifact | int,
    *,
    target: dict | None = None,
    by: AbstractBaseUser,
    confirmation: str = "",
    dry_run: bool = False,
) -> tuple[RestoreRequest | None, dict]:
    """Work out what a restore would do; unless ``dry_run``, record it as a request.

    ``target`` is a ``restore.TargetSpec`` (``{"target": NAME, "database": …,
    "resources": […]}``; empty: the backup's own source). A host, DSN or
    credential is refused here, before any server is contacted. Overwriting
    an existing target needs the requester to type its name
    (``confirmation``) and then two other people's approval; a new, empty
    scratch target needs one other person's approval.
    """
    from backups import restore
    from backups.storage import storage_for

    _require_perm(by, PLAN_PERMISSION, "plan restores")
    artifact_id = artifact.pk if isinstance(artifact, BackupArtifact) else artifact
    obj = BackupArtifact.objects.select_related("run__source").filter(pk=artifact_id).first()
    if obj is None:
        raise BackupError("not_found", f"No backup artifact #{artifact_id}.")
    if obj.run.awaiting_acceptance:
        raise BackupError(
            "unusable",
            f"Backup #{obj.run_id} is suspiciously small and nobody accepted it; an approver "
            "or administrator accepts it first (audited), or restore an earlier backup.",
        )
    if not obj.run.usable or obj.verification != Verification.VERIFIED:
        raise BackupError(
            "unusable",
            f"Artifact #{obj.pk} is not a verified, stored backup "
            f"(run {obj.run.status}, verification {obj.verification}); verify it first.",
        )
    try:
        spec = restore.parse_spec(target or {})
        typed = restore.target_for(obj, spec.model_dump())
        # Only now, with a source or a registered target, is any server contacted.
        state = restore.inspect(typed, storage_for(obj.run), obj)
    except restore.RestoreError as exc:
        raise BackupError("target", str(exc)) from None
    mode = restore.mode_for(state)
    plan = {
        "artifact": {
            "id": obj.pk,
            "run": obj.run_id,
            "source": obj.run.source.name,
            "component": obj.component,
            "format": obj.format,
            "sha256": obj.sha256,
            "created": obj.run.created.isoformat(),
            "bytes_stored": obj.bytes_stored,
        },
        "target": typed.model_dump(),
        "target_name": typed.name,
        "registered_target": typed.registered or None,
        "mode": mode,
        "overwrites": state.description if state.exists else "",
        "creates": "" if state.exists else state.description,
        "estimated_bytes": obj.bytes_raw,
        "free_bytes": state.free_bytes,
        "free_note": state.free_note,
        "facts": state.facts,
        "creates_roles": state.facts.get("roles_to_create", []),
        "warnings": [],
    }
    if state.free_bytes is not None and state.free_bytes < obj.bytes_raw * 1.2:
        plan["warnings"].append(
            f"only {state.free_bytes} bytes free for about {obj.bytes_raw} bytes of data"
        )
    if mode == RestoreMode.OVERWRITE:
        plan["steps"] = [
            "two approvals (not the requester), each typing the target's name",
            f"safety backup of {typed.name} as it is now",
            *(["create the roles the target lacks"] if plan["creates_roles"] else []),
            "restore", "validate (connect, count)",
        ]  # fmt: skip
    else:
        plan["steps"] = [
            "one approval (not the requester)",
            *(["create the roles the target lacks"] if plan["creates_roles"] else []),
            "restore into the new target", "validate (connect, count)",
        ]  # fmt: skip
    if dry_run:
        return None, plan
    if mode == RestoreMode.OVERWRITE and (confirmation or "").strip() != typed.name:
        raise BackupError(
            "confirmation",
            f"This restore overwrites {typed.name}. Type its name ({typed.name}) to confirm.",
        )
    now = timezone.now()
    registered = RestoreTarget.objects.filter(name=typed.registered).first()
    with transaction.atomic():
        req = RestoreRequest.objects.create(
            artifact=obj,
            mode=mode,
            restore_target=registered if typed.registered else None,
            target=restore.stored_target(spec, typed),
            target_name=typed.name,
            plan=plan,
            requested_by=by,
            requester_label=by.get_username(),
            status=RestoreStatus.PLANNED,
            status_changed_at=now,
            created=now,
        )
        record(
            AuditEventType.RESTORE_PLANNED,
            actor=by,
            subject=req,
            details={
                "artifact": obj.pk,
                "sha256": obj.sha256,
                "target": typed.model_dump(),
                "mode": mode,
                "overwrites": plan["overwrites"],
            },
        )
        required = max(approvals.rule_for(req.approval_impact).required_approvals, 1)
        _announce_restore(req, f"planned by {by.get_username()}: awaiting {required} approval(s)")
    return req, plan


def _approve_restore(req: RestoreRequest, *, actor: Actor, approvers: list[str]):
    now = timezone.now()
    validity = approvals.rule_for(req.approval_impact).validity_seconds
    if not _move_restore(
        req.pk, RestoreStatus.PLANNED, RestoreStatus.APPROVED,
        approved_at=now, expires_at=now + timedelta(seconds=validity),
    ):  # fmt: skip
        raise BackupError("state", f"Restore #{req.pk} is no longer PLANNED.")
    req.refresh_from_db()
    record(
        AuditEventType.RESTORE_APPROVED,
        actor=actor,
        subject=req,
        details={
            "approvers": approvers,
            "scratch": req.mode == RestoreMode.SCRATCH,
            "expires_at": req.expires_at.isoformat(),
        },
    )
    _announce_restore(req, "approved: queued")
    _enqueue_on_commit(RESTORE_JOB, req.pk, restore_job_id(req.pk))


def approve_restore(
    restore_req: RestoreRequest | int,
    *,
    by: AbstractBaseUser,
    confirmation: str = "",
    fingerprint: str | None = None,
    comment: str = "",
) -> approvals.Tally:
    """Sign a planned restore as ``by``; the last signature the rule needs approves and queues it.

    Refused when the target changed since the plan (a registered target edited or
    disabled): approvals bind to what was shown.
    """
    from backups import restore

    restore_id = restore_req.pk if isinstance(restore_req, RestoreRequest) else restore_req
    with transaction.atomic():
        req = (
            RestoreRequest.objects.select_for_update(of=("self",))
            .select_related("artifact__run__source")
            .filter(pk=restore_id)
            .first()
        )
        if req is None:
            raise BackupError("not_found", f"No restore #{restore_id}.")
        if req.status != RestoreStatus.PLANNED:
            raise BackupError(
                "state",
                f"Restore #{req.pk} is {req.status}; only PLANNED restores can be approved.",
            )
        try:
            restore.parse_target(req.artifact, req.target)
        except restore.RestoreError as exc:
            raise BackupError("target", str(exc)) from None
        try:
            tally = approvals.sign(
                req, by, fingerprint=fingerprint, confirmation=confirmation, comment=comment
            )
        except approvals.ApprovalError as exc:
            raise BackupError(exc.code, exc.message) from None
        if tally.complete and tally.count >= 1:
            _approve_restore(req, actor=Actor.of(by), approvers=tally.approvers)
        else:
            _announce_restore(
                req, f"{tally.count}/{tally.required} approvals", approvals=tally.count
            )
    return tally


def reject_restore(restore_req: RestoreRequest | int, *, by: AbstractBaseUser, reason: str):
    """End a PLANNED restore with a reason (approvers only)."""
    restore_id = restore_req.pk if isinstance(restore_req, RestoreRequest) else restore_req
    _require_perm(by, approvals.APPROVE_PERMISSION, "reject requests")
    reason = " ".join((reason or "").split())
    if len(reason) < 5:
        raise BackupError("reason", "A rejection needs a reason (at least 5 characters).")
    with transaction.atomic():
        if not _move_restore(restore_id, RestoreStatus.PLANNED, RestoreStatus.REJECTED):
            raise BackupError("state", f"Restore #{restore_id} is not PLANNED.")
        req = RestoreRequest.objects.get(pk=restore_id)
        record(AuditEventType.RESTORE_REJECTED, actor=by, subject=req, details={"reason": reason})
        _announce_restore(req, f"rejected by {by.get_username()}")
    return req


def expire_restores(now=None) -> list[int]:
    """APPROVED restores not started in time, and PLANNED ones older than a day, expire."""
    now = now or timezone.now()
    expired = []
    due = [
        (pk, RestoreStatus.APPROVED)
        for pk in RestoreRequest.objects.filter(
            status=RestoreStatus.APPROVED, expires_at__lte=now
        ).values_list("pk", flat=True)
    ] + [
        (pk, RestoreStatus.PLANNED)
        for pk in RestoreRequest.objects.filter(
            status=RestoreStatus.PLANNED,
            created__lte=now - timedelta(seconds=settings.BACKUP_RESTORE_PLAN_TTL),
        ).values_list("pk", flat=True)
    ]
    for pk, was in due:
        with transaction.atomic():
            if not _move_restore(pk, was, RestoreStatus.EXPIRED):
                continue
            req = RestoreRequest.objects.get(pk=pk)
            record(
                AuditEventType.RESTORE_EXPIRED,
                actor=Actor.system("expiry"),
                subject=req,
                details={"was": was},
            )
            _announce_restore(req, f"expired while {was}")
        expired.append(pk)
    return expired


def claim_restore(restore_id: int, *, job_id: str) -> RestoreRequest | None:
    """APPROVED -> RUNNING for exactly one worker, inside the approval window, still approved."""
    now = timezone.now()
    with transaction.atomic():
        req = (
            RestoreRequest.objects.select_related("artifact__run__source")
            .filter(pk=restore_id)
            .first()
        )
        if req is None or req.status != RestoreStatus.APPROVED:
            return None
        if req.expires_at is None or req.expires_at <= now:
            transaction.on_commit(lambda: expire_restores())
            return None
        signed = approvals.tally(req)
        # Every restore needs someone other than the requester (a scratch one too).
        if not signed.complete or signed.count < 1:
            logger.error("restore %s approved without valid signatures; refusing", restore_id)
            return None
        if not _move_restore(
            restore_id, RestoreStatus.APPROVED, RestoreStatus.RUNNING,
            started_at=now, heartbeat_at=now, job_id=job_id,
        ):  # fmt: skip
            return None
        req.refresh_from_db()
        record(
            AuditEventType.RESTORE_STARTED,
            actor=Actor.system("worker"),
            subject=req,
            details={"job_id": job_id, "target": req.target_name, "mode": req.mode},
        )
        _announce_restore(req, "running")
    return req


def set_restore_phase(req: RestoreRequest, phase: str) -> None:
    """Record and push which step a running restore is in (safety_backup, restoring)."""
    RestoreRequest.objects.filter(pk=req.pk, status=RestoreStatus.RUNNING).update(
        phase=phase, heartbeat_at=timezone.now()
    )
    req.phase = phase
    _announce_restore(req, phase)


def create_safety_run(req: RestoreRequest) -> BackupRun:
    """A QUEUED safety-backup run of the restore's target, run inline by the restore job."""
    now = timezone.now()
    with transaction.atomic():
        run = BackupRun.objects.create(
            source=req.artifact.run.source,
            trigger=Trigger.SAFETY,
            requested_by=f"restore #{req.pk}",
            restore=req,
            status=RunStatus.QUEUED,
            status_changed_at=now,
            created=now,
        )
        RestoreRequest.objects.filter(pk=req.pk).update(safety_run=run)
        req.safety_run = run
    return run


def record_safety_backup(req: RestoreRequest, run: BackupRun) -> None:
    """Audit the safety backup taken (or attempted) before a restore overwrites its target."""
    with transaction.atomic():
        record(
            AuditEventType.SAFETY_BACKUP,
            actor=Actor.system("worker"),
            subject=req,
            details={
                "run": run.pk,
                "status": run.status,
                "verification": run.verification,
                "path": run.artifact_path,
                "checksum": run.checksum,
            },
        )


def finish_restore(
    restore_id: int, *, ok: bool, report: dict, error: str = ""
) -> RestoreRequest | None:
    """RUNNING -> SUCCEEDED (restored and validated) or FAILED, with the report per component."""
    new = RestoreStatus.SUCCEEDED if ok else RestoreStatus.FAILED
    now = timezone.now()
    with transaction.atomic():
        error = scrub(error)
        if not _move_restore(
            restore_id, RestoreStatus.RUNNING, new,
            finished_at=now, report=report, error=error[:8000], phase="done",
        ):  # fmt: skip
            return None
        req = RestoreRequest.objects.select_related("artifact__run__source").get(pk=restore_id)
        record(
            AuditEventType.RESTORE_SUCCEEDED if ok else AuditEventType.RESTORE_FAILED,
            actor=Actor.system("worker"),
            subject=req,
            details={"report": report, "error": error[:1000], "target": req.target_name},
        )
        _announce_restore(req, "succeeded" if ok else f"FAILED: {error[:200]}")
        if not ok:
            _notify(
                "BACKUP_FAILED",
                title=f"restore #{req.pk} into {req.target_name} FAILED",
                body=scrub(error)[:2000],
                subject=req,
                severity="critical",
            )
    return req


# --- disk space ------------------------------------------------------------------------------


def record_disk_usage(path: str, percent: float, consumers) -> bool:
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
            top = [{"path": p, "bytes": b} for p, b in consumers()]
            watch.consumers = top
            watch.alerted_at = now
            record(
                AuditEventType.DISK_SPACE_ALERT,
                actor=Actor.system("disk-watch"),
                subject=("backups.diskwatch", str(watch.pk)),
                details={"path": path, "percent": percent, "threshold": threshold, "largest": top},
            )
            names = ", ".join(f"{c['path']} ({c['bytes'] / 1e6:.0f} MB)" for c in top)
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


# --- restore drills (issue 13 §8) ---------------------------------------------------------

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
    source: BackupSource | str, *, by: AbstractBaseUser | Actor | str, enqueue: bool = True
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
        _announce_drill(drill, f"queued by {actor.label}")
        if enqueue:
            _enqueue_on_commit(DRILL_JOB, drill.pk, drill_job_id(drill.pk))
    return drill


def schedule_drills(now=None) -> list[int]:
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
            won = BackupSource.objects.filter(
                pk=source.pk,
                **({"drill_horizon": horizon} if horizon else {"drill_horizon__isnull": True}),
            ).update(drill_horizon=now)
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
        drill = BackupDrill.objects.select_related("source__drill_target").filter(pk=drill_id)
        drill = drill.first()
        if drill is None or drill.status != DrillStatus.QUEUED:
            return None
        run = BackupRun.objects.of_source(drill.source).usable().order_by("-created").first()
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


def finish_drill(drill_id: int, *, report: dict, error: str = "") -> BackupDrill | None:
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


def reap_lost_drills(now=None) -> list[int]:
    """FAIL drills left RUNNING by a worker that died (no heartbeat within the grace)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE)
    return [
        pk
        for pk in BackupDrill.objects.filter(
            status=DrillStatus.RUNNING, heartbeat_at__lt=cutoff
        ).values_list("pk", flat=True)
        if finish_drill(pk, report={}, error="worker lost mid-drill")
    ]


def last_good_drill(source: BackupSource) -> BackupDrill | None:
    return (
        BackupDrill.objects.filter(source=source, status=DrillStatus.SUCCEEDED, met_target=True)
        .order_by("-finished_at")
        .first()
    )
