"""The building blocks of every MCP tool: who is calling, the audit of each call, and
running a tool's work off the event loop with refusals turned into tool errors.

Who is calling: over HTTP, the portal user behind the request's bearer token
(checked on every request, ``portal.mcp.http``); over stdio, the user behind the
token the process was started with (checked again on every call, so revoking it
takes effect at once). Every ``tools/call`` writes one ``MCP_TOOL_CALL`` audit
event, failed and refused calls included.

Apps write their tools as ``@tool(...)`` coroutines that hand their blocking work
to ``run(fn, ...)``; ``fn(call, ...)`` gets the ``Call`` (caller, subject) first.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import transaction
from mcp import MCPError
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import ValidationError

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.errors import RequestRefused
from portal.lib.text import REASON, UNSTORABLE, find_unstorable
from portal.mcp.http import user_from_scope
from portal.tokens import authenticate_token

__all__ = [
    "DIAGNOSTIC",
    "READ_ONLY",
    "ActedButFailed",
    "Call",
    "ToolError",
    "audit_tool_calls",
    "require_view",
    "run",
    "scrub",
    "tool",
]

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "portal.view_portal"

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
DIAGNOSTIC = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)


# --- tool registry ------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """A tool as an app declared it: the coroutine and the SDK's ``add_tool`` options."""

    fn: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


#: Declared tools by the module that declared them (``portal.mcp.server`` adds the
#: registered modules' tools to the server).
TOOLS: dict[str, list[ToolSpec]] = {}


def tool(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: declare an MCP tool (options as the SDK's ``MCPServer.add_tool``)."""

    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        TOOLS.setdefault(fn.__module__, []).append(ToolSpec(fn, options))
        return fn

    return declare


# --- who is calling, and the audit of each call ------------------------------------

# Set only in the stdio process (``serve_stdio``); HTTP requests carry their user.
stdio_token: ContextVar[str | None] = ContextVar("portal_mcp_stdio_token", default=None)


@dataclass
class Call:
    """The tool call in progress: its caller, what it touched, and whether it is audited."""

    user: User | None
    tool: str = ""
    arguments: Any = None
    subject: tuple[str, str] | None = None
    audited: bool = False

    @property
    def actor(self) -> Actor:
        if self.user is None:
            return Actor(label="mcp:unauthenticated")
        return Actor(label=f"mcp:{self.user.get_username()}", user=self.user)


_call: ContextVar[Call | None] = ContextVar("portal_mcp_call", default=None)


def _db(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run blocking ORM/SSH work off the event loop; connections closed as Django expects.

    Not thread-sensitive: a slow diagnostic must not hold up other calls.
    """
    return database_sync_to_async(fn, thread_sensitive=False)


async def _identify(request: Any) -> User | None:
    if request is not None:
        return user_from_scope(request.scope)
    raw = stdio_token.get()
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


def internal_error(exc: BaseException, call: Call | None) -> str:
    """Log an unexpected failure with a reference; what the client sees names only that."""
    ref = secrets.token_hex(4)
    tool = call.tool if call is not None else "?"
    logger.error("MCP tool %s failed unexpectedly (ref %s)", tool, ref, exc_info=exc)
    return f"Internal error, see the portal log (ref {ref}). Nothing was done."


def _audit(call: Call, outcome: str, error: str) -> None:
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
    (``run(..., acts=True)``); every other call, refused ones included, is audited here
    before its result is returned: a call whose audit cannot be written returns an error.
    """
    if ctx.method != "tools/call":
        return await call_next(ctx)
    params = ctx.params or {}
    raw_name = params.get("name", "")
    raw_arguments = params.get("arguments") or {}
    call = Call(user=None, tool=_storable(str(raw_name))[:100], arguments=scrub(raw_arguments))
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
            result = _error_result(internal_error(exc, call))
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
                    result = _error_result(internal_error(exc, call))
    return result


def _caller() -> Call:
    call = _call.get()
    if call is None or call.user is None:
        raise ToolError(
            "This MCP identity is not valid any more (token revoked or user deactivated). "
            "Ask a portal administrator for a new token; nothing was done."
        )
    return call


@dataclass
class ActedButFailed:
    """A tool's work was done and must be kept (e.g. a diagnostic that could not reach its
    host is recorded), but the model is told it failed."""

    message: str


def _invoke(call: Call, fn: Callable[..., Any], args: tuple, acts: bool) -> Any:
    if not acts:
        return fn(call, *args)
    # What the tool changes and its audit event commit together, or not at all.
    with transaction.atomic():
        result = fn(call, *args)
        failed = isinstance(result, ActedButFailed)
        _audit(call, "error" if failed else "ok", result.message if failed else "")
    call.audited = True
    if failed:
        raise ToolError(result.message)
    return result


async def run(fn: Callable[..., Any], *args: Any, acts: bool = False) -> Any:
    """``fn(call, *args)`` in a worker thread; refusals become tool errors for the model.

    ``acts``: ``fn`` changes state, so it runs in one transaction with the call's audit.
    A refusal is any app's ``RequestRefused`` (its message is meant for people) or a
    ``ToolError``; anything else is an internal error with a log reference.
    """
    call = _caller()
    try:
        return await _db(_invoke)(call, fn, args, acts)
    except RequestRefused as exc:
        raise ToolError(exc.message) from None
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(internal_error(exc, call)) from None


def require_view(call: Call) -> None:
    """Refuse a caller without a portal role (reading needs ``portal.view_portal``)."""
    if call.user is None or not call.user.has_perm(VIEW_PERMISSION):
        raise ToolError("This identity may not view the portal (it has no portal role).")
