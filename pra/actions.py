"""Every write to remediation state. Admin, API, MCP, commands and jobs call these.

Status moves are compare-and-swap updates (``_move``): whoever loses a race
changes nothing. Audit events are written in the same transaction; live
events and jobs go out only on commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.errors import RequestRefused
from portal.lib import ssh
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.lib.transitions import compare_and_swap
from portal.live import LiveEvent, publish
from portal.notify import notify
from pra import transport
from pra.catalog import CatalogError, get_spec
from pra.choices import OPEN, TRANSITIONS, ActionStatus, FailureCause, Impact, Verification
from pra.diagnostics import get_diagnostic
from pra.models import DiagnosticRun, Host, PRAAction, PreflightStatus, Source

logger = logging.getLogger(__name__)

PROPOSE_PERMISSION = "portal.propose_action"
EXECUTE_PERMISSION = "portal.execute_action"
DIAGNOSE_PERMISSION = "portal.run_diagnostics"
MIN_RATIONALE = 20
DENIED_EXIT = 97
# How long a "someone is enqueueing this job" mark lives in Redis. It only has to
# outlast the gap between "the job is not in Redis" and "the job is in Redis".
ENQUEUE_GUARD_SECONDS = 30
DEFAULT_PREFLIGHT_TIMEOUT = 120
DEFAULT_CONNECTIVITY_PORTS = (22, 53, 80, 443)
VOIDED_EVENT = AuditEventType.PRA_VOIDED


class ActionError(RequestRefused):
    """A refused remediation request."""


def execution_job_id(action_id: int) -> str:
    return f"pra-execute-{action_id}"


def preflight_job_id(action_id: int) -> str:
    return f"pra-preflight-{action_id}"


# --- helpers -------------------------------------------------------------------


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
    needed = approvals.rule_for(action.impact).required_approvals
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


def _require_perm(user: AbstractBaseUser | None, perm: str, what: str) -> None:
    if user is not None and not user.has_perm(perm):
        raise ActionError("permission", f"You are not allowed to {what}.")


def _enqueue(func_path: str, action_id: int, job_id: str, queue: str = "pra") -> None:
    import django_rq

    django_rq.get_queue(queue).enqueue(
        func_path, action_id, job_id=job_id, result_ttl=3600, failure_ttl=7 * 86400
    )


def _guard_key(job_id: str) -> str:
    return f"pra:enqueue-guard:{job_id}"


def _take_enqueue_guard(job_id: str) -> bool:
    """True for exactly one of any number of concurrent callers (Redis SET NX)."""
    from portal.lib.redis import get_redis

    return bool(get_redis().set(_guard_key(job_id), "1", nx=True, ex=ENQUEUE_GUARD_SECONDS))


def _release_enqueue_guard(job_id: str) -> None:
    from portal.lib.redis import get_redis

    get_redis().delete(_guard_key(job_id))


def _enqueue_once(func_path: str, action_id: int, job_id: str) -> bool:
    """Put ``job_id`` on the queue unless it is there or another caller is putting it there.

    Checking "is the job in Redis?" and then enqueueing is a race (20 concurrent
    "execute" calls enqueued one action 7 times): the SET NX guard lets one caller
    through; the others see either the guard or the job.
    """
    if _job_alive(job_id) or not _take_enqueue_guard(job_id):
        return False
    _enqueue(func_path, action_id, job_id)
    return True


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


def _validate_rationale(rationale: str) -> str:
    text = " ".join((rationale or "").split())
    if len(text) < MIN_RATIONALE or len(set(text.lower().split())) < 4:
        raise ActionError(
            "rationale",
            f"Explain why in at least {MIN_RATIONALE} characters and a few words "
            "(what you observed and what you expect this action to fix).",
        )
    if len(text) > 5000:
        raise ActionError("rationale", "The rationale is longer than 5000 characters.")
    return text


# --- proposal --------------------------------------------------------------------


@dataclass(frozen=True)
class Proposer:
    """Who proposes: a person, an AI identity acting for a user, or a rule."""

    user: AbstractBaseUser | None
    label: str
    source: str = Source.HUMAN

    @classmethod
    def human(cls, user: AbstractBaseUser) -> Proposer:
        return cls(user=user, label=user.get_username(), source=Source.HUMAN)

    @classmethod
    def ai(cls, user: AbstractBaseUser) -> Proposer:
        return cls(user=user, label=f"AI:{user.get_username()}", source=Source.AI)

    @classmethod
    def rule(cls, name: str) -> Proposer:
        return cls(user=None, label=f"rule:{name}", source=Source.RULE)

    @property
    def actor(self) -> Actor:
        return Actor(label=self.label, user=self.user)


def validate_proposal(*, action: str, host: Host | str, params, rationale: str, auto_approve: bool):
    """Check a proposal without writing anything; returns (spec, params, rationale, host)."""
    try:
        spec = get_spec(action)
        clean_params = spec.validate_params(params)
    except CatalogError as exc:
        raise ActionError("invalid", str(exc)) from None
    text = _validate_rationale(rationale)
    if isinstance(host, str):
        host_obj = Host.objects.filter(name=host).first()
        if host_obj is None:
            raise ActionError("invalid", f"unknown host {host!r}")
        host = host_obj
    if not host.enabled:
        raise ActionError("invalid", f"host {host.name} is disabled")
    if auto_approve and spec.impact == Impact.HIGH:
        raise ActionError("invalid", "HIGH impact actions are never auto-approved.")
    return spec, clean_params, text, host


def _check_auto_approve_allowed(proposer: Proposer, auto_approve: bool) -> None:
    # An AI identity proposes; people approve. Operators may opt AI identities in.
    if auto_approve and proposer.source == Source.AI and not settings.PRA_AI_AUTO_APPROVE:
        raise ActionError(
            "invalid",
            "auto_approve is not available to AI identities here: a person approves this "
            "action in the portal. Propose it with auto_approve=false.",
        )


@dataclass(frozen=True)
class Proposal:
    """What a proposal ended on: a new action, or the identical one already open."""

    action: PRAAction
    created: bool
    message: str


def submit_proposal(
    *,
    action: str,
    host: Host | str,
    params: dict | None,
    rationale: str,
    by: Proposer | AbstractBaseUser,
    auto_approve: bool = False,
    evidence_ids: list[int] | tuple[int, ...] = (),
) -> Proposal:
    """Create a PROPOSED action after validating everything; schedule its pre-flight.

    While an identical action (same catalog action, host and parameters) is open,
    nothing is created: the open one is returned (``created=False``) with a message
    saying so, whoever proposed it (a rule and the AI end on the same action). The
    host's row is locked first, so two concurrent proposals cannot both create one.
    If the open one's pre-flight failed, proposing it again re-runs the pre-flight.
    """
    proposer = by if isinstance(by, Proposer) else Proposer.human(by)
    _require_perm(proposer.user, PROPOSE_PERMISSION, "propose remediations")
    _storable(action=action, host=host if isinstance(host, str) else "", params=params,
              rationale=rationale)  # fmt: skip
    spec, clean_params, text, host = validate_proposal(
        action=action, host=host, params=params, rationale=rationale, auto_approve=auto_approve
    )
    _check_auto_approve_allowed(proposer, auto_approve)
    if not isinstance(evidence_ids, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in evidence_ids
    ):
        raise ActionError("invalid", "evidence_ids must be a list of diagnostic ids")

    now = timezone.now()
    with transaction.atomic():
        # One proposal per host at a time: the duplicate check below cannot race.
        Host.objects.select_for_update().filter(pk=host.pk).values_list("pk").first()
        existing = (
            PRAAction.objects.select_related("host")
            .filter(host=host, action=spec.name, params=clean_params, status__in=OPEN)
            .order_by("created")
            .first()
        )
        if existing is not None:
            return Proposal(existing, False, _join_existing(existing, proposer, bool(evidence_ids)))
        evidence = list(
            DiagnosticRun.objects.select_for_update().filter(
                pk__in=evidence_ids, host=host, action__isnull=True
            )
        )
        if len(evidence) != len(set(evidence_ids)):
            raise ActionError(
                "invalid", "evidence_ids must name unattached diagnostics of the same host"
            )
        obj = PRAAction.objects.create(
            action=spec.name,
            host=host,
            params=clean_params,
            rationale=text,
            impact=spec.impact,
            source=proposer.source,
            proposed_by=proposer.user,
            proposer_label=proposer.label,
            auto_approve_requested=auto_approve,
            status=ActionStatus.PROPOSED,
            status_changed_at=now,
            created=now,
            preflight_status=(
                PreflightStatus.PENDING if settings.PRA_PREFLIGHT else PreflightStatus.OK
            ),
            preflight_requested_at=now if settings.PRA_PREFLIGHT else None,
        )
        DiagnosticRun.objects.filter(pk__in=[e.pk for e in evidence]).update(action=obj)
        record(
            AuditEventType.PRA_PROPOSED,
            actor=proposer.actor,
            subject=obj,
            details={
                "action": obj.action,
                "host": host.name,
                "params": clean_params,
                "impact": obj.impact,
                "source": obj.source,
                "auto_approve_requested": auto_approve,
                "rationale": text,
                "evidence": [e.pk for e in evidence],
            },
        )
        _announce(obj, f"{proposer.label} proposed {obj.command_display} on {host.name}")
        if not auto_approve:
            _notify_awaiting(obj)
        if settings.PRA_PREFLIGHT:
            _enqueue_on_commit("pra.jobs.preflight_action", obj.pk, preflight_job_id(obj.pk))
        elif auto_approve:
            _auto_approve(obj)
    return Proposal(obj, True, f"Proposed as action #{obj.pk}; people approve it in the portal.")


def _join_existing(existing: PRAAction, proposer: Proposer, had_evidence: bool) -> str:
    """The message for a proposal that found its twin open (re-running a failed pre-flight)."""
    message = (
        f"Not proposed again: action #{existing.pk} ({existing.command_display} on "
        f"{existing.host.name}) is already open ({existing.status}, proposed by "
        f"{existing.proposer_label}). Nothing new was created; follow #{existing.pk}."
    )
    if (
        existing.status == ActionStatus.PROPOSED
        and existing.preflight_status == PreflightStatus.FAILED
        and settings.PRA_PREFLIGHT
    ):
        _restart_preflight(existing, proposer.actor, f"proposed again by {proposer.label}")
        message += " Its pre-flight had failed and is being run again."
    if had_evidence:
        message += " The evidence you gave was not attached to it."
    return message


def propose_action(**kwargs: Any) -> PRAAction:
    """``submit_proposal`` for callers that only need the action (new or already open)."""
    return submit_proposal(**kwargs).action


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


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "no output")
    return line[:limit]


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


def rerun_preflight(action: PRAAction | int, *, by: AbstractBaseUser | Actor) -> PRAAction:
    """Run a PROPOSED action's pre-flight again, e.g. once the target has been fixed.

    Operators and approvers may ask; a pre-flight that is still running is left alone.
    """
    actor = Actor.of(by)
    if actor.user is not None and not (
        actor.user.has_perm(PROPOSE_PERMISSION) or actor.user.has_perm(approvals.APPROVE_PERMISSION)
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


def reconcile_preflights(now=None) -> dict[str, list[int]]:
    """Bound every PENDING pre-flight: re-enqueue it if its job vanished, and end it
    FAILED once it has been pending longer than ``PRA_PREFLIGHT_TIMEOUT`` (the job
    hung or was lost), so approval is never left waiting on it."""
    now = now or timezone.now()
    timeout = getattr(settings, "PRA_PREFLIGHT_TIMEOUT", DEFAULT_PREFLIGHT_TIMEOUT)
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
    _approve(action, actor=Actor.system("auto-approve"), auto=True)


def _approve(action: PRAAction, *, actor: Actor, auto: bool, approvers: list[str] = ()) -> None:
    if action.preflight_status == PreflightStatus.FAILED:
        raise _preflight_refusal(action)
    now = timezone.now()
    validity = approvals.rule_for(action.impact).validity_seconds
    expires = now + timedelta(seconds=validity)
    if not _move(
        action.pk,
        ActionStatus.PROPOSED,
        ActionStatus.APPROVED,
        approved_at=now,
        expires_at=expires,
        job_id=execution_job_id(action.pk),
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


# --- approval ---------------------------------------------------------------------


def approve_action(
    action: PRAAction | int,
    *,
    by: AbstractBaseUser,
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


def reject_action(action: PRAAction | int, *, by: AbstractBaseUser, reason: str) -> PRAAction:
    """End a PROPOSED action with a reason (approvers only)."""
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
        if not _move(obj.pk, ActionStatus.PROPOSED, ActionStatus.REJECTED):
            obj.refresh_from_db()
            raise ActionError(
                "state", f"Action #{obj.pk} is {obj.status}; only PROPOSED actions can be rejected."
            )
        obj.refresh_from_db()
        record(
            AuditEventType.PRA_REJECTED, actor=by, subject=obj, details={"reason": reason[:1000]}
        )
        _announce(obj, f"rejected by {by.get_username()}: {reason[:200]}")
    return obj


def request_execution(action: PRAAction | int, *, by: AbstractBaseUser | Actor) -> PRAAction:
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
            ActionStatus.EXPIRED: "its approval window passed; propose it again",
            ActionStatus.REJECTED: "it was rejected",
            ActionStatus.EXECUTING: "it is already running",
            ActionStatus.COMPLETED: "it already ran",
            ActionStatus.FAILED: "it already ran and failed",
            ActionStatus.VOIDED: f"{obj.void_reason or 'its approval was voided'}; "
            "propose it again",
        }[obj.status]
        raise ActionError("state", f"Action #{obj.pk} is {obj.status}: {hint}.")
    _ensure_enqueued(obj)
    return obj


# --- execution (called by jobs) -----------------------------------------------------


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
    streamed = getattr(action, "_streamed_bytes", 0) + len(chunk.encode())
    action._streamed_bytes = streamed
    if time.monotonic() - getattr(action, "_streamed_saved", float("-inf")) >= OUTPUT_SIZE_EVERY:
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


# --- periodic safety nets -----------------------------------------------------------


def reap_lost_runs(now=None) -> list[int]:
    """FAIL (worker lost) every EXECUTING action whose worker stopped beating. Never re-runs."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.PRA_HEARTBEAT_GRACE)
    reaped = []
    candidates = PRAAction.objects.filter(status=ActionStatus.EXECUTING).values_list(
        "pk", "heartbeat_at", "started_at", "action"
    )
    for pk, beat, started, name in candidates:
        overdue = started and started + timedelta(seconds=get_spec(name).timeout) + grace < now
        silent = (beat or started) is None or (beat or started) + grace < now
        if not (overdue or silent):
            continue
        detail = "no heartbeat from the worker" if silent else "ran past its timeout"
        obj = finish_execution(pk, cause=FailureCause.WORKER_LOST, detail=detail)
        if obj is not None:
            reaped.append(pk)
    return reaped


