"""Pre-flight checks: recording their outcome, re-running them, voiding what they refuse."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, NotificationKind
from portal.notify import notify
from portal.roles import may
from pra.actions.approval import _auto_approve
from pra.actions.common import (
    PROPOSE_PERMISSION,
    VOIDED_EVENT,
    ActionError,
    _admin_url,
    _announce,
    _enqueue_on_commit,
    _enqueue_once,
    _first_line,
    _move,
    _notify_awaiting,
    logger,
    preflight_job_id,
)
from pra.choices import ActionStatus
from pra.models import PRAAction, PreflightStatus


def record_preflight(
    action_id: int, *, ok: bool, output: str, host_revision: int | None = None
) -> PRAAction | None:
    """Store the dry-run result; auto-approve when asked, allowed and the dry run passed.

    A failed pre-flight blocks approval (``approve_action`` refuses); if the action was
    approved while its pre-flight was still running, that approval is voided. A result
    for an older ``host_revision`` than the host's (the host was edited meanwhile) is
    dropped: the pre-flight that the edit started decides.
    """
    with transaction.atomic():
        action = (
            PRAAction.objects.select_for_update().select_related("host").filter(pk=action_id)
        ).first()
        if action is None or action.preflight_status != PreflightStatus.PENDING:
            return action
        if host_revision is not None and host_revision != action.host.revision:
            logger.info("action %s: pre-flight result for an old host revision dropped", action_id)
            return action
        action.preflight_status = PreflightStatus.OK if ok else PreflightStatus.FAILED
        action.preflight_output = output[: settings.PRA_MAX_OUTPUT]
        action.save(update_fields=["preflight_status", "preflight_output"])
        record(
            AuditEventType.PRA_PREFLIGHT,
            actor=Actor.system("preflight"),
            subject=action,
            details={"ok": ok, "output": output[:2000]},
        )
        _announce(
            action, f"pre-flight {'OK' if ok else 'FAILED'}", preflight=action.preflight_status
        )
        if not ok and action.status == ActionStatus.APPROVED:
            _void(action, f"approval voided: pre-flight failed: {_first_line(output)}",
                  actor=Actor.system("preflight"))  # fmt: skip
        elif ok and action.auto_approve_requested and action.status == ActionStatus.PROPOSED:
            _auto_approve(action)
        elif action.auto_approve_requested and action.status == ActionStatus.PROPOSED:
            _notify_awaiting(action, "; its pre-flight failed, so it was not auto-approved")
    return action


def _restart_preflight(action: PRAAction, actor: Actor, why: str) -> None:
    """Set a PROPOSED action's pre-flight back to PENDING and run it again (on commit)."""
    now = timezone.now()
    PRAAction.objects.filter(pk=action.pk).update(
        preflight_status=PreflightStatus.PENDING, preflight_output="", preflight_requested_at=now
    )
    action.preflight_status, action.preflight_output = PreflightStatus.PENDING, ""
    action.preflight_requested_at = now
    record(
        AuditEventType.PRA_PREFLIGHT,
        actor=actor,
        subject=action,
        details={"rerun": True, "why": why[:300]},
    )
    _announce(action, f"pre-flight re-run: {why}"[:300], preflight=PreflightStatus.PENDING)
    _enqueue_on_commit(
        "pra.jobs.preflight_action", action.pk, preflight_job_id(action.pk), again=True
    )


def rerun_preflight(action: PRAAction | int, *, by: User | Actor) -> PRAAction:
    """Run a PROPOSED action's pre-flight again, e.g. once the target has been fixed.

    Operators and approvers may ask; a pre-flight that is still running is left alone.
    """
    actor = Actor.of(by)
    if actor.user is not None and not (
        may(actor.user, PROPOSE_PERMISSION) or may(actor.user, approvals.APPROVE_PERMISSION)
    ):
        raise ActionError("permission", "You are not allowed to re-run pre-flights.")
    action_id = action.pk if isinstance(action, PRAAction) else action
    if not settings.PRA_PREFLIGHT:
        raise ActionError("state", "Pre-flights are turned off here (PRA_PREFLIGHT=0).")
    with transaction.atomic():
        obj = (
            PRAAction.objects.select_for_update().select_related("host").filter(pk=action_id)
        ).first()
        if obj is None:
            raise ActionError("not_found", f"No action #{action_id}.")
        if obj.status != ActionStatus.PROPOSED:
            raise ActionError(
                "state", f"Action #{obj.pk} is {obj.status}; only a PROPOSED action's "
                "pre-flight can be re-run.",
            )  # fmt: skip
        if obj.preflight_status == PreflightStatus.PENDING:
            raise ActionError("state", f"Action #{obj.pk}'s pre-flight is still running.")
        _restart_preflight(obj, actor, f"requested by {actor.label}")
    return obj


def _void(action: PRAAction, reason: str, *, actor: Actor) -> bool:
    """APPROVED -> VOIDED for good: the approval no longer covers the action."""
    if not _move(action.pk, ActionStatus.APPROVED, ActionStatus.VOIDED, void_reason=reason[:300]):
        return False
    action.refresh_from_db()
    record(
        VOIDED_EVENT,
        actor=actor,
        subject=action,
        details={"was": ActionStatus.APPROVED, "voided": True, "reason": reason[:300]},
    )
    _announce(action, reason, reason=reason[:300])
    notify(
        NotificationKind.PRA_FAILED,
        title=f"Approval voided: {action.command_display} on {action.host.name}",
        body=f"{reason}. It will not run; propose it again if it is still needed.",
        subject=action,
        severity="warning",
        url=_admin_url(action),
    )
    return True


def reconcile_preflights(now: datetime | None = None) -> dict[str, list[int]]:
    """Bound every PENDING pre-flight: re-enqueue it if its job vanished, and end it
    FAILED once it has been pending longer than ``PRA_PREFLIGHT_TIMEOUT`` (the job
    hung or was lost), so approval is never left waiting on it."""
    now = now or timezone.now()
    timeout = settings.PRA_PREFLIGHT_TIMEOUT
    failed, requeued = [], []
    pending = PRAAction.objects.filter(
        status__in=[ActionStatus.PROPOSED, ActionStatus.APPROVED],
        preflight_status=PreflightStatus.PENDING,
    ).values_list("pk", "preflight_requested_at", "created")
    for pk, requested, created in pending:
        if (requested or created) + timedelta(seconds=timeout) <= now:
            detail = f"pre-flight did not finish within {timeout} s (host hung or job lost)"
            record_preflight(pk, ok=False, output=detail)
            failed.append(pk)
        elif _enqueue_once("pra.jobs.preflight_action", pk, preflight_job_id(pk)):
            requeued.append(pk)
    return {"failed": failed, "requeued": requeued}
