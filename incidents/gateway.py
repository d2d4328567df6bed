"""The agents' gateway: a small HTTP/1.1 server for ``/api/agents/`` (``manage.py agent_gateway``).

daphne and uvicorn spend ~1 ms of CPU per request on HTTP alone here (bench/heartbeats.py
profiles: 78 % of a lean-path heartbeat), which caps a 2-core machine near 1,000
heartbeats/s before any work is done. Agents need little of HTTP: one request at a time
per connection, ``Content-Length`` bodies, small JSON answers. This server parses exactly
that (keep-alive, pipelining refused, no chunked bodies: 411) and hands every request to
the same ASGI application as daphne (``portal.asgi.application`` behind
``incidents.fastpath.wrap``): quiet heartbeats take the lean path, everything else is
Django, answers identical. Put it behind the TLS proxy for ``/api/agents/`` (README,
production); ``--workers N`` runs N processes on one port (``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from incidents.fastpath import ASGIApp

logger = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
IDLE_SECONDS = 75.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def load_app(path: str | None) -> ASGIApp:
    """The ASGI application: ``module:attribute``, or the portal's with the lean path."""
    from incidents import fastpath

    if path:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name or "application")
    from portal.asgi import application

    return fastpath.wrap(application)


async def _call(app, scope, body: bytes) -> tuple[int, list, bytes]:
    """Run one request through the ASGI ``app``; its status, headers and whole body."""
    delivered = False
    done = asyncio.Event()
    start: dict = {}
    chunks: list[bytes] = []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # Django listens for a disconnect while the view runs
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)


class AgentConnection(asyncio.Protocol):
    """One client connection: requests answered in order, one at a time."""

    def __init__(self, app, server_addr) -> None:
        self.app, self.server_addr = app, server_addr
        self.buffer = bytearray()
        self.busy = False
        self.closing = False
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername") or ("", 0)
        self.continued = False
        self._arm()

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()

    def _arm(self) -> None:
        """Close a connection silent this long (an idle keep-alive, a slow sender)."""
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._idle)

    def _idle(self) -> None:
        if not self.busy:
            self.closing = True
            self.transport.close()
        else:
            self._arm()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        if not self.busy:
            self._next()

    def _fail(self, status: int) -> None:
        body = f'{{"error": "http", "message": "{_REASONS[status].decode()}"}}'.encode()
        self._write(status, [(b"content-type", b"application/json")], body, keep_alive=False)

    def _next(self) -> None:
        if self.closing:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail(431)
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ")
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                headers.append((name.lower(), value.strip()))
        except ValueError:
            self._fail(400)
            return
        fields = dict(headers)
        if b"transfer-encoding" in fields:
            self._fail(411)
            return
        length = fields.get(b"content-length", b"0")
        if not length.isdigit() or version not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._fail(400)
            return
        if int(length) > MAX_BODY:
            self._fail(413)
            return
        stop = end + 4 + int(length)
        if len(self.buffer) < stop:
            if fields.get(b"expect", b"").lower() == b"100-continue" and not self.continued:
                self.continued = True  # curl waits for this before sending a body > 1 KiB
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.continued = False
        body = bytes(self.buffer[end + 4 : stop])
        del self.buffer[:stop]
        connection = fields.get(b"connection", b"").lower()
        keep_alive = (version == b"HTTP/1.1" and connection != b"close") or connection == (
            b"keep-alive"
        )
        path, _, query = target.partition(b"?")
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version[5:].decode(), "method": method.decode("latin-1"),
            "scheme": "http", "path": path.decode("latin-1"), "raw_path": path,
            "query_string": query, "root_path": "", "headers": headers,
            "client": self.client[:2], "server": self.server_addr,
        }  # fmt: skip
        self.busy = True
        asyncio.get_running_loop().create_task(self._serve(scope, body, keep_alive))

    async def _serve(self, scope, body: bytes, keep_alive: bool) -> None:
        try:
            status, headers, answer = await _call(self.app, scope, body)
        except Exception:
            logger.exception("agent gateway: %s %s failed", scope["method"], scope["path"])
            status, headers, answer = (
                500,
                [(b"content-type", b"application/json")],
                (b'{"error": "server", "message": "internal error"}'),
            )
        self._write(status, headers, answer, keep_alive)
        self.busy = False
        if keep_alive and self.buffer:
            self._next()

    def _write(self, status: int, headers: list, body: bytes, keep_alive: bool) -> None:
        if self.closing:
            return
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in headers:
            if name.lower() not in (b"content-length", b"connection"):
                out.append(name + b": " + value + b"\r\n")
        out.append(b"content-length: %d\r\n" % len(body))
        out.append(
            b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n"
        )
        out.append(body)
        self.transport.write(b"".join(out))
        if not keep_alive:
            self.closing = True
            self.transport.close()


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(host: str, port: int, app_path: str | None = None) -> None:
    """One worker: serve until SIGTERM/SIGINT, then let answers in flight finish (5 s)."""
    app = load_app(app_path)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(
            lambda: AgentConnection(app, (host, port)), sock=_socket(host, port)
        )
        logger.info("agent gateway worker %s listening on %s:%s", os.getpid(), host, port)
        await stop.wait()
        server.close()
        from incidents import fastpath

        # Answers in flight finish (their batch commits first); the batch loop itself
        # never ends on its own, so it is not waited for.
        batch_loop = fastpath._batcher.task if fastpath._batcher else None
        pending = [t for t in asyncio.all_tasks() if t not in (asyncio.current_task(), batch_loop)]
        if pending:
            await asyncio.wait(pending, timeout=5)

    asyncio.run(main())


def run(host: str, port: int, workers: int = 1, app_path: str | None = None) -> None:
    """``workers`` processes on one port; SIGTERM to this one stops them all."""
    if workers <= 1:
        serve(host, port, app_path)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve(host, port, app_path)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
