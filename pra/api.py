"""Remediation API. Every endpoint calls pra.actions; errors are JSON with the right 4xx."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Router, Schema, Status

from portal import approvals
from portal.dashboard import rules as approval_rules
from portal.dashboard import signatures_of
from portal.lib.text import StorableInput
from pra import actions, windows
from pra.catalog import CATALOG
from pra.choices import ActionStatus
from pra.diagnostics import DIAGNOSTICS
from pra.models import ChangeFreeze, DiagnosticRun, Host, PRAAction

router = Router(tags=["remediation"])

STATUS_FOR = {
    "permission": 403,
    "self_approval": 403,
    "not_found": 404,
    "state": 409,
    "already_signed": 409,
    "stale": 409,
    "preflight": 409,
}


class ErrorOut(Schema):
    error: str
    message: str


def _error(exc: actions.ActionError) -> Status:
    return Status(STATUS_FOR.get(exc.code, 400), {"error": exc.code, "message": exc.message})


def _need(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionError(f"missing permission {perm}")


class ParamOut(Schema):
    name: str
    description: str
    pattern: str


class CatalogEntryOut(Schema):
    name: str
    description: str
    impact: str
    idempotent: bool
    impact_note: str
    params: list[ParamOut]
    verification: str | None
    requires_window: bool = Field(
        description="Runs only inside a maintenance window (the entry says so, or its impact "
        "is listed in PRA_WINDOW_IMPACTS); an emergency is not held by windows."
    )


class HostOut(Schema):
    name: str
    address: str
    port: int
    ssh_user: str
    host_key_fingerprint: str
    tags: list[str]
    enabled: bool


class ProposeIn(StorableInput):
    action: str = Field(max_length=64)
    host: str = Field(max_length=63)
    params: dict[str, Any] = Field(default_factory=dict)
    rationale: str = Field(max_length=5000)
    auto_approve: bool = False
    evidence_ids: list[int] = Field(default_factory=list, max_length=50)
    emergency: bool = Field(
        default=False,
        description="Runs during a change freeze and outside maintenance windows; needs "
        "emergency_reason and one more signature than the impact's rule.",
    )
    emergency_reason: str = Field(default="", max_length=2000)


class ApproveIn(StorableInput):
    confirmation: str = Field(default="", max_length=100)
    fingerprint: str = Field(
        min_length=64,
        max_length=64,
        description="The action's `fingerprint` as you reviewed it: approvals bind to it.",
    )
    comment: str = Field(default="", max_length=500)


class RejectIn(StorableInput):
    reason: str = Field(max_length=1000)


class DiagnosticIn(StorableInput):
    name: str = Field(max_length=40)
    params: dict[str, Any] = Field(default_factory=dict)


class DiagnosticOut(Schema):
    id: int
    host: str
    command: str
    exit_code: int | None
    output: str
    error: str
    created: datetime


class ActionOut(Schema):
    id: int
    action: str
    host: str
    params: dict[str, Any]
    impact: str
    status: str
    rationale: str
    source: str
    proposer: str
    ai_proposed: bool
    created: datetime
    approved_at: datetime | None
    expires_at: datetime | None
    preflight_status: str
    preflight_output: str
    approvals: list[str]
    approvals_required: int
    fingerprint: str
    exit_code: int | None
    stdout: str
    stderr: str
    failure_cause: str
    failure_detail: str
    void_reason: str
    verification: str
    verification_label: str
    preflight_label: str
    verification_output: str
    evidence_ids: list[int]
    emergency: bool
    emergency_reason: str
    hold_reason: str = Field(
        description="What a WAITING action waits for (its maintenance window, a freeze, the "
        "pre-maintenance backup), or why its wait ended without a run."
    )
    maintenance: dict[str, Any] = Field(
        description="requires_window, emergency, the change freeze in force (or null), the "
        "window it is approved for, and for a PROPOSED action what approval would do "
        "(on_approval: runs now / waits for the window starting ... / refused: freeze)."
    )


def action_out(
    obj: PRAAction,
    *,
    tally: approvals.Tally | None = None,
    evidence_ids: list[int] | None = None,
    freeze: windows.FreezeLookup = windows.UNREAD,
) -> dict:
    """One action as the API shows it; ``actions_out`` gives ``tally`` and ``evidence_ids``
    read in bulk for a whole list (otherwise they are read here, three queries)."""
    if tally is None:
        tally = approvals.tally(obj)
    if evidence_ids is None:
        evidence_ids = list(obj.evidence.values_list("pk", flat=True))
    return {
        "id": obj.pk,
        "action": obj.action,
        "host": obj.host.name,
        "params": obj.params,
        "impact": obj.impact,
        "status": obj.status,
        "rationale": obj.rationale,
        "source": obj.source,
        "proposer": obj.proposer_label,
        "ai_proposed": obj.source == "AI",
        "created": obj.created,
        "approved_at": obj.approved_at,
        "expires_at": obj.expires_at,
        "preflight_status": obj.preflight_status,
        "preflight_output": obj.preflight_output,
        "approvals": tally.approvers,
        "approvals_required": tally.required,
        "fingerprint": obj.approval_fingerprint(),
        "exit_code": obj.exit_code,
        "stdout": obj.stdout,
        "stderr": obj.stderr,
        "failure_cause": obj.failure_cause,
        "failure_detail": obj.failure_detail,
        "void_reason": obj.void_reason,
        "verification": obj.verification,
        "verification_label": obj.get_verification_display(),
        "preflight_label": obj.get_preflight_status_display(),
        "verification_output": obj.verification_output,
        "evidence_ids": evidence_ids,
        "emergency": obj.emergency,
        "emergency_reason": obj.emergency_reason,
        "hold_reason": obj.hold_reason,
        "maintenance": windows.outlook(obj, freeze=freeze),
    }


def actions_out(objs: list[PRAAction]) -> list[dict]:
    """Many actions in a fixed number of queries, whatever their number: every signature
    in one query, one rule per impact, every evidence id in one query."""
    if not objs:
        return []
    rules = approval_rules()  # every impact's: the same queries whatever the page holds
    signatures = signatures_of(objs)
    evidence: dict[int, list[int]] = {}
    runs = DiagnosticRun.objects.filter(action__in=objs).order_by("-created", "-pk")
    for action_id, pk in runs.values_list("action_id", "pk"):
        evidence.setdefault(action_id, []).append(pk)
    content_type = ContentType.objects.get_for_model(PRAAction).pk
    freeze = windows.active_freeze(timezone.now())  # once for the page, not once per row
    out = []
    for obj in objs:
        current = obj.approval_fingerprint()
        names: list[str] = []
        for signature in signatures.get((content_type, str(obj.pk)), []):
            name = signature.approver.get_username()
            if signature.fingerprint == current and name not in names:
                names.append(name)
        tally = approvals.Tally(approvers=names, required=rules[obj.impact].required_approvals)
        out.append(
            action_out(obj, tally=tally, evidence_ids=evidence.get(obj.pk, []), freeze=freeze)
        )
    return out


def catalog_out() -> list[dict]:
    return [
        {
            "name": s.name,
            "description": s.description,
            "impact": s.impact,
            "idempotent": s.idempotent,
            "impact_note": s.impact_note,
            "params": [
                {"name": p.name, "description": p.description, "pattern": p.pattern}
                for p in s.params
            ],
            "verification": " ".join(s.probe.diag) if s.probe else None,
            # The rule windows.requires_window applies to an action, asked of an unsaved
            # one: the catalog entry and its impact are all it reads.
            "requires_window": windows.requires_window(PRAAction(action=s.name, impact=s.impact)),
        }
        for s in CATALOG.values()
    ]


def host_out(host: Host) -> dict:
    return {
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "ssh_user": host.ssh_user,
        "host_key_fingerprint": host.host_key_fingerprint,
        "tags": host.tag_list,
        "enabled": host.enabled,
    }


class OpeningOut(Schema):
    window: str
    label: str = Field(description="Its start in the window's own time zone, in words.")
    opens_at: datetime
    closes_at: datetime
    open_now: bool


class FreezeOut(Schema):
    reason: str
    starts_at: datetime
    ends_at: datetime
    active: bool


class MaintenanceOutlookOut(Schema):
    host: str
    summary: str = Field(description="The same, in plain words.")
    windows: list[str] = Field(description="Enabled windows that apply to the host.")
    window: OpeningOut | None = Field(
        description="The window open now, or the next one, that no change freeze overlaps "
        "(within PRA_WINDOW_MAX_WAIT_DAYS); null when there is none."
    )
    freeze: FreezeOut | None = Field(description="The change freeze in force now, or null.")
    upcoming_freezes: list[FreezeOut] = Field(description="Freezes in force or to come.")


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC"


def _freeze_out(freeze: ChangeFreeze, now: datetime) -> dict:
    return {
        "reason": freeze.reason,
        "starts_at": freeze.starts_at,
        "ends_at": freeze.ends_at,
        "active": freeze.starts_at <= now < freeze.ends_at,
    }


def maintenance_outlook_out(host: Host, now: datetime | None = None) -> dict:
    """When ``host`` may next take window-bound actions, and what freezes hold changes
    (the REST API's and the MCP tool's answer), from ``pra.windows``' own calendar."""
    now = now or timezone.now()
    names = list(windows.windows_for(host).order_by("name").values_list("name", flat=True))
    opening = windows.first_opening_for(host, now)
    active = windows.active_freeze(now)
    upcoming = windows.upcoming_freezes(now)
    days = settings.PRA_WINDOW_MAX_WAIT // 86400
    words = []
    if active is not None:
        words.append(
            f"A change freeze is on until {_when(active.ends_at)} ({active.reason}): only "
            "emergency actions run; a person proposes those in the portal."
        )
    else:
        words.append("No change freeze is on now.")
    if opening is not None:
        closes = _when(opening.closes_at)
        if opening.is_open(now):
            words.append(f"Maintenance window {opening.window.name} is open now, until {closes}.")
        else:
            words.append(
                f"The next maintenance window for {host.name} is {opening.window.name}, "
                f"starting {opening.label} (until {closes})."
            )
    elif names:
        words.append(
            f"No maintenance window for {host.name} opens in the next {days} days outside "
            "change freezes."
        )
    else:
        words.append(f"No maintenance window applies to {host.name}.")
    later = [f for f in upcoming if f.starts_at > now]
    if later:
        words.append(
            "Upcoming change freeze(s): "
            + "; ".join(f"{f.reason}, {_when(f.starts_at)} to {_when(f.ends_at)}" for f in later)
            + "."
        )
    words.append(
        "Actions that require a window (requires_window in the catalog) run only inside one."
    )
    return {
        "host": host.name,
        "summary": " ".join(words),
        "windows": names,
        "window": (
            {
                "window": opening.window.name,
                "label": opening.label,
                "opens_at": opening.opens_at,
                "closes_at": opening.closes_at,
                "open_now": opening.is_open(now),
            }
            if opening is not None
            else None
        ),
        "freeze": _freeze_out(active, now) if active is not None else None,
        "upcoming_freezes": [_freeze_out(f, now) for f in upcoming],
    }


