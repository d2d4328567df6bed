"""Actions that wait for a maintenance window: held at approval, released at the opening.

An action that requires a window (``pra.windows.requires_window``) is approved at
any time but moves PROPOSED -> WAITING (``hold``), not APPROVED. The pra sweep
(``release_waiting``, every 30 s through ``portal.cron``) then, for each WAITING
action whose opening has come:

- requests the window's pre-maintenance backups once per opening (``open_windows``);
- keeps it waiting, with the reason in ``hold_reason``, while a freeze is on or the
  backups are not verified yet;
- VOIDS it when a backup failed, its window was changed or deleted, its approval no
  longer matches (host edited) or its pre-flight failed;
- EXPIRES it when the window closes first;
- otherwise releases it: WAITING -> APPROVED with a fresh approval validity that
  starts now (never past the window's close) and its job enqueued on commit.

Every move is a compare-and-swap with its audit event in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, NotificationKind
from portal.notify import notify
from pra import windows
from pra.actions.common import (
    _admin_url,
    _announce,
    _enqueue_on_commit,
    _move,
    execution_job_id,
    logger,
)
from pra.choices import ActionStatus
from pra.models import PRAAction, PreflightStatus, WindowOpening

SWEEPER = Actor.system("maintenance-window")


def hold(action: PRAAction, gate: windows.Gate, *, actor: Actor, approvers: list[str]) -> None:
    """PROPOSED -> WAITING for ``gate.opening`` (called by ``_approve`` inside its
    transaction, once the signatures are complete)."""
    from pra.actions.common import ActionError

    opening = gate.opening
    assert opening is not None, "hold() is only called for a gate that waits"
    if not _move(
        action.pk,
        ActionStatus.PROPOSED,
        ActionStatus.WAITING,
        approved_at=timezone.now(),
        expires_at=None,
        window=opening.window,
        window_opens_at=opening.opens_at,
        window_closes_at=opening.closes_at,
        hold_reason=gate.reason[:300],
    ):
        raise ActionError("state", "The action is no longer waiting for approval.")
    action.refresh_from_db()
    record(
        AuditEventType.PRA_APPROVED,
        actor=actor,
        subject=action,
        details={
            "auto": False,
            "approvers": list(approvers),
            "fingerprint": action.approval_fingerprint(),
            "waits_for": {
                "window": opening.window.name,
                "opens_at": opening.opens_at.isoformat(),
                "closes_at": opening.closes_at.isoformat(),
            },
        },
    )
    _announce(action, gate.reason, hold_reason=gate.reason)


def open_windows(now: datetime | None = None) -> list[int]:
    """At each opening of a window that names backup sources, request one backup of each
    (once per opening: a second sweep finds the opening's row and does nothing)."""
    from backups.actions import request_run

    now = now or timezone.now()
    started = []
    for window in windows.MaintenanceWindow.objects.filter(
        enabled=True, backup_sources__isnull=False
    ).distinct():
        opening = windows.next_opening(window, now, horizon=1)
        if opening is None or not opening.is_open(now):
            continue
        if WindowOpening.objects.filter(window=window, opens_at=opening.opens_at).exists():
            continue
        try:
            with transaction.atomic():
                row = WindowOpening.objects.create(
                    window=window, opens_at=opening.opens_at, closes_at=opening.closes_at
                )
                runs = [request_run(source, by=SWEEPER) for source in window.backup_sources.all()]
                row.backup_runs.set(runs)
                record(
                    AuditEventType.WINDOW_OPENED,
                    actor=SWEEPER,
                    subject=window,
                    details={
                        "opens_at": opening.opens_at.isoformat(),
                        "backup_runs": {r.source.name: r.pk for r in runs},
                    },
                )
        except IntegrityError:
            continue  # another sweep opened it first
        except Exception:
            # Retried by the next sweep; the actions keep waiting (and expire at the close).
            logger.exception("opening window %s: requesting its backups failed", window.name)
            continue
        started.append(row.pk)
    return started


def end_wait(obj: PRAAction, new: str, reason: str, cause: str, *, actor: Actor = SWEEPER) -> bool:
    """WAITING -> VOIDED or EXPIRED with a reason and a classified ``cause`` (audited,
    announced, notified); False if it was no longer waiting."""
    fields = {"hold_reason": reason[:300]}
    if new == ActionStatus.VOIDED:
        fields["void_reason"] = reason[:300]
    if not _move(obj.pk, ActionStatus.WAITING, new, **fields):
        return False
    obj.refresh_from_db()
    record(
        AuditEventType.PRA_VOIDED if new == ActionStatus.VOIDED else AuditEventType.PRA_EXPIRED,
        actor=actor,
        subject=obj,
        details={"was": ActionStatus.WAITING, "cause": cause, "reason": reason[:300]},
    )
    _announce(obj, reason, hold_reason=reason[:300], cause=cause)
    notify(
        NotificationKind.PRA_FAILED,
        title=f"Not run: {obj.command_display} on {obj.host.name}",
        body=f"{reason}. Propose it again if it is still needed.",
        subject=obj,
        severity="warning",
        url=_admin_url(obj),
    )
    return True


def _backup_state(obj: PRAAction) -> tuple[str, str]:
    """("ok" | "wait" | "failed", words) for the pre-maintenance backups of the opening."""
    window = obj.window
    assert window is not None and obj.window_opens_at is not None
    if not window.backup_sources.exists():
        return "ok", ""
    row = WindowOpening.objects.filter(window=window, opens_at=obj.window_opens_at).first()
    if row is None:
        return "wait", "waiting for the pre-maintenance backups to start"
    waiting = []
    for run in row.backup_runs.select_related("source").order_by("pk"):
        what = f"the pre-maintenance backup of {run.source.name} (run #{run.pk})"
        if run.status == "FAILED":
            return "failed", f"refused: {what} failed: {(run.error or run.failure_cause)[:120]}"
        if run.verification == "FAILED":
            return "failed", f"refused: {what} failed verification"
        if run.deleted_at is not None:
            return "failed", f"refused: {what} was deleted"
        if run.awaiting_acceptance:
            waiting.append(f"{what}, suspiciously small: a person must accept it")
        elif not run.usable:
            waiting.append(f"{what}, {run.status.lower()}, verification {run.verification.lower()}")
    if waiting:
        return "wait", "waiting for " + "; ".join(waiting)
    return "ok", ""


def _note(obj: PRAAction, reason: str) -> None:
    """Say visibly what it waits for now (written and announced only when it changes)."""
    reason = reason[:300]
    if (
        PRAAction.objects.filter(pk=obj.pk, status=ActionStatus.WAITING)
        .exclude(hold_reason=reason)
        .update(hold_reason=reason)
    ):
        obj.hold_reason = reason
        _announce(obj, reason, hold_reason=reason)


def release_one(action_id: int, now: datetime) -> str:
    """Decide one WAITING action: "released", "expired", "voided", "waiting" or "gone"."""
    with transaction.atomic():
        obj = (
            PRAAction.objects.select_for_update(of=("self",))
            .select_related("host", "window")
            .filter(pk=action_id, status=ActionStatus.WAITING)
            .first()
        )
        if obj is None:
            return "gone"
        opens, closes = obj.window_opens_at, obj.window_closes_at
        label = f"the window starting {opens:%a %Y-%m-%d %H:%M} UTC"
        if obj.window is None or opens is None or closes is None or not obj.window.enabled:
            why = f"voided: the maintenance window for {label} was deleted or disabled"
            return "voided" if end_wait(obj, ActionStatus.VOIDED, why, "window_removed") else "gone"
        opening = windows.opening_at(obj.window, opens)
        if opening is None or opening.closes_at != closes:
            why = f"voided: window {obj.window.name} was changed and no longer opens as approved"
            return "voided" if end_wait(obj, ActionStatus.VOIDED, why, "window_changed") else "gone"
        label = f"window {obj.window.name} starting {opening.label}"
        if now >= closes:
            last = obj.hold_reason or "not released"
            why = f"expired: {label} closed before it could run ({last})"
            return (
                "expired" if end_wait(obj, ActionStatus.EXPIRED, why, "window_passed") else "gone"
            )
        if now < opens:
            return "waiting"
        if obj.preflight_status == PreflightStatus.FAILED:
            why = "voided: its pre-flight failed"
            return "voided" if end_wait(obj, ActionStatus.VOIDED, why, "preflight") else "gone"
        if not approvals.tally(obj).complete:
            why = "approval voided: the action or its host changed while it waited"
            return "voided" if end_wait(obj, ActionStatus.VOIDED, why, "stale") else "gone"
        freeze = windows.active_freeze(now)
        if freeze is not None:
            _note(obj, f"held in {label}: {windows._freeze_text(freeze)}")
            return "waiting"
        state, words = _backup_state(obj)
        if state == "failed":
            return (
                "voided" if end_wait(obj, ActionStatus.VOIDED, words, "backup_failed") else "gone"
            )
        if state == "wait":
            _note(obj, f"{label} is open; {words}")
            return "waiting"
        # The approval's validity starts now, at the opening (or once the backups are
        # verified), and never reaches past the window's close.
        validity = timedelta(seconds=approvals.rule_for(obj.impact).validity_seconds)
        expires = min(now + validity, closes)
        reason = f"released in {label}"
        if not _move(
            obj.pk,
            ActionStatus.WAITING,
            ActionStatus.APPROVED,
            expires_at=expires,
            job_id=execution_job_id(obj.pk),
            hold_reason=reason[:300],
        ):
            return "gone"
        obj.refresh_from_db()
        record(
            AuditEventType.PRA_RELEASED,
            actor=SWEEPER,
            subject=obj,
            details={"window": obj.window.name, "expires_at": expires.isoformat()},
        )
        _enqueue_on_commit("pra.jobs.execute_action", obj.pk, execution_job_id(obj.pk))
        _announce(obj, reason, hold_reason=reason)
    return "released"
