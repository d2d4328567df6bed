"""Shared pieces of the remediation actions: errors, job ids, compare-and-swap moves,
announcements and enqueue-on-commit guards."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.errors import RequestRefused
from portal.lib import jobs
from portal.lib.permissions import require_perm
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.lib.transitions import compare_and_swap
from portal.live import LiveEvent, publish
from portal.notify import notify
from pra.choices import TRANSITIONS, ActionStatus, Impact
from pra.models import PRAAction

logger = logging.getLogger("pra.actions")


PROPOSE_PERMISSION = "portal.propose_action"


EXECUTE_PERMISSION = "portal.execute_action"


DENIED_EXIT = 97


ENQUEUE_GUARD_SECONDS = jobs.ENQUEUE_GUARD_SECONDS


VOIDED_EVENT = AuditEventType.PRA_VOIDED


class ActionError(RequestRefused):
    """A refused remediation request."""


def execution_job_id(action_id: int) -> str:
    return f"pra-execute-{action_id}"


def preflight_job_id(action_id: int) -> str:
    return f"pra-preflight-{action_id}"


def _move(action_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(PRAAction, action_id, current, new, TRANSITIONS, **fields)


def _announce(action: PRAAction, summary: str = "", **data: Any) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.PRA_ACTION,
            subject_type="pra.praaction",
            subject_id=str(action.pk),
            status=action.status,
            summary=summary[:300],
            data={
                "action": action.action,
                "host": action.host.name,
                "impact": action.impact,
                "verification": action.verification,
                "verification_label": action.get_verification_display(),
                "preflight_label": action.get_preflight_status_display(),
                "preflight_status": action.preflight_status,
                **data,
            },
        )
    )


def _admin_url(action: PRAAction) -> str:
    return reverse("admin:pra_praaction_change", args=[action.pk])


def _notify_awaiting(action: PRAAction, why: str = "") -> None:
    """Tell approvers an action waits for them (never when it is about to be auto-approved)."""
    needed = approvals.required_signatures(action)
    notify(
        NotificationKind.PRA_AWAITING_APPROVAL,
        title=f"Approval needed: {action.command_display} on {action.host.name}",
        body=(
            f"{action.proposer_label} proposed it ({action.impact} impact, "
            f"{needed} approval(s) needed){why}.\n\n{action.rationale}"
        ),
        subject=action,
        severity="warning" if action.impact == Impact.HIGH else "info",
        url=_admin_url(action),
    )


def _require_perm(user: User | None, perm: str, what: str) -> None:
    require_perm(user, perm, what, ActionError)


def _enqueue(func_path: str, action_id: int, job_id: str, queue: str = "pra") -> None:
    # A module-level name of its own: bench/pra_latency.py swaps it to time the enqueue.
    jobs.enqueue(
        func_path, action_id, queue=queue, job_id=job_id, result_ttl=3600,
        failure_ttl=7 * 86400,
    )  # fmt: skip


_take_enqueue_guard = jobs.take_enqueue_guard


_release_enqueue_guard = jobs.release_enqueue_guard


def _enqueue_once(func_path: str, action_id: int, job_id: str) -> bool:
    """Put ``job_id`` on the queue unless it is there or another caller is putting it there
    (``portal.lib.jobs.enqueue_once_with``: a Redis SET NX guard)."""
    return jobs.enqueue_once_with(job_id, lambda: _enqueue(func_path, action_id, job_id))


def _enqueue_on_commit(func_path: str, action_id: int, job_id: str, *, again: bool = False) -> None:
    """Enqueue once the transaction commits. ``again``: a deliberate new run of a job
    that has ended (a re-run pre-flight), so an earlier enqueue's guard does not count."""

    def go() -> None:
        if again:
            _release_enqueue_guard(job_id)
        _enqueue_once(func_path, action_id, job_id)

    transaction.on_commit(go)


def _storable(**fields: Any) -> None:
    """Refuse text the database cannot store (NUL, lone surrogates), naming the field."""
    try:
        for name, value in fields.items():
            refuse_unstorable(value, name)
    except UnstorableText as exc:
        raise ActionError("invalid", str(exc)) from None


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "no output")
    return line[:limit]


_job_alive = jobs.job_alive


def _ensure_enqueued(obj: PRAAction) -> bool:
    """Re-enqueue an APPROVED action's job if it vanished; exactly once however many
    callers (sweeps, "execute" calls) ask at the same moment."""
    job_id = execution_job_id(obj.pk)
    if _job_alive(job_id) or not _take_enqueue_guard(job_id):
        return False
    with transaction.atomic():
        still = PRAAction.objects.filter(
            pk=obj.pk, status=ActionStatus.APPROVED, expires_at__gt=timezone.now()
        ).exists()
        if not still:  # claimed or expired since the caller looked
            transaction.on_commit(lambda: _release_enqueue_guard(job_id))
            return False
        record(
            AuditEventType.PRA_REENQUEUED,
            actor=Actor.system("reconciler"),
            subject=obj,
            details={"job_id": job_id},
        )
        # django_rq enqueues on commit: the audit row and the job go together.
        _enqueue("pra.jobs.execute_action", obj.pk, job_id)
    return True
