"""A worker's side of a run: claiming it, streaming output, finishing and verifying."""

from __future__ import annotations

import time
from typing import Any

from django.db import transaction
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.lib import ssh
from portal.live import LiveEvent, publish
from portal.notify import notify
from pra import windows
from pra.actions.approval import expire_action
from pra.actions.common import DENIED_EXIT, _admin_url, _announce, _move, logger
from pra.actions.preflight import _void
from pra.choices import ActionStatus, FailureCause, Verification
from pra.models import PRAAction, PreflightStatus


def claim_action(action_id: int, *, job_id: str) -> PRAAction | None:
    """APPROVED -> EXECUTING for exactly one caller, only inside the approval window.

    Also re-checks that the approval still covers the action as it is now.
    Returns the action for the winner, None for everyone else.
    """
    now = timezone.now()
    with transaction.atomic():
        obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
        if obj is None or obj.status != ActionStatus.APPROVED or not obj.host.enabled:
            return None
        if obj.preflight_status == PreflightStatus.FAILED:
            return None  # record_preflight voids it
        if obj.expires_at is None or obj.expires_at <= now:
            transaction.on_commit(lambda: expire_action(action_id))
            return None
        if not approvals.tally(obj).complete and not _was_auto_approved(obj):
            logger.error("action %s approved without valid signatures; refusing", action_id)
            return None
        # A freeze that started after approval, or a window rule: never run, say why.
        refusal = windows.run_refusal(obj, now)
        if refusal:
            _void(obj, refusal, actor=Actor.system("worker"))
            return None
        # Only the row's own columns here: a filter across a join makes Django write
        # "WHERE id IN (subquery)", which PostgreSQL does not re-check after a lock wait,
        # so two racing workers could both win (the 8-process race test caught it).
        won = PRAAction.objects.filter(
            pk=action_id, status=ActionStatus.APPROVED, expires_at__gt=now
        ).update(
            status=ActionStatus.EXECUTING,
            status_changed_at=now,
            started_at=now,
            heartbeat_at=now,
            job_id=job_id,
        )
        if not won:
            return None
        obj.refresh_from_db()
        record(
            AuditEventType.PRA_EXECUTING,
            actor=Actor.system("worker"),
            subject=obj,
            details={"job_id": job_id, "command": obj.command_display},
        )
        _announce(obj, "executing")
    return obj


def _was_auto_approved(obj: PRAAction) -> bool:
    from portal.models import AuditEvent

    return AuditEvent.objects.filter(
        subject_type="pra.praaction",
        subject_id=str(obj.pk),
        event_type=AuditEventType.PRA_APPROVED,
        details__auto=True,
    ).exists()


def still_running(action_id: int, job_id: str) -> bool:
    """True if ``job_id`` still holds the EXECUTING claim (and refreshes its heartbeat)."""
    return bool(
        PRAAction.objects.filter(pk=action_id, status=ActionStatus.EXECUTING, job_id=job_id).update(
            heartbeat_at=timezone.now()
        )
    )


def heartbeat(action_id: int) -> None:
    PRAAction.objects.filter(pk=action_id, status=ActionStatus.EXECUTING).update(
        heartbeat_at=timezone.now()
    )


OUTPUT_SIZE_EVERY = 1.0  # seconds between writes of the streamed output size


def publish_output(action: PRAAction, chunk: str) -> None:
    """Stream a chunk of stdout to the action's page (outside any transaction).

    Also keeps ``output_bytes`` current (at most one write a second), which the MCP
    execute tool reports in its progress notifications.
    """
    streamed = action._streamed_bytes + len(chunk.encode())
    action._streamed_bytes = streamed
    if time.monotonic() - action._streamed_saved >= OUTPUT_SIZE_EVERY:
        action._streamed_saved = time.monotonic()
        PRAAction.objects.filter(pk=action.pk, status=ActionStatus.EXECUTING).update(
            output_bytes=streamed
        )
    publish(
        LiveEvent(
            kind=LiveEventKind.PRA_OUTPUT,
            subject_type="pra.praaction",
            subject_id=str(action.pk),
            status=ActionStatus.EXECUTING,
            data={"chunk": chunk[:4000]},
        ),
        dashboard=False,
    )


