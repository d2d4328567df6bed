"""The portal's MCP server: AI assistants diagnose and propose; only people approve.

One ``MCPServer`` (official ``mcp`` SDK) serves every app's tools over stdio
(``manage.py mcp_server``, ``portal.mcp.server.serve_stdio``) and over
streamable HTTP at ``/mcp`` (``portal.mcp.http``). The core here knows no
feature app: each app declares its tools module from its ``AppConfig.ready()``::

    from portal import mcp
    mcp.register_tools("pra.mcp")

and that module defines its tools with ``portal.mcp.core.tool`` (and may set
``INSTRUCTIONS``, joined into the server's instructions in app order).

Registration is by module name and the modules are imported when the server
is first built (``get_server()``): the SDK takes seconds to import, and only
the processes that serve MCP (daphne, ``mcp_server``) should pay for it, not
every ``manage.py`` command or worker.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

_MODULES: list[str] = []
_server: MCPServer | None = None


def register_tools(module: str) -> None:
    """Declare ``module`` (a dotted path) as holding MCP tools; idempotent."""
    if _server is not None and module not in _MODULES:
        raise RuntimeError(f"MCP tools module {module} registered after the server was built")
    if module not in _MODULES:
        _MODULES.append(module)


def tool_modules() -> tuple[str, ...]:
    """The registered tools modules, in registration (app) order."""
    return tuple(_MODULES)


def get_server() -> MCPServer:
    """The one server with every registered app's tools (built on first use)."""
    global _server
    if _server is None:
        from portal.mcp.server import build_server

        _server = build_server([import_module(name) for name in _MODULES])
    return _server