@router.get("/catalog", response=list[CatalogEntryOut])
def list_catalog(request):
    _need(request, "portal.view_portal")
    return catalog_out()


@router.get("/hosts", response=list[HostOut])
def list_hosts(request):
    _need(request, "portal.view_portal")
    return [host_out(h) for h in Host.objects.all()]


class ProposalOut(ActionOut):
    # Shadows ActionOut.created (a timestamp) on purpose: the proposal API has always
    # answered whether it opened a new action under this name, and clients rely on it.
    created: bool = Field(  # type: ignore[assignment]
        description="false: an identical action was already open"
    )
    message: str


@router.post(
    "/actions", response={200: ProposalOut, 201: ProposalOut, 400: ErrorOut, 403: ErrorOut}
)
def propose(request, body: ProposeIn):
    """201 with the new action, or 200 with the identical action already open (same
    catalog action, host and parameters) and a message saying so: nothing is created."""
    try:
        proposal = actions.submit_proposal(
            action=body.action,
            host=body.host,
            params=body.params,
            rationale=body.rationale,
            by=request.user,
            auto_approve=body.auto_approve,
            evidence_ids=body.evidence_ids,
            emergency=body.emergency,
            emergency_reason=body.emergency_reason,
        )
    except actions.ActionError as exc:
        return _error(exc)
    out = action_out(proposal.action) | {
        "created": proposal.created,
        "message": proposal.message or f"Proposed as #{proposal.action.pk}.",
    }
    return Status(201 if proposal.created else 200, out)


