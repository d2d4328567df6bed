"""Verifying runs (on request or scheduled) and accepting a shrunk backup by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backups.actions.common import (
    RUN_PERMISSION,
    VERIFY_JOB,
    BackupError,
    _actor,
    _announce_run,
    _require_perm,
    job_alive,
    notify_failure,
)
from backups.actions.runs import _notify_shrunk, previous_good
from backups.choices import (
    RunStatus,
    Verification,
    VerifyLevel,
)
from backups.models import (
    BackupRun,
)
from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType


def record_verification(
    run_id: int,
    checks: dict[int, Any],
    *,
    by: User | Actor | str = "system:verifier",
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
        if shrunk and previous is not None:
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
        elif shrunk and previous is not None and run.accepted_at is None:
            _notify_shrunk(run, previous)
    return run


ACCEPT_PERMISSIONS = (approvals.APPROVE_PERMISSION, "portal.manage_portal")


def accept_backup(run: BackupRun | int, *, by: User, reason: str) -> BackupRun:
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


def verify_job_id(run_id: int, when: datetime) -> str:
    return f"backup-verify-{run_id}-{int(when.timestamp() * 1000)}"


@dataclass(frozen=True)
class VerificationRequest:
    run: BackupRun
    queued: bool  # False: one was already pending, nothing new was queued
    message: str


def request_verification(run: BackupRun | int, *, by: User | Actor | str) -> VerificationRequest:
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
