"""MCP tools: an AI assistant diagnoses and proposes; only people approve.

One ``MCPServer`` (official ``mcp`` SDK) serves these tools over stdio
(``manage.py mcp_server``) and over streamable HTTP at ``/mcp``
(``portal.mcp_http``). Every tool calls ``pra.actions``, the same functions
the admin and the API call. There is deliberately no tool that approves or
rejects: approval happens in the portal, by people.

Who is calling: over HTTP, the portal user behind the request's bearer token
(checked on every request); over stdio, the user behind the token the process
was started with (checked again on every call, so revoking it takes effect at
once). Every ``tools/call`` writes one ``MCP_TOOL_CALL`` audit event, failed
and refused calls included.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import anyio
from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from mcp import MCPError
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from portal.audit import Actor, record, subject_of
from portal.choices import AuditEventType
from portal.lib.text import REASON, UNSTORABLE, find_unstorable
from portal.mcp_http import user_from_scope
from portal.tokens import authenticate_token
from pra import actions
from pra.api import ActionOut, CatalogEntryOut, HostOut, action_out, catalog_out, host_out
from pra.choices import OPEN, TERMINAL, ActionStatus, Verification
from pra.models import DiagnosticRun, Host, PRAAction

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "portal.view_portal"
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
"""

server = MCPServer("ops-portal", title="Ops Portal", instructions=INSTRUCTIONS)

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
DIAGNOSTIC = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)


# --- who is calling, and the audit of each call ------------------------------------

# Set only in the stdio process (``serve_stdio``); HTTP requests carry their user.
_stdio_token: ContextVar[str | None] = ContextVar("pra_mcp_stdio_token", default=None)


@dataclass
class _Call:
    """The tool call in progress: its caller, what it touched, and whether it is audited."""

    user: AbstractBaseUser | None
    tool: str = ""
    arguments: Any = None
    subject: tuple[str, str] | None = None
    audited: bool = False

    @property
    def actor(self) -> Actor:
        if self.user is None:
            return Actor(label="mcp:unauthenticated")
        return Actor(label=f"mcp:{self.user.get_username()}", user=self.user)


_call: ContextVar[_Call | None] = ContextVar("pra_mcp_call", default=None)


def _db(fn):
    """Run blocking ORM/SSH work off the event loop; connections closed as Django expects.

    Not thread-sensitive: a slow diagnostic must not hold up other calls.
    """
    return database_sync_to_async(fn, thread_sensitive=False)


async def _identify(request: Any) -> AbstractBaseUser | None:
    if request is not None:
        return user_from_scope(request.scope)
    raw = _stdio_token.get()
    if not raw:
        return None
    return await _db(authenticate_token)(raw, scope="mcp")


_SECRET_KEYS = re.compile(r"token|secret|password|passwd|authorization|api[_-]?key", re.I)
_TOKEN_LIKE = re.compile(r"opp_[A-Za-z0-9_-]{8,}")


def _storable(text: str) -> str:
    """``text`` with what the database cannot store replaced, so it can be audited."""
    return UNSTORABLE.sub("\ufffd", text)


def scrub(value: Any, depth: int = 0) -> Any:
    """Arguments as they may be stored: secrets masked, sizes bounded, unstorable
    characters replaced (the call itself is refused; its audit row must still fit)."""
    if depth > 4:
        return "[nested too deep]"
    if isinstance(value, dict):
        return {
            _storable(str(k)[:100]): "[redacted]"
            if _SECRET_KEYS.search(str(k))
            else scrub(v, depth + 1)
            for k, v in list(value.items())[:50]
        }
    if isinstance(value, list | tuple):
        return [scrub(v, depth + 1) for v in value[:50]]
    if isinstance(value, str):
        return _storable(_TOKEN_LIKE.sub("opp_[redacted]", value[:2000]))
    if value is None or isinstance(value, bool | int | float):
        return value
    return _storable(repr(value)[:200])


def _is_error(result: Any) -> bool:
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and bool(result.get("isError"))


def _error_text(result: Any) -> str:
    if isinstance(result, CallToolResult):
        texts = [getattr(c, "text", "") for c in result.content]
    else:
        texts = [c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict)]
    return " ".join(t for t in texts if t)[:1000]


