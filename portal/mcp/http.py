"""The MCP streamable-HTTP endpoint, mounted at ``/mcp`` in the portal's ASGI app.

``MCPEndpoint`` checks ``Authorization: Bearer <token>`` (a personal token
from ``manage.py portal_token``) on every request, so a revoked token stops
working at once, then hands the request to the SDK's session manager. The
portal user travels in the ASGI scope (``user_from_scope``) to the tools.

daphne runs no ASGI lifespan events, so the session manager is started on the
first request, in a task of its own that lives as long as the event loop. It
runs stateless: no per-process session table, so any daphne process behind a
load balancer can answer any request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings

from portal.tokens import authenticate_token

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from mcp.server.mcpserver import MCPServer
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

logger = logging.getLogger(__name__)

#: an ASGI application: ``await app(scope, receive, send)``
ASGIApp = Callable[..., Awaitable[None]]

MCP_PATH = "/mcp"
SCOPE_USER = "portal.mcp_user"


def user_from_scope(scope: dict[str, Any]) -> User | None:
    """The portal user ``MCPEndpoint`` authenticated for this request, or None."""
    return scope.get(SCOPE_USER)


def is_mcp_path(path: str) -> bool:
    return path == MCP_PATH or path.startswith(MCP_PATH + "/")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def bearer_token(scope: dict[str, Any]) -> str | None:
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _host_allowed(scope: dict[str, Any]) -> bool:
    """Django's ALLOWED_HOSTS rule, as for every other portal URL."""
    domain, _port = split_domain_port(_header(scope, b"host") or "")
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def _is_secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        header, expected = proxy
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        return (_header(scope, name) or "").split(",")[0].strip() == expected
    return False


async def _refuse(send, status: int, error: str, message: str) -> None:
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append(
            (b"www-authenticate", f'Bearer realm="ops-portal", error="{error}"'.encode())
        )
    body = json.dumps({"error": error, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MCPEndpoint:
    """ASGI app for ``/mcp``: bearer token per request, then the SDK's transport."""

    def __init__(self, server: MCPServer) -> None:
        # Builds the SDK's session manager (the Starlette app around it is not used:
        # routing, auth and host checks happen here, the portal's way).
        server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager: StreamableHTTPSessionManager = server.session_manager
        self._ready: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None

    async def _run_manager(self, ready: asyncio.Event) -> None:
        try:
            async with self.manager.run():
                ready.set()
                await asyncio.Event().wait()  # until the event loop shuts down
        finally:
            ready.set()  # wake waiters; they see the runner is gone

    async def _started(self) -> bool:
        if self._runner is None or self._ready is None:
            # First request in this process: no await since the check.
            self._ready = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(
                self._run_manager(self._ready), name="mcp-session-manager"
            )
        await self._ready.wait()
        return not self._runner.done()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if not _host_allowed(scope):
            await _refuse(send, 400, "bad_host", "Host not allowed (see ALLOWED_HOSTS).")
            return
        if settings.SECURE_SSL_REDIRECT and not _is_secure(scope):
            await _refuse(send, 403, "https_required", "Use https: tokens never go over http.")
            return
        raw = bearer_token(scope)
        user = await database_sync_to_async(authenticate_token)(raw, scope="mcp") if raw else None
        if user is None:
            await _refuse(
                send,
                401,
                "invalid_token",
                "Send 'Authorization: Bearer <token>' with a valid, unrevoked portal token "
                "(manage.py portal_token USER --name NAME --scope mcp).",
            )
            return
        if not await self._started():
            logger.error("MCP session manager is not running")
            await _refuse(send, 503, "unavailable", "The MCP endpoint is not running.")
            return
        # The SDK's notion of the caller; the raw token itself stays out of the scope.
        client_id = f"portal-user-{user.pk}"
        principal = AccessToken(
            token=client_id, client_id=client_id, subject=user.get_username(), scopes=[]
        )
        scope = {**scope, SCOPE_USER: user, "user": AuthenticatedUser(principal)}
        await self.manager.handle_request(scope, receive, send)


def route_mcp(mcp_app: ASGIApp, other_app: ASGIApp) -> ASGIApp:
    """HTTP app sending ``/mcp`` and ``/mcp/...`` to ``mcp_app``, everything else to Django."""

    async def app(scope, receive, send):
        if is_mcp_path(scope.get("path", "")):
            return await mcp_app(scope, receive, send)
        return await other_app(scope, receive, send)

    return app