def _job_alive(job_id: str) -> bool:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from portal.lib.redis import get_redis

    try:
        status = Job.fetch(job_id, connection=get_redis()).get_status()
    except NoSuchJobError:
        return False
    return status in {
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.SCHEDULED,
        JobStatus.DEFERRED,
    }


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


def reconcile_approved(now=None) -> list[int]:
    """Re-enqueue APPROVED actions whose job vanished (Redis flush/restart) while still valid."""
    now = now or timezone.now()
    requeued = []
    for obj in PRAAction.objects.filter(status=ActionStatus.APPROVED, expires_at__gt=now):
        if _ensure_enqueued(obj):
            requeued.append(obj.pk)
    return requeued


def expire_due(now=None) -> list[int]:
    now = now or timezone.now()
    due = list(
        PRAAction.objects.filter(status=ActionStatus.APPROVED, expires_at__lte=now).values_list(
            "pk", flat=True
        )
    ) + list(
        PRAAction.objects.filter(
            status=ActionStatus.PROPOSED,
            created__lte=now - timedelta(seconds=settings.PRA_PROPOSAL_TTL),
        ).values_list("pk", flat=True)
    )
    return [pk for pk in due if expire_action(pk)]


# --- diagnostics -------------------------------------------------------------------


def run_diagnostic(
    host: Host | str, name: str, params: dict | None = None, *, by: AbstractBaseUser | Actor
) -> DiagnosticRun:
    """Run one read-only diagnostic over SSH and keep its result (usable as evidence)."""
    actor = Actor.of(by)
    _require_perm(actor.user, DIAGNOSE_PERMISSION, "run diagnostics")
    _storable(host=host if isinstance(host, str) else "", name=name, params=params)
    try:
        argv = get_diagnostic(name).argv(params)
    except CatalogError as exc:
        raise ActionError("invalid", str(exc)) from None
    if isinstance(host, str):
        found = Host.objects.filter(name=host).first()
        if found is None:
            raise ActionError("invalid", f"unknown host {host!r}")
        host = found
    if name == "test_connectivity":
        argv = _connectivity_argv(host, argv, actor)
    exit_code, output, error = None, "", ""
    try:
        result = transport.run_diag(host, argv)
        exit_code, output = result.exit_code, result.stdout + result.stderr
    except ssh.SSHError as exc:
        error = str(exc)
    with transaction.atomic():
        run = DiagnosticRun.objects.create(
            host=host,
            command=" ".join(argv),
            exit_code=exit_code,
            output=output,
            error=error,
            requested_by=actor.label,
        )
        record(
            AuditEventType.DIAGNOSTIC_RUN,
            actor=actor,
            subject=run,
            details={
                "host": host.name,
                "command": run.command,
                "exit_code": exit_code,
                "error": error,
            },
        )
    return run


