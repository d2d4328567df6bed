"""Proposing a remediation: validation, de-duplication against open actions, evidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType
from pra import proxmox
from pra.actions.approval import _auto_approve
from pra.actions.common import (
    PROPOSE_PERMISSION,
    ActionError,
    _announce,
    _enqueue_on_commit,
    _notify_awaiting,
    _require_perm,
    _storable,
    preflight_job_id,
)
from pra.actions.preflight import _restart_preflight
from pra.catalog import ActionSpec, CatalogError, get_spec
from pra.choices import OPEN, ActionStatus, Impact
from pra.models import DiagnosticRun, Host, PRAAction, PreflightStatus, Source

MIN_RATIONALE = 20


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


@dataclass(frozen=True)
class Proposer:
    """Who proposes: a person, an AI identity acting for a user, or a rule."""

    user: User | None
    label: str
    source: str = Source.HUMAN

    @classmethod
    def human(cls, user: User) -> Proposer:
        return cls(user=user, label=user.get_username(), source=Source.HUMAN)

    @classmethod
    def ai(cls, user: User) -> Proposer:
        return cls(user=user, label=f"AI:{user.get_username()}", source=Source.AI)

    @classmethod
    def rule(cls, name: str) -> Proposer:
        return cls(user=None, label=f"rule:{name}", source=Source.RULE)

    @property
    def actor(self) -> Actor:
        return Actor(label=self.label, user=self.user)


def validate_proposal(
    *, action: str, host: Host | str, params: object, rationale: str, auto_approve: bool
) -> tuple[ActionSpec, dict[str, str], str, Host]:
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
    if spec.name in proxmox.RESTORE_ACTIONS:
        try:
            proxmox.check_restore(clean_params)
        except ValueError as exc:
            raise ActionError("invalid", str(exc)) from None
    if spec.tags and not set(spec.tags) & set(host.tag_list):
        raise ActionError(
            "invalid", f"{spec.name} is for hosts tagged {'/'.join(spec.tags)}; {host.name} is not"
        )
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
    params: dict[str, Any] | None,
    rationale: str,
    by: Proposer | User,
    auto_approve: bool = False,
    evidence_ids: list[int] | tuple[int, ...] = (),
    emergency: bool = False,
    emergency_reason: str = "",
) -> Proposal:
    """Create a PROPOSED action after validating everything; schedule its pre-flight.

    While an identical action (same catalog action, host and parameters) is open,
    nothing is created: the open one is returned (``created=False``) with a message
    saying so, whoever proposed it (a rule and the AI end on the same action). The
    host's row is locked first, so two concurrent proposals cannot both create one.
    If the open one's pre-flight failed, proposing it again re-runs the pre-flight.

    ``emergency``: it runs during a change freeze and outside maintenance windows; it
    needs a typed ``emergency_reason`` and one more signature than its impact's rule,
    and is never auto-approved.
    """
    proposer = by if isinstance(by, Proposer) else Proposer.human(by)
    _require_perm(proposer.user, PROPOSE_PERMISSION, "propose remediations")
    _storable(action=action, host=host if isinstance(host, str) else "", params=params,
              rationale=rationale)  # fmt: skip
    spec, clean_params, text, target = validate_proposal(
        action=action, host=host, params=params, rationale=rationale, auto_approve=auto_approve
    )
    host = target
    _check_auto_approve_allowed(proposer, auto_approve)
    _storable(emergency_reason=emergency_reason)
    emergency_reason = validate_emergency(emergency, emergency_reason, auto_approve)
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
            message = _join_existing(existing, proposer, bool(evidence_ids))
            if emergency and not existing.emergency:
                message += f" #{existing.pk} is not an emergency: reject it first to propose one."
            return Proposal(existing, False, message)
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
            emergency=bool(emergency),
            emergency_reason=emergency_reason,
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
                **({"emergency": emergency_reason} if emergency else {}),
            },
        )
        _announce(obj, f"{proposer.label} proposed {obj.command_display} on {host.name}")
        if not auto_approve:
            _notify_awaiting(obj)
        if settings.PRA_PREFLIGHT:
            _enqueue_on_commit("pra.jobs.preflight_action", obj.pk, preflight_job_id(obj.pk))
        elif auto_approve:
            _auto_approve(obj)
    message = f"Proposed as action #{obj.pk}; people approve it in the portal."
    return Proposal(obj, True, f"{message} {_window_note(obj)}".strip())


def validate_emergency(emergency: object, reason: str, auto_approve: bool = False) -> str:
    """Check the emergency flag and its typed reason without writing anything; returns
    the reason as stored ("" for an ordinary proposal). ``submit_proposal`` and the
    admin's propose form both call it."""
    if not isinstance(emergency, bool):
        raise ActionError("invalid", "emergency must be true or false")
    if not emergency:
        if (reason or "").strip():
            raise ActionError("invalid", "emergency_reason is only for emergency actions")
        return ""
    text = " ".join((reason or "").split())
    if len(text) < MIN_RATIONALE or len(set(text.lower().split())) < 4:
        raise ActionError(
            "emergency_reason",
            f"An emergency needs a typed reason (at least {MIN_RATIONALE} characters and a few "
            "words): why it cannot wait for the next maintenance window or the end of a freeze.",
        )
    if len(text) > 2000:
        raise ActionError(
            "emergency_reason", "The emergency reason is longer than 2000 characters."
        )
    if auto_approve:
        raise ActionError("invalid", "Emergency actions are never auto-approved.")
    return text


def _window_note(action: PRAAction) -> str:
    """What windows and freezes mean for this proposal, in words (for the proposer)."""
    from pra import windows

    gate = windows.gate_for(action)
    if action.emergency:
        return (
            "EMERGENCY: it runs as soon as approved, even during a change freeze, and needs "
            f"{approvals.required_signatures(action)} signature(s) (one more than usual)."
        )
    if gate.kind == "wait":
        return f"It runs only in a maintenance window: once approved it is {gate.reason}."
    if gate.kind == "refuse":
        return f"It cannot be approved now: {gate.reason}"
    return ""


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
