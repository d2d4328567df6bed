"""Bench only: the portal as ``bench.bare_asgi`` serves it, with the heartbeat lean path
(``incidents.fastpath.wrap``) in front, plus ``/lean/<pk>``: the bare one-UPDATE "view"
served the leanest way found, a raw ASGI handler doing one ``UPDATE`` per request on a
persistent asynchronous psycopg connection per process (no Django request, no batching).

    uvicorn --workers 2 bench.fast_asgi:application
"""

from __future__ import annotations

import asyncio
import json

from bench.bare_asgi import application as bare_asgi_application  # sets Django up
from incidents.fastpath import _connect_kwargs, wrap

LEAN_PREFIX = "/lean/"
portal_with_fast_path = wrap(bare_asgi_application)
_conn = None
_lock = asyncio.Lock()


async def _connection():
    global _conn
    import psycopg

    if _conn is None or _conn.closed or _conn.broken:
        _conn = await psycopg.AsyncConnection.connect(**_connect_kwargs(), autocommit=True)
    return _conn


async def lean_bare(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    pk = int(scope["path"][len(LEAN_PREFIX) :])
    async with _lock:  # one connection per process: one statement at a time on it
        conn = await _connection()
        cursor = await conn.execute(
            "UPDATE incidents_agent SET last_seen = now() WHERE id = %s", [pk]
        )
        updated = cursor.rowcount
    body = json.dumps({"ok": bool(updated)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200 if updated else 404,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def application(scope, receive, send) -> None:
    if scope["type"] == "http" and scope.get("path", "").startswith(LEAN_PREFIX):
        await lean_bare(scope, receive, send)
    else:
        await portal_with_fast_path(scope, receive, send)
