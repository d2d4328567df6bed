"""Remediation's MCP tools: an AI assistant diagnoses and proposes; only people approve.

Registered from ``PraConfig.ready()`` and served by the portal's MCP server
(``portal.mcp``: identity, audit of every call, transports). Every tool calls
``pra.actions``, the same functions the admin and the API call. There is
deliberately no tool that approves or rejects: approval happens in the portal,
by people.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from django.contrib.auth.models import User
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from portal.audit import subject_of
from portal.mcp.core import (
    DIAGNOSTIC,
    READ_ONLY,
    ActedButFailed,
    Call,
    ToolError,
    require_view,
    run,
    tool,
)
from pra import actions
from pra.api import (
    ActionOut,
    CatalogEntryOut,
    HostOut,
    MaintenanceOutlookOut,
    action_out,
    catalog_out,
    host_out,
    maintenance_outlook_out,
)
from pra.choices import OPEN, TERMINAL, ActionStatus, Verification
from pra.models import DiagnosticRun, Host, PRAAction

MAX_WAIT_SECONDS = 300
POLL_SECONDS = 0.2

INSTRUCTIONS = """\
Ops Portal remediation tools. You can look (diagnostics), and you can propose a
fix from a fixed catalog; people approve it in the portal, never you.

Workflow:
1. list_hosts and list_pra_catalog to see what exists.
2. Diagnose with get_service_status, check_service_health, get_service_logs,
   analyze_errors, get_system_info, get_memory_info, get_disk_usage,
   get_container_status, test_connectivity. Each result has an `id`.
3. propose_pra_action with a rationale (what you observed, what you expect the
   action to fix) and the ids of the diagnostics that support it in
   evidence_ids. The action is shown to people as proposed by an AI assistant.
4. Tell the user that a person must approve action #N in the portal. Check with
   get_pra_action or list_pending_actions; do not retry proposing (an identical
   open action is returned with created=false instead of a new one).
