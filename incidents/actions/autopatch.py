"""Automatic remediation attempts: staging, approval, apply, health check, rollback, sweeps."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from incidents.actions.agents import send_command
from incidents.actions.common import (
    SYSTEM,
    IncidentError,
    _announce,
    _decision_outcome,
    _event,
    _job,
    policy_verdict,
)
from incidents.actions.lifecycle import _admin_url, _move_incident
from incidents.choices import (
    ATTEMPT_CANCELLABLE,
    ATTEMPT_TRANSITIONS,
    AttemptStatus,
    CommandKind,
    CommandStatus,
    IncidentStatus,
    Outcome,
)
from incidents.models import (
    Agent,
    AgentCommand,
    AutoPatchAttempt,
    Decision,
    Incident,
    OpsPolicy,
    approval_ttl,
)
from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, NotificationKind
from portal.lib import jobs
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.notify import notify

STAGING_GRACE = 60  # seconds past STAGING_TIMEOUT before a STAGING attempt counts as lost


REQUEUE_AFTER = 30  # seconds a runnable PENDING attempt may wait before its job is checked


def _start_patch(incident: Incident, decision: Decision) -> AutoPatchAttempt | None:
    agent = incident.agent
    verdict, why = policy_verdict(OpsPolicy.current(), agent, incident.severity)
    if verdict == "refused":
        _decision_outcome(decision, Outcome.SKIPPED, f"policy: {why}")
        _event(incident, "POLICY", f"no automatic patch: {why}")
        return None
    now = timezone.now()
    attempt = AutoPatchAttempt.objects.create(
        incident=incident,
        agent=agent,
        decision=decision,
        from_version=agent.version,
        target_version=decision.patch_version,
        severity=incident.severity,
        needs_approval=verdict == "approval",
        created=now,
        status_changed_at=now,
    )
    _move_incident(incident, IncidentStatus.MITIGATING)
    _event(incident, "ATTEMPT", f"auto-patch {agent.version} → {attempt.target_version} ({why})",
           attempt=attempt.pk)  # fmt: skip
    record(
        AuditEventType.AUTOPATCH_CHANGED,
        actor=SYSTEM,
        subject=attempt,
        details={"status": attempt.status, "target": attempt.target_version, "why": why},
    )
    if attempt.needs_approval:
        notify(
            NotificationKind.PATCH_AWAITING_APPROVAL,
            title=f"Patch {agent.name} → {attempt.target_version} needs approval",
            body=(
                f"Incident #{incident.pk}: {incident.title}. {decision.explanation} "
                f"Expires at {attempt.approval_expires_at:%Y-%m-%d %H:%M:%S %Z} unless approved."
            ),
            subject=attempt,
            severity="warning",
            url=_admin_url(incident),
        )
    else:
        _enqueue_attempt(attempt.pk)
    return attempt


def _attempt_job_id(attempt_id: int) -> str:
    return f"autopatch-{attempt_id}"


def _enqueue_attempt(attempt_id: int) -> None:
    # Staging runs inside the job: give it the staging timeout and some room.
    _job(
        "incidents.jobs.run_attempt",
        attempt_id,
        job_id=_attempt_job_id(attempt_id),
        job_timeout=settings.STAGING_TIMEOUT + STAGING_GRACE,
    )


def _move_attempt(
    attempt: AutoPatchAttempt,
    new: str,
    detail: str,
    *,
    actor: Actor | Any = SYSTEM,
    audit: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    allowed = [s for s, targets in ATTEMPT_TRANSITIONS.items() if new in targets]
    with transaction.atomic():
        won = AutoPatchAttempt.objects.filter(pk=attempt.pk, status__in=allowed).update(
            status=new, status_changed_at=timezone.now(), detail=detail[:300], **fields
        )
        if not won:
            return False
        attempt.refresh_from_db()
        _event(
            attempt.incident, "ATTEMPT", f"auto-patch {new.lower()}: {detail}", attempt=attempt.pk
        )
        record(
            AuditEventType.AUTOPATCH_CHANGED,
            actor=actor,
            subject=attempt,
            details={"status": new, "detail": detail[:300], **(audit or {})},
        )
        _announce(attempt.incident, f"auto-patch {new.lower()}")
    return True


def _end_attempt(
    attempt: AutoPatchAttempt,
    new: str,
    detail: str,
    *,
    outcome: str = Outcome.SKIPPED,
    actor: Actor | Any = SYSTEM,
    audit: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """A terminal move that did not fix the incident: the decision gets its outcome and
    the incident goes back to people (OPEN, or ACKNOWLEDGED if someone had it), so
    escalation resumes instead of the incident sitting in MITIGATING."""
    with transaction.atomic():
        if not _move_attempt(
            attempt, new, detail, actor=actor, audit=audit, finished_at=timezone.now(), **fields
        ):
            return False
        _decision_outcome(attempt.decision, outcome, detail)
        _back_to_people(attempt.incident, f"auto-patch {new.lower()}: {detail}")
    return True


def _back_to_people(incident: Incident, why: str) -> None:
    incident.refresh_from_db()
    if incident.status != IncidentStatus.MITIGATING:
        return
    target = IncidentStatus.ACKNOWLEDGED if incident.acknowledged_at else IncidentStatus.OPEN
    if _move_incident(incident, target):
        _event(incident, "HANDED_BACK", f"{target.lower()} again, a person decides: {why}")
        _announce(incident, f"{target.lower()} again: {why}")


def hand_back_failed_remediations() -> list[int]:
    """MITIGATING incidents whose host remediation ended without fixing anything
    (rejected, expired, voided, failed, or ran but did not verify) go back to people,
    so escalation resumes instead of the incident waiting forever. Returns their ids."""
    from pra.choices import ActionStatus, Verification

    ended = Q(remediation__status__in=[
        ActionStatus.REJECTED, ActionStatus.EXPIRED, ActionStatus.VOIDED, ActionStatus.FAILED,
    ]) | Q(remediation__status=ActionStatus.COMPLETED,
           remediation__verification=Verification.NOT_VERIFIED)  # fmt: skip
    handed: list[int] = []
    stuck = Incident.objects.filter(ended, status=IncidentStatus.MITIGATING)
    for incident in stuck.select_related("remediation"):
        action = incident.remediation
        if action is None:  # excluded by the filter; a row changed since
            continue
        why = f"remediation #{action.pk} ({action.action}) ended {action.status}"
        if action.status == ActionStatus.COMPLETED:
            why = f"remediation #{action.pk} ({action.action}) ran but did not verify"
        with transaction.atomic():
            _back_to_people(incident, why)
        handed.append(incident.pk)
    return handed


def approve_attempt(
    attempt: AutoPatchAttempt,
    *,
    by: User,
    confirmation: str = "",
    fingerprint: str | None = None,
) -> approvals.Tally:
    """A human signature on a patch that policy put behind multi-signature."""
    with transaction.atomic():
        locked = (
            AutoPatchAttempt.objects.select_for_update().select_related("agent").get(pk=attempt.pk)
        )
        if locked.status != AttemptStatus.PENDING or not locked.needs_approval:
            raise IncidentError("state", f"Attempt #{locked.pk} is not waiting for approval.")
        try:
            tally = approvals.sign(locked, by, fingerprint=fingerprint, confirmation=confirmation)
        except approvals.ApprovalError as exc:
            raise IncidentError(exc.code, exc.message) from None
        if tally.complete:
            _event(locked.incident, "APPROVED", f"patch approved by {', '.join(tally.approvers)}")
            _enqueue_attempt(locked.pk)
    return tally


def reject_attempt(attempt: AutoPatchAttempt | int, *, by: User, reason: str) -> AutoPatchAttempt:
    """An approver refuses a patch waiting for signatures: it ends REJECTED with the reason,
    the decision is marked not carried out and the incident goes back to people."""
    attempt_id = attempt.pk if isinstance(attempt, AutoPatchAttempt) else attempt
    if (
        by is None
        or not by.is_authenticated
        or not by.is_active
        or not by.has_perm(approvals.APPROVE_PERMISSION)
    ):
        raise IncidentError("permission", "Only approvers reject patches.")
    try:
        refuse_unstorable(reason or "", "reason")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    reason = " ".join((reason or "").split())[:250]
    if len(reason) < 5:
        raise IncidentError("reason", "A rejection needs a reason (at least 5 characters).")
    with transaction.atomic():
        locked = (
            AutoPatchAttempt.objects.select_for_update()
            .select_related("agent", "incident", "decision")
            .filter(pk=attempt_id)
            .first()
        )
        if locked is None:
            raise IncidentError("not_found", f"No auto-patch attempt #{attempt_id}.")
        if locked.status != AttemptStatus.PENDING or not locked.needs_approval:
            raise IncidentError(
                "state", f"Attempt #{locked.pk} is {locked.status}, not waiting for approval."
            )
        _end_attempt(
            locked,
            AttemptStatus.REJECTED,
            f"rejected by {by.get_username()}: {reason}",
            actor=by,
            audit={"reason": reason},
        )
    return locked


def run_attempt(attempt_id: int) -> str:
    """Staging smoke test, then apply (an update command to the agent). Called by a job."""
    from incidents import staging

    attempt = AutoPatchAttempt.objects.select_related("agent", "incident").get(pk=attempt_id)
    if attempt.needs_approval and not approvals.tally(attempt).complete:
        return "waiting-for-approval"
    if not OpsPolicy.current().auto_remediation_enabled:
        _end_attempt(attempt, AttemptStatus.CANCELLED, "kill switch is off")
        return "cancelled"
    if not _move_attempt(attempt, AttemptStatus.STAGING, "staging smoke test"):
        return "not-pending"
    ok, detail = staging.smoke_test(attempt)
    # Only while still STAGING: the sweep may have ended it (worker presumed lost).
    AutoPatchAttempt.objects.filter(pk=attempt.pk, status=AttemptStatus.STAGING).update(
        staging_result=detail[:300]
    )
    if not ok:
        _end_attempt(
            attempt, AttemptStatus.FAILED, f"staging failed: {detail}", outcome=Outcome.FAILURE
        )
        return "staging-failed"
    with transaction.atomic():
        # The sweep may have ended it while staging ran long: hold the row, then look.
        still = AutoPatchAttempt.objects.select_for_update().filter(
            pk=attempt.pk, status=AttemptStatus.STAGING
        )
        if not list(still.values_list("pk", flat=True)):
            return "ended-during-staging"
        # The kill switch may have been turned off during staging: re-check under the lock.
        if (
            not OpsPolicy.objects.select_for_update()
            .get(pk=OpsPolicy.current().pk)
            .auto_remediation_enabled
        ):
            _end_attempt(attempt, AttemptStatus.CANCELLED, "kill switch turned off during staging")
            return "cancelled"
        command = send_command(
            attempt.agent,
            CommandKind.UPDATE,
            {"version": attempt.target_version, "attempt": attempt.pk},
            by=SYSTEM,
        )
        deadline = timezone.now() + timedelta(seconds=settings.AUTOPATCH_HEALTH_WINDOW)
        if not _move_attempt(
            attempt, AttemptStatus.APPLYING, f"update to {attempt.target_version} sent",
            update_command=command, deadline=deadline,
        ):  # fmt: skip
            raise IncidentError("state", "attempt changed during staging")
    return "applying"


def roll_back(attempt: AutoPatchAttempt, reason: str) -> bool:
    """Send a rollback to the previous version and end the attempt ROLLED_BACK."""
    with transaction.atomic():
        command = send_command(
            attempt.agent,
            CommandKind.ROLLBACK,
            {"version": attempt.from_version, "attempt": attempt.pk},
            by=SYSTEM,
        )
        if not _end_attempt(
            attempt, AttemptStatus.ROLLED_BACK, reason, outcome=Outcome.FAILURE,
            rollback_command=command,
        ):  # fmt: skip
            transaction.set_rollback(True)
            return False
        notify(
            NotificationKind.AUTOPATCH_ROLLED_BACK,
            title=f"Rolled back {attempt.agent.name} to {attempt.from_version or 'previous'}",
            body=f"Auto-patch to {attempt.target_version} failed: {reason}",
            subject=attempt,
            severity="critical",
            url=_admin_url(attempt.incident),
        )
    return True


def expire_attempts(now: datetime | None = None) -> list[int]:
    """Health checks past their window: roll back."""
    now = now or timezone.now()
    window = timedelta(seconds=settings.AUTOPATCH_HEALTH_WINDOW)
    rolled = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        Q(deadline__lt=now) | Q(deadline__isnull=True, status_changed_at__lt=now - window),
        status__in=[AttemptStatus.APPLYING, AttemptStatus.HEALTH_CHECK],
    ):
        if roll_back(
            attempt,
            f"no healthy heartbeat on {attempt.target_version} within "
            f"{settings.AUTOPATCH_HEALTH_WINDOW}s",
        ):
            rolled.append(attempt.pk)
    return rolled


def expire_pending_attempts(now: datetime | None = None) -> list[int]:
    """PENDING attempts older than ``AUTOPATCH_APPROVAL_TTL`` end EXPIRED, with the reason."""
    now = now or timezone.now()
    ttl = approval_ttl()
    expired = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        status=AttemptStatus.PENDING, created__lte=now - timedelta(seconds=ttl)
    ):
        tally = approvals.tally(attempt) if attempt.needs_approval else None
        if tally is not None and not tally.complete:
            why = f"not approved within {ttl}s ({tally.count}/{tally.required} signatures)"
        else:
            why = f"approved but not started within {ttl}s (no worker ran it)"
        if _end_attempt(attempt, AttemptStatus.EXPIRED, why):
            expired.append(attempt.pk)
    return expired


def fail_stuck_staging(now: datetime | None = None) -> list[int]:
    """STAGING longer than the staging timeout (plus a grace) means the worker died there."""
    now = now or timezone.now()
    limit = settings.STAGING_TIMEOUT + STAGING_GRACE
    failed = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        status=AttemptStatus.STAGING, status_changed_at__lt=now - timedelta(seconds=limit)
    ):
        if _end_attempt(
            attempt,
            AttemptStatus.FAILED,
            f"staging did not finish within {limit}s (worker lost?); nothing was sent",
            outcome=Outcome.FAILURE,
        ):
            failed.append(attempt.pk)
    return failed


def requeue_ready_attempts(now: datetime | None = None) -> list[int]:
    """PENDING attempts free to run whose job is gone (Redis flushed, worker lost) go back on
    the queue. Running twice is harmless: the PENDING → STAGING move lets one job through."""
    now = now or timezone.now()
    requeued = []
    for attempt in AutoPatchAttempt.objects.select_related("agent").filter(
        status=AttemptStatus.PENDING, status_changed_at__lt=now - timedelta(seconds=REQUEUE_AFTER)
    ):
        if attempt.needs_approval and not approvals.tally(attempt).complete:
            continue
        if jobs.job_alive(_attempt_job_id(attempt.pk)):
            continue
        with transaction.atomic():
            _enqueue_attempt(attempt.pk)
            record(
                AuditEventType.AUTOPATCH_CHANGED,
                actor=Actor.system("reconciler"),
                subject=attempt,
                details={"status": attempt.status, "requeued": True},
            )
        requeued.append(attempt.pk)
    return requeued


def sweep_attempts(now: datetime | None = None) -> dict[str, list[int]]:
    """Every non-terminal attempt state has a bounded exit; this is the sweep that enforces it."""
    now = now or timezone.now()
    return {
        "rolled_back": expire_attempts(now),
        "expired": expire_pending_attempts(now),
        "stuck_staging": fail_stuck_staging(now),
        "requeued": requeue_ready_attempts(now),
    }


def cancel_pending_attempts(reason: str) -> list[int]:
    cancelled = []
    for attempt in AutoPatchAttempt.objects.select_related("incident", "agent", "decision").filter(
        status__in=ATTEMPT_CANCELLABLE
    ):
        if _end_attempt(attempt, AttemptStatus.CANCELLED, reason):
            cancelled.append(attempt.pk)
    return cancelled


def finish_command(command_id: int, agent: Agent, *, ok: bool, output: str) -> AgentCommand:
    """The agent reports a delivered command done (ack) or failed."""
    new = CommandStatus.ACKED if ok else CommandStatus.FAILED
    try:
        refuse_unstorable(output, "output")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    with transaction.atomic():
        won = AgentCommand.objects.filter(
            pk=command_id,
            agent=agent,
            status__in=[CommandStatus.DELIVERED, CommandStatus.PENDING],
        ).update(status=new, finished_at=timezone.now(), output=output[:8000])
        command = AgentCommand.objects.filter(pk=command_id, agent=agent).first()
        if command is None:
            raise IncidentError("not_found", f"no command #{command_id} for this agent")
        if not won:
            raise IncidentError("state", f"command #{command_id} is already {command.status}")
        record(
            AuditEventType.AGENT_COMMAND_DONE,
            actor=f"agent:{agent.name}",
            subject=command,
            details={"ok": ok, "output": output[:500]},
        )
        attempt = AutoPatchAttempt.objects.filter(update_command=command).first()
        if attempt is not None:
            if ok:
                _move_attempt(attempt, AttemptStatus.HEALTH_CHECK, "agent applied the update")
            else:
                roll_back(attempt, f"update failed on the agent: {output[:200]}")
    return command
