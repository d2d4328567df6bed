"""The server object: every registered app's tools behind the audit middleware, and the
stdio transport (``manage.py mcp_server``). Use ``portal.mcp.get_server()``."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

from mcp.server.mcpserver import MCPServer

from portal.mcp import core

NAME = "ops-portal"
TITLE = "Ops Portal"


def build_server(modules: Iterable[ModuleType]) -> MCPServer:
    """A server with the tools of ``modules`` (in order) and their joined INSTRUCTIONS."""
    modules = list(modules)
    instructions = "\n".join(
        text for text in (getattr(m, "INSTRUCTIONS", "") for m in modules) if text
    )
    server = MCPServer(NAME, title=TITLE, instructions=instructions or None)
    server.middleware.append(core.audit_tool_calls)
    for module in modules:
        for spec in core.TOOLS.get(module.__name__, []):
            server.add_tool(spec.fn, **spec.options)
    return server


async def serve_stdio(raw_token: str) -> None:
    """Serve the tools on stdin/stdout as the token's user (checked again on each call)."""
    from portal.mcp import get_server

    core.stdio_token.set(raw_token)
    await get_server().run_stdio_async()