def _error_result(message: str) -> CallToolResult:
    # The SDK's own model: the runner serialises it for whichever protocol was agreed.
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _internal_error(exc: BaseException, call: _Call | None) -> str:
    """Log an unexpected failure with a reference; what the client sees names only that."""
    ref = secrets.token_hex(4)
    tool = call.tool if call is not None else "?"
    logger.error("MCP tool %s failed unexpectedly (ref %s)", tool, ref, exc_info=exc)
    return f"Internal error, see the portal log (ref {ref}). Nothing was done."


def _audit(call: _Call, outcome: str, error: str) -> None:
    details: dict[str, Any] = {"tool": call.tool, "arguments": call.arguments, "outcome": outcome}
    if error:
        details["error"] = _storable(_TOKEN_LIKE.sub("opp_[redacted]", error))[:1000]
    record(AuditEventType.MCP_TOOL_CALL, actor=call.actor, subject=call.subject, details=details)


async def audit_tool_calls(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Server middleware, the one boundary of every tool call.

    Identifies the caller; refuses arguments the database cannot store (isError naming
    the field, nothing done); turns any unexpected failure into a generic error with a
    log reference (never SQL or a traceback); and writes exactly one ``MCP_TOOL_CALL``
    audit event. A tool that changes state writes that event in its own transaction
    (``_run(..., acts=True)``); every other call, refused ones included, is audited here
    before its result is returned: a call whose audit cannot be written returns an error.
    """
    if ctx.method != "tools/call":
        return await call_next(ctx)
    params = ctx.params or {}
    raw_name = params.get("name", "")
    raw_arguments = params.get("arguments") or {}
    call = _Call(user=None, tool=_storable(str(raw_name))[:100], arguments=scrub(raw_arguments))
    reset = _call.set(call)
    outcome, error = "error", ""
    try:
        try:
            call.user = await _identify(ctx.request)
            bad = find_unstorable(raw_name, "name") or find_unstorable(raw_arguments)
            if bad is not None:
                result: HandlerResult = _error_result(
                    f"Refused: argument {bad} {REASON}. Nothing was done."
                )
            else:
                result = await call_next(ctx)
        except (MCPError, ValidationError):
            raise  # protocol errors (unknown method, malformed params): the SDK answers
        except Exception as exc:
            result = _error_result(_internal_error(exc, call))
        if _is_error(result):
            error = _error_text(result)
        else:
            outcome = "ok"
    except BaseException as exc:  # cancellation too: the attempt is still audited
        error = str(exc)[:1000] or exc.__class__.__name__
        raise
    finally:
        _call.reset(reset)
        if not call.audited:
            with anyio.CancelScope(shield=True):
                try:
                    await _db(_audit)(call, outcome, error)
                except Exception as exc:
                    result = _error_result(_internal_error(exc, call))
    return result


server.middleware.append(audit_tool_calls)


def _caller() -> _Call:
    call = _call.get()
    if call is None or call.user is None:
        raise ToolError(
            "This MCP identity is not valid any more (token revoked or user deactivated). "
            "Ask a portal administrator for a new token; nothing was done."
        )
    return call


@dataclass
class _ActedButFailed:
    """A tool's work was done and must be kept (e.g. a diagnostic that could not reach its
    host is recorded), but the model is told it failed."""

    message: str


def _invoke(call: _Call, fn, args: tuple, acts: bool) -> Any:
    if not acts:
        return fn(call, *args)
    # What the tool changes and its audit event commit together, or not at all.
    with transaction.atomic():
        result = fn(call, *args)
        failed = isinstance(result, _ActedButFailed)
        _audit(call, "error" if failed else "ok", result.message if failed else "")
    call.audited = True
    if failed:
        raise ToolError(result.message)
    return result


async def _run(fn, *args: Any, acts: bool = False) -> Any:
    """``fn(call, *args)`` in a worker thread; refusals become tool errors for the model.

    ``acts``: ``fn`` changes state, so it runs in one transaction with the call's audit.
    """
    call = _caller()
    try:
        return await _db(_invoke)(call, fn, args, acts)
    except actions.ActionError as exc:
        raise ToolError(exc.message) from None
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(_internal_error(exc, call)) from None


def _require_view(call: _Call) -> None:
    if not call.user.has_perm(VIEW_PERMISSION):
        raise ToolError("This identity may not view the portal (it has no portal role).")


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


def _list_hosts(call: _Call) -> list[dict]:
    _require_view(call)
    return [host_out(h) for h in Host.objects.all()]


@server.tool(annotations=READ_ONLY)
async def list_hosts() -> list[HostOut]:
    """List the hosts the portal can act on (name, address, tags, enabled).

    Use a host's `name` as the `host` argument of the other tools.
    """
    return await _run(_list_hosts)


def _list_catalog(call: _Call) -> list[dict]:
    _require_view(call)
    return catalog_out()


@server.tool(annotations=READ_ONLY)
async def list_pra_catalog() -> list[CatalogEntryOut]:
    """List the remediation catalog: the only actions that can ever be proposed.

    Each entry has its impact (LOW, MEDIUM, HIGH: how many people must approve),
    its parameters with their allowed pattern, and the probe that verifies it.
    """
    return await _run(_list_catalog)


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


def _diagnose(call: _Call, host: str, name: str, params: dict[str, Any]) -> dict | _ActedButFailed:
    run = actions.run_diagnostic(host, name, params, by=call.actor)
    call.subject = subject_of(run)
    if run.error:
        return _ActedButFailed(
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


@server.tool(annotations=DIAGNOSTIC)
async def get_service_status(host: HostName, unit: Unit) -> DiagnosticResult:
    """Is a systemd unit active? (`systemctl is-active UNIT` on the host).

    The first output line is the state: active, inactive, failed, activating...
    A non-zero exit code just means "not active"; it is not a tool failure.
    """
    return await _run(_diagnose, host, "service_status", {"unit": unit}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def get_service_logs(
    host: HostName,
    unit: Unit,
    lines: Annotated[int, Field(ge=1, le=5000, description="How many journal lines.")] = 100,
) -> DiagnosticResult:
    """The last LINES lines of a unit's journal."""
    return await _run(_diagnose, host, "service_logs", {"unit": unit, "lines": lines}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def analyze_errors(
    host: HostName,
    unit: Unit,
    minutes: Annotated[int, Field(ge=1, le=1440, description="Time window in minutes.")] = 60,
) -> DiagnosticResult:
    """Error-level journal lines of a unit over the last MINUTES minutes."""
    return await _run(
        _diagnose, host, "analyze_errors", {"unit": unit, "minutes": minutes}, acts=True
    )


@server.tool(annotations=DIAGNOSTIC)
async def check_service_health(host: HostName, unit: Unit) -> DiagnosticResult:
    """HEALTHY or UNHEALTHY for a unit, with the reasons (active state, recent errors)."""
    return await _run(_diagnose, host, "service_health", {"unit": unit}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def get_system_info(host: HostName) -> DiagnosticResult:
    """Hostname, kernel, uptime and load of a host."""
    return await _run(_diagnose, host, "system_info", {}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def get_memory_info(host: HostName) -> DiagnosticResult:
    """Memory and swap use of a host."""
    return await _run(_diagnose, host, "memory_info", {}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def get_disk_usage(host: HostName) -> DiagnosticResult:
    """Filesystem usage of a host (df)."""
    return await _run(_diagnose, host, "disk_usage", {}, acts=True)


@server.tool(annotations=DIAGNOSTIC)
async def get_container_status(
    host: HostName,
    name: Annotated[str, Field(min_length=1, max_length=128, description="Container name.")],
) -> DiagnosticResult:
    """State of a podman container (running, exited, ...)."""
    return await _run(_diagnose, host, "container_status", {"name": name}, acts=True)


@server.tool(name="test_connectivity", annotations=DIAGNOSTIC)
async def check_connectivity(
    host: HostName,
    target: Annotated[
        str,
        Field(min_length=1, max_length=128, description="Host name or IPv4 address to reach."),
    ],
    port: Annotated[int, Field(ge=1, le=65535, description="TCP port.")] = 443,
) -> DiagnosticResult:
    """Can HOST open a TCP connection to TARGET:PORT? (from the host, not from the portal)."""
    return await _run(
        _diagnose, host, "test_connectivity", {"target": target, "port": port}, acts=True
    )


# --- proposals and their state --------------------------------------------------------


def _propose(
    call: _Call,
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
        by=actions.Proposer.ai(call.user),
        auto_approve=auto_approve,
        evidence_ids=evidence_ids,
    )
    call.subject = subject_of(proposal.action)
    return {**action_out(proposal.action), "created": proposal.created, "note": proposal.message}


class ProposalResult(ActionOut):
    """The action a proposal ended on."""

    created: bool = Field(
        description="False when an identical action (same action, host and params) was "
        "already open: this is that action, nothing new was created."
    )
    note: str


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
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

    The proposal is PROPOSED until people approve it in the portal (you cannot
    approve). It is shown as proposed by an AI assistant under your identity.
    Parameters are checked against the catalog; anything outside it is refused
    and nothing is created. If the same action on the same host with the same
    parameters is already open (proposed by anyone, e.g. a detection rule), you get
    that action back with created=false: follow it instead of proposing again.
    """
    return await _run(
        _propose, action, host, params, rationale, auto_approve, evidence_ids, acts=True
    )


def _get_action(call: _Call, action_id: int) -> dict:
    _require_view(call)
    obj = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if obj is None:
        raise ToolError(f"No action #{action_id}. list_pending_actions shows the open ones.")
    call.subject = subject_of(obj)
    return action_out(obj)


ActionId = Annotated[int, Field(ge=1, description="Action id, as returned by propose_pra_action.")]


@server.tool(annotations=READ_ONLY)
async def get_pra_action(action_id: ActionId) -> ActionOut:
    """One action with its status, approvals, output and verification.

    Statuses: PROPOSED (waiting for people), APPROVED (may be executed until
    expires_at), EXECUTING, COMPLETED, FAILED, REJECTED, EXPIRED.
    """
    return await _run(_get_action, action_id)


def _pending(call: _Call, host: str | None) -> list[dict]:
    _require_view(call)
    qs = PRAAction.objects.select_related("host").filter(status__in=OPEN)
    if host:
        qs = qs.filter(host__name=host)
    return [action_out(a) for a in qs[:50]]


@server.tool(annotations=READ_ONLY)
async def list_pending_actions(
    host: Annotated[str | None, Field(max_length=63, description="Only this host.")] = None,
) -> list[ActionOut]:
    """Open actions, newest first: PROPOSED (waiting for approval), APPROVED, EXECUTING."""
    return await _run(_pending, host)


# --- execution ----------------------------------------------------------------------------


#: Statuses in which the run has already started (the worker claims it once approval
#: enqueues it): execute waits for that run instead of refusing.
_STARTED = frozenset({ActionStatus.EXECUTING, ActionStatus.COMPLETED, ActionStatus.FAILED})
PROGRESS_SECONDS = 5.0  # a progress notification at least this often while waiting


def _request_execution(call: _Call, action_id: int) -> dict | _ActedButFailed:
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
            return _ActedButFailed(
                f"{exc.message} get_pra_action({action_id}) shows its status and outcome."
            )
        return {**action_out(current), "started_by_worker": True}
    return {**action_out(obj), "started_by_worker": False}


def _state(call: _Call, action_id: int) -> tuple[str, str, int]:
    return PRAAction.objects.values_list("status", "verification", "output_bytes").get(pk=action_id)


def _current(call: _Call, action_id: int) -> dict:
    return action_out(PRAAction.objects.select_related("host").get(pk=action_id))


def _settled(status: str, verification: str) -> bool:
    """Over: ended, and if it completed, its verification is done too."""
    if status not in TERMINAL:
        return False
    return not (status == ActionStatus.COMPLETED and verification == Verification.PENDING)


@server.tool(
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
    out = await _run(_request_execution, action_id, acts=True)
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
        state = await _run(_state, action_id)
        waited = anyio.current_time() - started
    out = await _run(_current, action_id)
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
    return {**out, "finished": finished, "waited_seconds": round(waited, 1), "note": note}


# --- incidents (read-only) ----------------------------------------------------------------


class IncidentEventOut(BaseModel):
    at: datetime
    kind: str
    message: str


class IncidentOut(BaseModel):
    """An incident as on-call sees it: what, how bad, where it is in its life."""

    id: int
    agent: str
    cause: str
    title: str
    severity: str
    status: str = Field(description="OPEN, ACKNOWLEDGED, MITIGATING or RESOLVED.")
    opened_at: datetime
    resolved_at: datetime | None
    occurrences: int
    escalation_level: int
    remediation_action_id: int | None = Field(
        description="The remediation proposed for it, if any (see get_pra_action)."
    )
    telemetry: dict[str, Any]
    timeline: list[IncidentEventOut] = Field(default_factory=list)


def _incident_out(incident, with_timeline: bool) -> dict:
    from incidents.choices import Severity

    return {
        "id": incident.pk,
        "agent": incident.agent.name,
        "cause": incident.cause,
        "title": incident.title,
        "severity": Severity(incident.severity).label,
        "status": incident.status,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "occurrences": incident.occurrences,
        "escalation_level": incident.escalation_level,
        "remediation_action_id": incident.remediation_id,
        "telemetry": incident.telemetry,
        "timeline": [
            {"at": e.at, "kind": e.kind, "message": e.message} for e in incident.events.all()
        ]
        if with_timeline
        else [],
    }


def _list_incidents(call: _Call, include_resolved: bool, limit: int) -> list[dict]:
    from incidents.choices import INCIDENT_OPEN
    from incidents.models import Incident

    _require_view(call)
    qs = Incident.objects.select_related("agent").order_by("-severity", "-opened_at")
    if not include_resolved:
        qs = qs.filter(status__in=INCIDENT_OPEN)
    return [_incident_out(i, with_timeline=False) for i in qs[:limit]]


@server.tool(annotations=READ_ONLY)
async def list_incidents(
    include_resolved: Annotated[bool, Field(description="Also list resolved ones.")] = False,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
) -> list[IncidentOut]:
    """Incidents opened by the detection rules, most severe and newest first.

    Use get_incident for the timeline; diagnose the agent's host with the
    diagnostic tools before proposing a remediation.
    """
    return await _run(_list_incidents, include_resolved, limit)


def _get_incident(call: _Call, incident_id: int) -> dict:
    from incidents.models import Incident

    _require_view(call)
    incident = Incident.objects.select_related("agent").filter(pk=incident_id).first()
    if incident is None:
        raise ToolError(f"No incident #{incident_id}. list_incidents shows the open ones.")
    call.subject = ("incidents.incident", str(incident.pk))
    return _incident_out(incident, with_timeline=True)


@server.tool(annotations=READ_ONLY)
async def get_incident(
    incident_id: Annotated[int, Field(ge=1, description="Incident id from list_incidents.")],
) -> IncidentOut:
    """One incident with its timeline: detection, decision, attempts, remediation, resolution."""
    return await _run(_get_incident, incident_id)


# --- backups (read-only) ------------------------------------------------------------------


class BackupSourceStatus(BaseModel):
    """The newest stored backup of one source, and whether it is fresh and verified."""

    source: str
    kind: str
    last_success: datetime | None
    age_hours: float | None
    size_bytes: int | None
    verification: str | None
    fresh: bool = Field(description="Verified and newer than BACKUP_FRESH_HOURS.")
    last_run_status: str | None = Field(description="Status of the most recent run, any outcome.")


def _backup_status(call: _Call, source: str | None) -> list[dict]:
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from backups.choices import Verification
    from backups.models import BackupRun, BackupSource

    _require_view(call)
    sources = BackupSource.objects.filter(enabled=True).order_by("name")
    if source:
        sources = sources.filter(name=source)
        if not sources:
            raise ToolError(f"No enabled backup source {source!r}; omit it to list all.")
    now = timezone.now()
    fresh_after = now - timedelta(hours=settings.BACKUP_FRESH_HOURS)
    out = []
    for src in sources:
        runs = BackupRun.objects.of_source(src).order_by("-created")
        latest = runs.first()
        good = runs.usable().first()  # the one definition of "the last good backup"
        out.append(
            {
                "source": src.name,
                "kind": src.kind,
                "last_success": good.created if good else None,
                "age_hours": round((now - good.created).total_seconds() / 3600, 1)
                if good else None,
                "size_bytes": good.bytes_stored if good else None,
                "verification": good.verification if good else None,
                "fresh": bool(
                    good and good.created >= fresh_after
                    and good.verification == Verification.VERIFIED
                ),
                "last_run_status": latest.status if latest else None,
            }
        )  # fmt: skip
    return out


@server.tool(annotations=READ_ONLY)
async def backup_status(
    source: Annotated[str | None, Field(max_length=63, description="Only this source.")] = None,
) -> list[BackupSourceStatus]:
    """Backup freshness per source: last successful backup, its age, size and verification.

    A source with fresh=false needs attention (no recent verified backup). Restores
    are never started from here: they need a plan, a confirmation and two approvers
    in the portal.
    """
    return await _run(_backup_status, source)


# --- stdio entry point -------------------------------------------------------------------


async def serve_stdio(raw_token: str) -> None:
    """Serve the tools on stdin/stdout as the token's user (checked again on each call)."""
    _stdio_token.set(raw_token)
    await server.run_stdio_async()