5. Once it is APPROVED, call execute_pra_action: it runs on the target (or waits
   for the run the portal already started) and returns the outcome and the
   verification (VERIFIED means the catalog's probe confirmed the fix).
6. Verify yourself with the same diagnostic you started from.

Maintenance windows and change freezes: list_pra_catalog says per entry whether
it requires_window; maintenance_outlook(host) says which window is open now or
comes next for a host and which change freezes are on or coming. Every action
result has `maintenance` and `hold_reason`. If maintenance.on_approval says it
waits, tell the user the action will run in the window named there (status
WAITING once approved; do not call execute_pra_action before it is APPROVED). If
it says approval is refused because of a change freeze, tell the user: only
emergency actions run during a freeze, and you cannot propose one. A person
proposes it in the portal's propose form (Emergency, with a typed reason why it
cannot wait for the next window or the end of the freeze); it needs one more
signature.
"""

# --- result shapes ------------------------------------------------------------------


class DiagnosticResult(BaseModel):
    """One read-only diagnostic run, kept by the portal."""

    id: int = Field(description="Diagnostic id: pass it in evidence_ids when proposing.")
    host: str
    diagnostic: str
    command: str = Field(description="What ran on the target, through its pra-diag wrapper.")
    exit_code: int | None
    output: str
    created: datetime


class ExecutionResult(ActionOut):
    """The action after asking to run it and waiting for the outcome."""

    finished: bool = Field(description="True when the run and its verification are over.")
    waited_seconds: float
    note: str


# --- listing ------------------------------------------------------------------------


def _list_hosts(call: Call) -> list[dict]:
    require_view(call)
    return [host_out(h) for h in Host.objects.all()]


@tool(annotations=READ_ONLY)
async def list_hosts() -> list[HostOut]:
    """List the hosts the portal can act on (name, address, tags, enabled).

    Use a host's `name` as the `host` argument of the other tools.
    """
    return await run(_list_hosts)


def _list_catalog(call: Call) -> list[dict]:
    require_view(call)
    return catalog_out()


@tool(annotations=READ_ONLY)
async def list_pra_catalog() -> list[CatalogEntryOut]:
    """List the remediation catalog: the only actions that can ever be proposed.

    Each entry has its impact (LOW, MEDIUM, HIGH: how many people must approve),
    its parameters with their allowed pattern, the probe that verifies it, and
    requires_window: true when it runs only inside a maintenance window (see
    maintenance_outlook for when the next one opens on a host).
    """
    return await run(_list_catalog)


def _maintenance_outlook(call: Call, host: str) -> dict:
    require_view(call)
    obj = Host.objects.filter(name=host).first()
    if obj is None:
        raise ToolError(f"No host {host!r}. list_hosts shows the hosts by name.")
    call.subject = subject_of(obj)
    return maintenance_outlook_out(obj)


# --- diagnostics (read-only, over SSH through the target's pra-diag) -----------------

HostName = Annotated[
    str, Field(min_length=1, max_length=63, description="Host name from list_hosts, e.g. dns-1.")
]
Unit = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="systemd unit name, e.g. unbound (letters, digits, '_', '.', '-').",
    ),
]


@tool(annotations=READ_ONLY)
async def maintenance_outlook(host: HostName) -> MaintenanceOutlookOut:
    """When a host may take actions that require a maintenance window, and what the
    change freezes allow.

    `window`: the window open now (open_now) or the next one that no freeze overlaps;
    `freeze`: the change freeze in force (only emergencies run, and only a person
    proposes those in the portal); `upcoming_freezes`; `summary` says it in words.
    """
    return await run(_maintenance_outlook, host)


def _diagnose(call: Call, host: str, name: str, params: dict[str, Any]) -> dict | ActedButFailed:
    run = actions.run_diagnostic(host, name, params, by=call.actor)
    call.subject = subject_of(run)
    if run.error:
        return ActedButFailed(
            f"Could not run {name} on {run.host.name}: {run.error} "
            f"(recorded as diagnostic #{run.pk}). Check the host with test_connectivity "
            "from another host, or tell a person the host is unreachable."
        )
    return _diagnostic_out(run, name)


def _diagnostic_out(run: DiagnosticRun, name: str) -> dict:
    return {
        "id": run.pk,
        "host": run.host.name,
        "diagnostic": name,
        "command": run.command,
        "exit_code": run.exit_code,
        "output": run.output,
        "created": run.created,
    }


@tool(annotations=DIAGNOSTIC)
async def get_service_status(host: HostName, unit: Unit) -> DiagnosticResult:
    """Is a systemd unit active? (`systemctl is-active UNIT` on the host).

    The first output line is the state: active, inactive, failed, activating...
    A non-zero exit code just means "not active"; it is not a tool failure.
    """
    return await run(_diagnose, host, "service_status", {"unit": unit}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def get_service_logs(
    host: HostName,
    unit: Unit,
    lines: Annotated[int, Field(ge=1, le=5000, description="How many journal lines.")] = 100,
) -> DiagnosticResult:
    """The last LINES lines of a unit's journal."""
    return await run(_diagnose, host, "service_logs", {"unit": unit, "lines": lines}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def analyze_errors(
    host: HostName,
    unit: Unit,
    minutes: Annotated[int, Field(ge=1, le=1440, description="Time window in minutes.")] = 60,
) -> DiagnosticResult:
    """A unit's error lines over the last MINUTES minutes: err or worse, and
    lower-priority lines that read as errors (a daemon's own complaint on stderr)."""
    return await run(
        _diagnose, host, "analyze_errors", {"unit": unit, "minutes": minutes}, acts=True
    )


@tool(annotations=DIAGNOSTIC)
async def check_service_health(host: HostName, unit: Unit) -> DiagnosticResult:
    """HEALTHY or UNHEALTHY for a unit, with the reasons (active state, recent errors)."""
    return await run(_diagnose, host, "service_health", {"unit": unit}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def get_system_info(host: HostName) -> DiagnosticResult:
    """Hostname, kernel, uptime and load of a host."""
    return await run(_diagnose, host, "system_info", {}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def get_memory_info(host: HostName) -> DiagnosticResult:
    """Memory and swap use of a host."""
    return await run(_diagnose, host, "memory_info", {}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def get_disk_usage(host: HostName) -> DiagnosticResult:
    """Filesystem usage of a host (df)."""
    return await run(_diagnose, host, "disk_usage", {}, acts=True)


@tool(annotations=DIAGNOSTIC)
async def get_container_status(
    host: HostName,
    name: Annotated[str, Field(min_length=1, max_length=128, description="Container name.")],
) -> DiagnosticResult:
    """State of a podman container (running, exited, ...)."""
    return await run(_diagnose, host, "container_status", {"name": name}, acts=True)


@tool(name="test_connectivity", annotations=DIAGNOSTIC)
async def check_connectivity(
    host: HostName,
    target: Annotated[
        str,
        Field(min_length=1, max_length=128, description="Host name or IPv4 address to reach."),
    ],
    port: Annotated[int, Field(ge=1, le=65535, description="TCP port.")] = 443,
) -> DiagnosticResult:
    """Can HOST open a TCP connection to TARGET:PORT? (from the host, not from the portal)."""
    return await run(
        _diagnose, host, "test_connectivity", {"target": target, "port": port}, acts=True
    )


# --- proposals and their state --------------------------------------------------------


def _acting_user(call: Call) -> User:
    """The user an AI identity acts for (acting tools only run for an authenticated one)."""
    if call.user is None:
        raise actions.ActionError("permission", "This tool needs an authenticated identity.")
    return call.user


def _propose(
    call: Call,
    action: str,
    host: str,
    params: dict[str, str],
    rationale: str,
    auto_approve: bool,
    evidence_ids: tuple[int, ...],
) -> dict:
    proposal = actions.submit_proposal(
        action=action,
        host=host,
        params=params,
        rationale=rationale,
        by=actions.Proposer.ai(_acting_user(call)),
        auto_approve=auto_approve,
        evidence_ids=evidence_ids,
    )
    call.subject = subject_of(proposal.action)
    return {**action_out(proposal.action), "created": proposal.created, "note": proposal.message}


class ProposalResult(ActionOut):
    """The action a proposal ended on."""

    # Shadows ActionOut.created (a timestamp) on purpose, as the HTTP API's ProposalOut.
    created: bool = Field(  # type: ignore[assignment]
        description="False when an identical action (same action, host and params) was "
        "already open: this is that action, nothing new was created."
    )
    note: str


@tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
async def propose_pra_action(
    action: Annotated[str, Field(max_length=64, description="Catalog action name.")],
    host: HostName,
    params: Annotated[
        dict[str, str],
        Field(
            max_length=10,
            description="The action's parameters (see list_pra_catalog); {} when it has none.",
        ),
    ],
    rationale: Annotated[
        str,
        Field(
            max_length=5000,
            description="Why: what you observed and what you expect this action to fix "
            "(at least 20 characters). People read it before approving.",
        ),
    ],
    auto_approve: Annotated[
        bool,
        Field(
            description="Ask for automatic approval. Granted only if the portal's policy "
            "allows it for the action's impact (never for HIGH); otherwise people approve."
        ),
    ] = False,
    evidence_ids: Annotated[
        tuple[Annotated[int, Field(ge=1)], ...],
        Field(max_length=50, description="Ids of diagnostics on this host that support it."),
    ] = (),
) -> ProposalResult:
    """Propose a catalog action on a host. It does NOT run it.

    The result's `maintenance.on_approval` says whether it will run once approved,
    wait for a maintenance window ("approved for the window starting Sun 02:00 UTC"),
    or cannot be approved now because of a change freeze; `note` says the same.

    The proposal is PROPOSED until people approve it in the portal (you cannot
    approve). It is shown as proposed by an AI assistant under your identity.
    Parameters are checked against the catalog; anything outside it is refused
    and nothing is created. If the same action on the same host with the same
    parameters is already open (proposed by anyone, e.g. a detection rule), you get
    that action back with created=false: follow it instead of proposing again.
    """
    return await run(
        _propose, action, host, params, rationale, auto_approve, evidence_ids, acts=True
    )


def _get_action(call: Call, action_id: int) -> dict:
    require_view(call)
    obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if obj is None:
        raise ToolError(f"No action #{action_id}. list_pending_actions shows the open ones.")
    call.subject = subject_of(obj)
    return action_out(obj)


ActionId = Annotated[int, Field(ge=1, description="Action id, as returned by propose_pra_action.")]


@tool(annotations=READ_ONLY)
async def get_pra_action(action_id: ActionId) -> ActionOut:
    """One action with its status, approvals, output and verification.

    Statuses: PROPOSED (waiting for people), APPROVED (may be executed until
    expires_at), EXECUTING, COMPLETED, FAILED, REJECTED, EXPIRED.
    """
    return await run(_get_action, action_id)


def _pending(call: Call, host: str | None) -> list[dict]:
    require_view(call)
    qs = PRAAction.objects.select_related("host").filter(status__in=OPEN)
    if host:
        qs = qs.filter(host__name=host)
    return [action_out(a) for a in qs[:50]]


@tool(annotations=READ_ONLY)
async def list_pending_actions(
    host: Annotated[str | None, Field(max_length=63, description="Only this host.")] = None,
) -> list[ActionOut]:
    """Open actions, newest first: PROPOSED (waiting for approval), APPROVED, EXECUTING."""
    return await run(_pending, host)


# --- execution ----------------------------------------------------------------------------


#: Statuses in which the run has already started (the worker claims it once approval
#: enqueues it): execute waits for that run instead of refusing.
_STARTED = frozenset({ActionStatus.EXECUTING, ActionStatus.COMPLETED, ActionStatus.FAILED})
PROGRESS_SECONDS = 5.0  # a progress notification at least this often while waiting


def _request_execution(call: Call, action_id: int) -> dict | ActedButFailed:
    """Ask for the run; ``started_by_worker`` when it was already running or over."""
    call.subject = ("pra.praaction", str(action_id))
    try:
        obj = actions.request_execution(action_id, by=call.actor)
    except actions.ActionError as exc:
        if exc.code != "state":
            raise
        current = PRAAction.objects.select_related("host").filter(pk=action_id).first()
        if current is None or current.status not in _STARTED:
            # Refused, but keep what the request did (an approval found past its window
            # is expired on the way).
            return ActedButFailed(
                f"{exc.message} get_pra_action({action_id}) shows its status and outcome."
            )
        return {**action_out(current), "started_by_worker": True}
    return {**action_out(obj), "started_by_worker": False}


def _state(call: Call, action_id: int) -> tuple[str, str, int]:
    return PRAAction.objects.values_list("status", "verification", "output_bytes").get(pk=action_id)


def _current(call: Call, action_id: int) -> dict:
    return action_out(PRAAction.objects.select_related("host").get(pk=action_id))


def _settled(status: str, verification: str) -> bool:
    """Over: ended, and if it completed, its verification is done too."""
    if status not in TERMINAL:
        return False
    return not (status == ActionStatus.COMPLETED and verification == Verification.PENDING)


@tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)
)
async def execute_pra_action(
    action_id: ActionId,
    ctx: Context,
    wait_seconds: Annotated[
        int,
        Field(description="How long to wait for the outcome, 0 to 300 (clamped)."),
    ] = 60,
) -> ExecutionResult:
    """Run an action that people APPROVED (and whose approval has not expired).

    Approval already queues the run, so the portal may have started it before you
    call this: then this waits for that same run (it never runs twice). A PROPOSED
    action still needs human approval in the portal; other states are refused.
    Waits up to wait_seconds for the run and its verification, with a progress
    notification every few seconds; if it is not finished by then, poll
    get_pra_action.
    """
    wait = min(max(wait_seconds, 0), MAX_WAIT_SECONDS)
    out = await run(_request_execution, action_id, acts=True)
    by_worker = out.pop("started_by_worker")
    state: tuple[str, str, int] = (out["status"], out["verification"], 0)
    reported: tuple[str, str] | None = None
    started = anyio.current_time()
    last_report = float("-inf")
    waited = 0.0
    while not _settled(state[0], state[1]) and waited < wait:
        now = anyio.current_time()
        if state[:2] != reported or now - last_report >= PROGRESS_SECONDS:
            reported, last_report = state[:2], now
            await ctx.report_progress(
                waited,
                wait,
                f"action #{action_id} is {state[0]}; {state[2]} bytes of output so far",
            )
        await anyio.sleep(POLL_SECONDS)
        state = await run(_state, action_id)
        waited = anyio.current_time() - started
    out = await run(_current, action_id)
    finished = _settled(out["status"], out["verification"])
    if finished:
        note = f"Action #{action_id} ended {out['status']}; verification {out['verification']}."
    else:
        note = (
            f"Still {out['status']} after {waited:.0f}s; call get_pra_action({action_id}) "
            "later for the outcome. Do not execute it again."
        )
    if by_worker:
        note = (
            f"The portal had already started action #{action_id} after its approval; "
            f"this is that run (it runs once). {note}"
        )
    return ExecutionResult.model_validate(
        {**out, "finished": finished, "waited_seconds": round(waited, 1), "note": note}
    )