def classify(result: ssh.CommandResult) -> str:
    if result.exit_code == DENIED_EXIT and "DENIED:" in result.stderr:
        return FailureCause.DENIED
    if any(line.startswith("sudo:") for line in result.stderr.splitlines()):
        return FailureCause.SUDO
    return FailureCause.COMMAND_ERROR


def finish_execution(
    action_id: int,
    *,
    result: ssh.CommandResult | None = None,
    cause: str = "",
    detail: str = "",
    attempts: int = 1,
) -> PRAAction | None:
    """EXECUTING -> COMPLETED (exit 0) or FAILED with a classified cause."""
    now = timezone.now()
    fields: dict[str, Any] = {"finished_at": now, "connect_attempts": attempts}
    if result is not None:
        fields.update(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
        if result.exit_code != 0:
            cause = cause or classify(result)
    new = (
        ActionStatus.COMPLETED
        if result is not None and result.exit_code == 0
        else ActionStatus.FAILED
    )
    if result is not None:
        fields["output_bytes"] = len(result.stdout.encode()) + len(result.stderr.encode())
    if new == ActionStatus.FAILED:
        fields.update(
            failure_cause=cause or FailureCause.COMMAND_ERROR,
            failure_detail=detail[:4000],
        )
    with transaction.atomic():
        if not _move(action_id, ActionStatus.EXECUTING, new, **fields):
            return None  # the reaper already ended it; its verdict stands
        obj = PRAAction.objects.select_related("host").get(pk=action_id)
        record(
            AuditEventType.PRA_EXECUTED
            if new == ActionStatus.COMPLETED
            else AuditEventType.PRA_FAILED,
            actor=Actor.system("worker"),
            subject=obj,
            details={
                "exit_code": obj.exit_code,
                "cause": obj.failure_cause,
                "detail": detail[:1000],
                "duration_s": round(result.duration, 3) if result else None,
                "attempts": attempts,
            },
        )
        summary = (
            "completed"
            if new == ActionStatus.COMPLETED
            else f"failed: {obj.get_failure_cause_display()}"
        )
        _announce(obj, summary, exit_code=obj.exit_code, cause=obj.failure_cause)
        if new == ActionStatus.FAILED:
            lost = {FailureCause.WORKER_LOST, FailureCause.HOST_KEY_MISMATCH}
            notify(
                NotificationKind.PRA_FAILED,
                title=f"Remediation failed: {obj.command_display} on {obj.host.name}",
                body=f"{obj.get_failure_cause_display()} (exit code {obj.exit_code}). {detail}",
                subject=obj,
                severity="critical" if obj.failure_cause in lost else "warning",
                url=_admin_url(obj),
            )
    return obj


def record_verification(action_id: int, *, verified: bool | None, output: str) -> PRAAction:
    """Store the probe's verdict (None = this action has no probe)."""
    outcome = (
        Verification.SKIPPED
        if verified is None
        else Verification.VERIFIED
        if verified
        else Verification.NOT_VERIFIED
    )
    with transaction.atomic():
        updated = PRAAction.objects.filter(pk=action_id, verification=Verification.PENDING).update(
            verification=outcome, verification_output=output[:8000], verified_at=timezone.now()
        )
        obj = PRAAction.objects.select_related("host").get(pk=action_id)
        if updated and outcome != Verification.SKIPPED:
            record(
                AuditEventType.PRA_VERIFIED if verified else AuditEventType.PRA_NOT_VERIFIED,
                actor=Actor.system("verifier"),
                subject=obj,
                details={"output": output[:1000]},
            )
            _announce(obj, "verified" if verified else "NOT verified: escalate")
            if not verified:
                notify(
                    NotificationKind.PRA_NOT_VERIFIED,
                    title=f"Not verified: {obj.command_display} on {obj.host.name}",
                    body="The action ran but its verification probe failed; check the "
                    f"service by hand.\n\n{output[:1000]}",
                    subject=obj,
                    severity="critical",
                    url=_admin_url(obj),
                )
    return obj