def connectivity_ports() -> tuple[int, ...]:
    """Ports ``test_connectivity`` may probe, besides each registered host's SSH port."""
    return tuple(getattr(settings, "PRA_CONNECTIVITY_PORTS", DEFAULT_CONNECTIVITY_PORTS))


def _connectivity_argv(host: Host, argv: list[str], actor: Actor) -> list[str]:
    """Only registered hosts, on allowed ports: a target is not a port scanner.

    The destination is a registered host's name or address (a name is sent as its
    address); the port is one of ``PRA_CONNECTIVITY_PORTS`` or that host's SSH port.
    A refusal is audited like a run.
    """
    verb, destination, port = argv[0], argv[1], int(argv[2])
    target = Host.objects.filter(name=destination).first() or (
        Host.objects.filter(address=destination).order_by("pk").first()
    )
    allowed = set(connectivity_ports())
    if target is not None:
        allowed |= set(Host.objects.filter(address=target.address).values_list("port", flat=True))
    if target is not None and port in allowed:
        return [verb, target.address, str(port)]
    if target is None:
        why = f"{destination} is not a registered host's name or address"
    else:
        why = (
            f"port {port} is not allowed for {destination} (allowed: "
            + ", ".join(str(p) for p in sorted(allowed))
            + ")"
        )
    with transaction.atomic():
        record(
            AuditEventType.DIAGNOSTIC_RUN,
            actor=actor,
            subject=host,
            details={
                "host": host.name,
                "command": " ".join(argv),
                "refused": why,
            },
        )
    raise ActionError(
        "invalid",
        f"test_connectivity refused: {why}. It reaches only registered hosts, on their SSH "
        "port or the ports the admin allows (PRA_CONNECTIVITY_PORTS).",
    )


