"""The permission matrix's websocket and ``/mcp`` surfaces: every route (and subject
type) × every identity, against the policy and world of ``test_permission_matrix.py``.

Real ASGI app, channels-redis, PostgreSQL and the MCP SDK's session manager; nothing is
mocked. The data is committed (``transaction=True``): the consumers read it on their own
connections.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from portal.consumers import SUBJECTS
from portal.mcp.http import MCP_PATH
from tests.portal.test_permission_matrix import (
    DUMMY,
    IDENTITIES,
    NOROLE,
    POLICY,
    SESSION_ROLES,
    World,
    build_world,
    collect_routes,
    effective_role,
    fill,
    judge,
)

# --- websockets and /mcp (separate processes' view: committed data) ----------------------


def _ws_headers(identity: str, world: World, cookie: bytes | None) -> list:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", cookie))
    if identity in world.raw_tokens:
        headers.append((b"authorization", f"Bearer {world.raw_tokens[identity]}".encode()))
    return headers


def _cookie(identity: str, world: World) -> bytes | None:
    if identity not in SESSION_ROLES and identity != NOROLE:
        return None
    client = Client()
    client.force_login(world.users[identity])
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


@pytest.mark.django_db(transaction=True)
def test_websocket_matrix():
    """Every websocket route (and subject type) × every identity."""
    from portal.asgi import application

    world = build_world(http=False)
    routes = [r for r in collect_routes() if r.surface == "ws"]
    cases = []
    for identity in IDENTITIES:
        cookie = _cookie(identity, world)
        for route in routes:
            for variant, key in zip(route.variants, route.rule_keys(), strict=True):
                if variant == "missing":
                    path = f"/ws/live/{SUBJECTS[0]}/{DUMMY}/"
                    dummy = True
                elif variant == "auth.user":
                    path, dummy = f"/ws/live/auth.user/{world.users['admin'].pk}/", False
                else:
                    path, dummy = fill(route, variant, world)
                # A subject page for an object that does not exist has nothing to follow.
                allowed = not dummy and effective_role(identity, "ws") in POLICY[key].allow["GET"]
                cases.append((identity, path, key, allowed, _ws_headers(identity, world, cookie)))

    async def run_all() -> list[str]:
        failures = []
        for identity, path, key, allowed, headers in cases:
            ws = WebsocketCommunicator(application, path, headers=headers)
            connected, code = await ws.connect(timeout=5)
            if connected:
                await ws.disconnect()
            if connected != allowed:
                failures.append(f"{identity} {path} [{key}]: connected={connected} code={code}")
            elif not connected and code not in (4401, 4403, 4404):
                failures.append(f"{identity} {path}: closed with {code}, not a 44xx reason")
        return failures

    failures = async_to_sync(run_all)()
    assert len(cases) >= 50
    assert 10 < sum(allowed for *_, allowed, _ in cases) < len(cases) - 10
    assert not failures, "\n".join(failures)


INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "matrix", "version": "1"}},
}  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_mcp_matrix():
    """``/mcp`` × every identity × its methods: only an MCP-scope token gets in.

    The app is built as ``portal.asgi`` builds it, with an endpoint of its own: the SDK's
    session manager lives in the event loop of its first request, and this test's loop
    ends with the test.
    """
    from portal.asgi import django_asgi_app
    from portal.mcp import get_server
    from portal.mcp.http import MCPEndpoint, route_mcp

    endpoint = MCPEndpoint(get_server())
    application = route_mcp(endpoint, django_asgi_app)
    world = build_world(http=False)
    [route] = [r for r in collect_routes() if r.surface == "mcp"]
    rule_ = POLICY[route.key]
    cases = []
    for identity in IDENTITIES:
        cookie = _cookie(identity, world)
        for method in route.methods:
            headers = [
                (b"host", b"localhost"),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
            ]
            if cookie:
                headers.append((b"cookie", cookie))
            if identity in world.raw_tokens:
                headers.append((b"authorization", f"Bearer {world.raw_tokens[identity]}".encode()))
            body = json.dumps(INITIALIZE).encode() if method == "POST" else b""
            allowed = effective_role(identity, "mcp") in rule_.allow[method]
            cases.append((identity, method, headers, body, allowed))

    async def request(method: str, headers: list, body: bytes) -> tuple[int, bytes]:
        """Status and the body's first chunk. A GET answered with an event stream stays
        open until the server has something to say: its body is not read."""
        comm = ApplicationCommunicator(
            application,
            {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
             "path": MCP_PATH, "raw_path": MCP_PATH.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
             "server": ("localhost", 80)},
        )  # fmt: skip
        await comm.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await comm.receive_output(timeout=10)
        chunk = {}
        if method != "GET" or start["status"] != 200:
            chunk = await comm.receive_output(timeout=10)
        await comm.send_input({"type": "http.disconnect"})
        with contextlib.suppress(Exception):
            await comm.wait(timeout=1)
        return start["status"], chunk.get("body", b"")

    async def run_all() -> list[str]:
        # One event loop for every request: the MCP session manager lives in it.
        failures = []
        for identity, method, headers, body, allowed in cases:
            status, first = await request(method, headers, body)
            wrong = judge(status, "", allowed, rule_, dummy=False)
            if wrong:
                failures.append(f"{identity} {method} {MCP_PATH}: {wrong}")
            elif allowed and method == "POST" and b'"serverInfo"' not in first:
                failures.append(f"{identity} {method}: no initialize result {first!r}")
        if endpoint._runner is not None:
            endpoint._runner.cancel()
        return failures

    failures = async_to_sync(run_all)()
    assert [(i, m) for i, m, *_, allowed in cases if allowed] == [
        ("mcp_token", "GET"),
        ("mcp_token", "POST"),
    ]
    assert not failures, "\n".join(failures)