@router.get("/actions", response=list[ActionOut])
def list_actions(request, status: ActionStatus | None = None, limit: int = 50):
    """Actions, newest first; `status=PROPOSED` lists those waiting for approval."""
    _need(request, "portal.view_portal")
    qs = PRAAction.objects.select_related("host", "window")
    if status:
        qs = qs.filter(status=status)
    return actions_out(list(qs[: max(1, min(limit, 200))]))


@router.get("/actions/{action_id}", response={200: ActionOut, 404: ErrorOut})
def get_action(request, action_id: int):
    _need(request, "portal.view_portal")
    return action_out(get_object_or_404(PRAAction.objects.select_related("host"), pk=action_id))


@router.post(
    "/actions/{action_id}/approve",
    response={200: ActionOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
)
def approve(request, action_id: int, body: ApproveIn):
    try:
        actions.approve_action(
            action_id,
            by=request.user,
            confirmation=body.confirmation,
            fingerprint=body.fingerprint,
            comment=body.comment,
        )
    except actions.ActionError as exc:
        return _error(exc)
    return action_out(PRAAction.objects.select_related("host").get(pk=action_id))


@router.post(
    "/actions/{action_id}/reject",
    response={200: ActionOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
)
def reject(request, action_id: int, body: RejectIn):
    try:
        obj = actions.reject_action(action_id, by=request.user, reason=body.reason)
    except actions.ActionError as exc:
        return _error(exc)
    return action_out(obj)


@router.post(
    "/actions/{action_id}/execute",
    response={202: ActionOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
)
def execute(request, action_id: int):
    try:
        obj = actions.request_execution(action_id, by=request.user)
    except actions.ActionError as exc:
        return _error(exc)
    return Status(202, action_out(obj))


@router.get(
    "/hosts/{host}/maintenance-outlook", response={200: MaintenanceOutlookOut, 404: ErrorOut}
)
def maintenance_outlook(request, host: str):
    """The host's current or next maintenance window and the change freezes, in words
    (`summary`) and fields."""
    _need(request, "portal.view_portal")
    obj = Host.objects.filter(name=host).first()
    if obj is None:
        return Status(404, {"error": "not_found", "message": f"unknown host {host!r}"})
    return maintenance_outlook_out(obj)


@router.get("/diagnostics", response=list[dict])
def list_diagnostics(request):
    _need(request, "portal.view_portal")
    return [
        {"name": d.name, "description": d.description, "params": [p.name for p in d.params]}
        for d in DIAGNOSTICS.values()
    ]


@router.post(
    "/hosts/{host}/diagnostics", response={200: DiagnosticOut, 400: ErrorOut, 403: ErrorOut}
)
def run_diagnostic(request, host: str, body: DiagnosticIn):
    try:
        run = actions.run_diagnostic(host, body.name, body.params, by=request.user)
    except actions.ActionError as exc:
        return _error(exc)
    return {
        "id": run.pk,
        "host": run.host.name,
        "command": run.command,
        "exit_code": run.exit_code,
        "output": run.output,
        "error": run.error,
        "created": run.created,
    }