# --- hosts -------------------------------------------------------------------------


def add_host(
    *,
    name: str,
    address: str,
    port: int = 22,
    ssh_user: str = "pra",
    host_key: str,
    tags: str = "",
    by: AbstractBaseUser | Actor | str = "system:cli",
) -> Host:
    """Register a host with the host key the caller has seen and confirmed."""
    from django.core.exceptions import ValidationError

    try:
        fp = ssh.fingerprint(host_key)
    except ValueError as exc:
        raise ActionError("invalid", f"host key: {exc}") from None
    host = Host(
        name=name,
        address=address,
        port=port,
        ssh_user=ssh_user,
        host_key=host_key.strip(),
        host_key_fingerprint=fp,
        tags=tags,
    )
    try:
        host.full_clean()
    except ValidationError as exc:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        raise ActionError("invalid", problems) from None
    with transaction.atomic():
        host.save()
        record(
            AuditEventType.HOST_ADDED,
            actor=by,
            subject=host,
            details={"name": name, "address": address, "port": port, "fingerprint": fp},
        )
    return host


HOST_EDITABLE = ("name", "address", "port", "ssh_user", "host_key", "tags", "enabled")
_FIELD_WORDS = {
    "name": "name",
    "address": "address",
    "port": "port",
    "ssh_user": "user",
    "host_key": "host key",
}


