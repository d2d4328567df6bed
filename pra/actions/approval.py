"""Approving, rejecting, requesting execution and expiring remediation actions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType
from pra import windows
from pra.actions.common import (
    EXECUTE_PERMISSION,
    ActionError,
    _announce,
    _enqueue_on_commit,
    _ensure_enqueued,
    _first_line,
    _move,
    _notify_awaiting,
    _require_perm,
    _storable,
    execution_job_id,
)
from pra.actions.windows import hold
from pra.choices import ActionStatus
from pra.models import PRAAction, PreflightStatus


def _auto_approve(action: PRAAction) -> None:
    if not approvals.may_auto_approve(action.impact):
        record(
            AuditEventType.PRA_PROPOSED,
            actor=Actor.system("auto-approve"),
            subject=action,
            details={"auto_approve": "refused by policy", "impact": action.impact},
        )
        _notify_awaiting(action, "; policy refused automatic approval")
        return
    try:
        _approve(action, actor=Actor.system("auto-approve"), auto=True)
    except ActionError as exc:
        if exc.code != "window":
            raise
        # A freeze or a window rule: people decide (nothing was written before the refusal).
        record(
            AuditEventType.PRA_PROPOSED,
            actor=Actor.system("auto-approve"),
            subject=action,
            details={"auto_approve": "refused by maintenance rules", "reason": exc.message},
        )
        _notify_awaiting(action, f"; not approved automatically: {exc.message}")


def _approve(action: PRAAction, *, actor: Actor, auto: bool, approvers: Sequence[str] = ()) -> None:
    if action.preflight_status == PreflightStatus.FAILED:
        raise _preflight_refusal(action)
    gate = windows.gate_for(action)
    if gate.kind == "refuse":
        raise ActionError("window", gate.reason)
    opening = gate.opening
    if opening is not None and (
        auto or not opening.is_open(timezone.now()) or opening.window.backup_sources.exists()
    ):
        # Approved now, runs in the window (pra.actions.windows releases it).
        if auto:
            raise ActionError("window", f"runs only in a maintenance window ({gate.reason})")
        hold(action, gate, actor=actor, approvers=list(approvers))
        return
    now = timezone.now()
    validity = approvals.rule_for(action.impact).validity_seconds
    expires = now + timedelta(seconds=validity)
    in_window: dict[str, Any] = {}
    if opening is not None:  # its window is open now and needs no backup: run in it
        expires = min(expires, opening.closes_at)
        in_window = {
            "window": opening.window,
            "window_opens_at": opening.opens_at,
            "window_closes_at": opening.closes_at,
            "hold_reason": f"approved inside the window starting {opening.label}",
        }
    if not _move(
        action.pk,
        ActionStatus.PROPOSED,
        ActionStatus.APPROVED,
        approved_at=now,
        expires_at=expires,
        job_id=execution_job_id(action.pk),
        **in_window,
    ):
        raise ActionError("state", "The action is no longer waiting for approval.")
    action.refresh_from_db()
    record(
        AuditEventType.PRA_APPROVED,
        actor=actor,
        subject=action,
        details={
            "auto": auto,
            "approvers": list(approvers),
            "fingerprint": action.approval_fingerprint(),
            "expires_at": expires.isoformat(),
        },
    )
    # Enqueue first: on-commit hooks run in order, and the worker should not wait for pushes.
    _enqueue_on_commit("pra.jobs.execute_action", action.pk, execution_job_id(action.pk))
    _announce(
        action,
        "approved automatically" if auto else f"approved by {', '.join(approvers)}",
        approvals=len(approvers),
    )


def approve_action(
    action: PRAAction | int,
    *,
    by: User,
    confirmation: str = "",
    fingerprint: str | None = None,
    comment: str = "",
) -> approvals.Tally:
    """Sign ``action`` as ``by``; when enough people signed, approve it and enqueue it.

    ``fingerprint`` is what the approver was shown (the UI and API send it);
    if the action or its host changed since, the signature is refused. A failed
    pre-flight refuses every signature; while the pre-flight is still running,
    people may sign (and a complete tally approves), and if it then fails the
    approval is voided before anything runs.
    """
    action_id = action.pk if isinstance(action, PRAAction) else action
    _storable(confirmation=confirmation, fingerprint=fingerprint, comment=comment)
    with transaction.atomic():
        obj = (
            PRAAction.objects.select_for_update()
            .select_related("host")
            .filter(pk=action_id)
            .first()
        )
        if obj is None:
            raise ActionError("not_found", f"No action #{action_id}.")
        if obj.status != ActionStatus.PROPOSED:
            raise ActionError(
                "state",
                f"Action #{obj.pk} is {obj.status}; only PROPOSED actions can be approved."
                + (f" ({obj.void_reason})" if obj.void_reason else ""),
            )
        # Blocking, and not overridable: approving what the target already refused
        # only gets a failed run. Fix the target and re-run the pre-flight.
        if obj.preflight_status == PreflightStatus.FAILED:
            raise _preflight_refusal(obj)
        try:
            result = approvals.sign(
                obj, by, fingerprint=fingerprint, confirmation=confirmation, comment=comment
            )
        except approvals.ApprovalError as exc:
            raise ActionError(exc.code, exc.message) from None
        if result.complete:
            _approve(obj, actor=Actor.of(by), auto=False, approvers=result.approvers)
        else:
            _announce(obj, f"{result.count}/{result.required} approvals", approvals=result.count)
    return result


def _preflight_refusal(action: PRAAction) -> ActionError:
    return ActionError(
        "preflight",
        f"Action #{action.pk} cannot be approved: its pre-flight failed "
        f"({_first_line(action.preflight_output)}). Fix the target, then re-run the "
        "pre-flight (or propose the action again, which re-runs it).",
    )


def reject_action(action: PRAAction | int, *, by: User, reason: str) -> PRAAction:
    """End a PROPOSED action, or cancel one WAITING for its window, with a reason
    (approvers only)."""
    action_id = action.pk if isinstance(action, PRAAction) else action
    _require_perm(by, approvals.APPROVE_PERMISSION, "reject requests")
    _storable(reason=reason)
    reason = " ".join((reason or "").split())
    if len(reason) < 5:
        raise ActionError("reason", "A rejection needs a reason (at least 5 characters).")
    with transaction.atomic():
        obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
        if obj is None:
            raise ActionError("not_found", f"No action #{action_id}.")
        was = obj.status
        if was not in (ActionStatus.PROPOSED, ActionStatus.WAITING) or not _move(
            obj.pk, was, ActionStatus.REJECTED
        ):
            obj.refresh_from_db()
            raise ActionError(
                "state",
                f"Action #{obj.pk} is {obj.status}; only PROPOSED actions, or actions WAITING "
                "for their window, can be rejected.",
            )
        obj.refresh_from_db()
        record(
            AuditEventType.PRA_REJECTED, actor=by, subject=obj, details={"reason": reason[:1000]}
        )
        _announce(obj, f"rejected by {by.get_username()}: {reason[:200]}")
    return obj


def request_execution(action: PRAAction | int, *, by: User | Actor) -> PRAAction:
    """Ask for an APPROVED, unexpired action to run now (MCP/API "execute").

    Approval already enqueued the job; this re-enqueues it when it is missing
    and never runs anything that people did not approve.
    """
    user = by.user if isinstance(by, Actor) else by
    _require_perm(user, EXECUTE_PERMISSION, "execute approved actions")
    action_id = action.pk if isinstance(action, PRAAction) else action
    obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if obj is None:
        raise ActionError("not_found", f"No action #{action_id}.")
    if obj.status == ActionStatus.APPROVED and obj.expires_at and obj.expires_at <= timezone.now():
        expire_action(obj.pk)
        obj.refresh_from_db()
    if obj.status != ActionStatus.APPROVED:
        hint = {
            ActionStatus.PROPOSED: "it still needs human approval in the portal",
            ActionStatus.WAITING: f"it is {obj.hold_reason or 'waiting for its window'}; "
            "it runs by itself when the window opens",
            ActionStatus.EXPIRED: "its approval window passed; propose it again",
            ActionStatus.REJECTED: "it was rejected",
            ActionStatus.EXECUTING: "it is already running",
            ActionStatus.COMPLETED: "it already ran",
            ActionStatus.FAILED: "it already ran and failed",
            ActionStatus.VOIDED: f"{obj.void_reason or 'its approval was voided'}; "
            "propose it again",
        }[ActionStatus(obj.status)]
        raise ActionError("state", f"Action #{obj.pk} is {obj.status}: {hint}.")
    _ensure_enqueued(obj)
    return obj


def expire_action(action_id: int) -> bool:
    """Expire one action whose window passed (PROPOSED too old, or APPROVED not started)."""
    now = timezone.now()
    with transaction.atomic():
        obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
        if obj is None:
            return False
        if obj.status == ActionStatus.APPROVED and obj.expires_at and obj.expires_at <= now:
            won = _move(obj.pk, ActionStatus.APPROVED, ActionStatus.EXPIRED)
        elif obj.status == ActionStatus.PROPOSED and obj.created <= now - timedelta(
            seconds=settings.PRA_PROPOSAL_TTL
        ):
            won = _move(obj.pk, ActionStatus.PROPOSED, ActionStatus.EXPIRED)
        else:
            return False
        if won:
            was = obj.status
            obj.refresh_from_db()
            record(
                AuditEventType.PRA_EXPIRED,
                actor=Actor.system("expiry"),
                subject=obj,
                details={"was": was},
            )
            _announce(obj, f"expired while {was}")
    return won
