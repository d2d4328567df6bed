"""Restores: planning, approval under multi-signature rules, the safety backup, the outcome."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backups.actions.common import (
    PLAN_PERMISSION,
    RESTORE_JOB,
    BackupError,
    _announce_restore,
    _enqueue_on_commit,
    _move_restore,
    _notify,
    _require_perm,
    logger,
    restore_job_id,
)
from backups.choices import (
    RestoreMode,
    RestoreStatus,
    RunStatus,
    Trigger,
)
from backups.models import (
    BackupArtifact,
    BackupRun,
    RestoreRequest,
    RestoreTarget,
)
from backups.scrub import scrub
from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType


def plan_restore(
    artifact: BackupArtifact | int,
    *,
    target: dict[str, Any] | None = None,
    by: User,
    confirmation: str = "",
    dry_run: bool = False,
) -> tuple[RestoreRequest | None, dict[str, Any]]:
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
    if not obj.restorable:
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


def _approve_restore(req: RestoreRequest, *, actor: Actor, approvers: list[str]) -> None:
    now = timezone.now()
    validity = approvals.rule_for(req.approval_impact).validity_seconds
    expires_at = now + timedelta(seconds=validity)
    if not _move_restore(
        req.pk, RestoreStatus.PLANNED, RestoreStatus.APPROVED,
        approved_at=now, expires_at=expires_at,
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
            "expires_at": expires_at.isoformat(),
        },
    )
    _announce_restore(req, "approved: queued")
    _enqueue_on_commit(RESTORE_JOB, req.pk, restore_job_id(req.pk))


def approve_restore(
    restore_req: RestoreRequest | int,
    *,
    by: User,
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


def reject_restore(restore_req: RestoreRequest | int, *, by: User, reason: str) -> RestoreRequest:
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


def expire_restores(now: datetime | None = None) -> list[int]:
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
    restore_id: int, *, ok: bool, report: dict[str, Any], error: str = ""
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