def update_host(host: Host | int, *, by: AbstractBaseUser | Actor | str, **changes: Any) -> Host:
    """Change a host's settings (``HOST_EDITABLE``); one audit event, nothing if unchanged.

    A change of name, address, port, user or host key bumps the host's ``revision``,
    which every approval's fingerprint includes, so an approval given before the edit
    never counts again (not even once the edit is reverted). In the same transaction
    every APPROVED action on the host ends VOIDED ("approval voided: host dns-1 changed
    (address)") and never runs; PROPOSED ones keep waiting, their signatures void,
    their pre-flight run again against the host as it is now. Disabling a host voids
    its APPROVED actions too.
    """
    from django.core.exceptions import ValidationError

    actor = Actor.of(by)
    unknown = sorted(set(changes) - set(HOST_EDITABLE))
    if unknown:
        raise ActionError("invalid", f"a host has no editable field {', '.join(unknown)}")
    _storable(**{k: v for k, v in changes.items() if isinstance(v, str)})
    fingerprint = None
    if "host_key" in changes:
        try:
            fingerprint = ssh.fingerprint(changes["host_key"])
        except ValueError as exc:
            raise ActionError("invalid", f"host key: {exc}") from None
        changes["host_key"] = changes["host_key"].strip()
    host_id = host.pk if isinstance(host, Host) else host
    with transaction.atomic():
        current = Host.objects.select_for_update().filter(pk=host_id).first()
        if current is None:
            raise ActionError("not_found", f"No host #{host_id}.")
        before = {field: getattr(current, field) for field in changes}
        old_fingerprint = current.host_key_fingerprint
        for field, value in changes.items():
            setattr(current, field, value)
        if fingerprint is not None:
            current.host_key_fingerprint = fingerprint
        try:
            current.full_clean()
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise ActionError("invalid", problems) from None
        changed = [f for f in changes if getattr(current, f) != before[f]]
        if not changed:
            if isinstance(host, Host):
                host.refresh_from_db()
            return current
        moved = [f for f in Host.CONNECTION_FIELDS if f in changed]
        if moved:
            current.revision += 1
        current.save()
        voided, rerun = [], []
        if moved:
            words = ", ".join(_FIELD_WORDS[f] for f in moved)
            voided, rerun = _void_host_approvals(current, f"changed ({words})", actor)
        elif "enabled" in changed and not current.enabled:
            # Hands off: re-enabling later does not bring an approval back.
            voided, _ = _void_host_approvals(current, "disabled", actor, rerun=False)
        details: dict[str, Any] = {
            field: {"old": str(before[field]), "new": str(getattr(current, field))}
            for field in changed
            if field != "host_key"
        }
        if "host_key" in changed:
            details["host_key"] = {"old": old_fingerprint, "new": current.host_key_fingerprint}
        record(
            AuditEventType.HOST_KEY_PINNED
            if changed == ["host_key"]
            else AuditEventType.HOST_UPDATED,
            actor=actor,
            subject=current,
            details={
                "changes": details,
                "revision": current.revision,
                "voided": voided,
                "preflight_rerun": rerun,
            },
        )
    if isinstance(host, Host):
        host.refresh_from_db()
    return current


def _void_host_approvals(
    host: Host, what: str, actor: Actor, *, rerun: bool = True
) -> tuple[list[int], list[int]]:
    """Void the host's APPROVED actions; re-run its PROPOSED ones' pre-flight."""
    reason = f"approval voided: host {host.name} {what}"
    voided = [
        a.pk
        for a in PRAAction.objects.select_related("host").filter(
            host=host, status=ActionStatus.APPROVED
        )
        if _void(a, reason, actor=actor)
    ]
    rerun_ids: list[int] = []
    if not rerun:
        return voided, rerun_ids
    for waiting in PRAAction.objects.select_related("host").filter(
        host=host, status=ActionStatus.PROPOSED
    ):
        if settings.PRA_PREFLIGHT:
            _restart_preflight(waiting, actor, f"host {host.name} {what}")
            rerun_ids.append(waiting.pk)
        else:
            _announce(waiting, f"host {host.name} {what}: signatures void", approvals=0)
    return voided, rerun_ids


def pin_host_key(host: Host, host_key: str, *, by: AbstractBaseUser | Actor | str) -> Host:
    """Replace a host's pinned key (after a known re-install): ``update_host`` rules apply."""
    return update_host(host, by=by, host_key=host_key)
