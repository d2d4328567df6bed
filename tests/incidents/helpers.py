"""Signed requests as the reference agent sends them, and small stand-in HTTP services."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from incidents.agent_client import sign

HEARTBEAT = "/api/agents/heartbeat"


_last_us = 0


def fresh_timestamp() -> str:
    """Microseconds, strictly increasing, as the reference agent signs them."""
    global _last_us
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    return f"{_last_us // 1_000_000}.{_last_us % 1_000_000:06d}"


def signed_headers(name: str, secret: str, body: bytes, path: str = HEARTBEAT, **overrides):
    timestamp = str(overrides.pop("timestamp", None) or fresh_timestamp())
    nonce = overrides.pop("nonce", secrets.token_urlsafe(18))
    headers = {
        "HTTP_X_AGENT": name,
        "HTTP_X_AGENT_TIMESTAMP": timestamp,
        "HTTP_X_AGENT_NONCE": nonce,
        "HTTP_X_AGENT_SIGNATURE": sign(secret, timestamp, nonce, "POST", path, body),
    }
    headers.update(overrides)
    return headers


def beat(client, name: str, secret: str, payload: dict | None = None, **overrides):
    body = json.dumps(
        payload
        or {"errors_last_24h": 0, "webhook_fail_rate": 0.0, "version": "1.0.0", "env": "production"}
    ).encode()
    return post_signed(client, name, secret, body, **overrides)


def post_signed(
    client, name: str, secret: str, body: bytes, path: str = HEARTBEAT,
    content_type: str = "application/json", **overrides,
):  # fmt: skip
    """POST ``body`` (bytes, sent as is) signed for ``path``."""
    return client.post(
        path, data=body, content_type=content_type,
        **signed_headers(name, secret, body, path=path, **overrides),
    )  # fmt: skip


def payload(**fields) -> dict:
    base = {"errors_last_24h": 0, "webhook_fail_rate": 0.0, "version": "1.0.0", "env": "production"}
    return base | fields


class JSONService:
    """A tiny real HTTP server on loopback answering POSTs with a programmable JSON reply
    (stand-in for the decision service and the staging runner, which are external)."""

    def __init__(
        self,
        reply: dict | None = None,
        status: int = 200,
        delay: float = 0.0,
        hold: threading.Event | None = None,
    ):
        """``hold``: each request waits until it is set (a runner stuck mid-request)."""
        self.reply, self.status, self.delay, self.hold = reply or {}, status, delay, hold
        self.requests: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                service.requests.append(json.loads(self.rfile.read(length) or b"{}"))
                if service.delay:
                    threading.Event().wait(service.delay)
                if service.hold is not None:
                    service.hold.wait(60)
                body = json.dumps(service.reply).encode()
                self.send_response(service.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


class RawService:
    """A loopback TCP server answering every connection with fixed raw bytes (a broken HTTP
    peer: a garbage status line, a truncated body), then closing."""

    def __init__(self, answer: bytes):
        import socket

        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def overdue_agents(count: int, *, now, prefix: str = "fleet", seconds_late: int = 100, **fields):
    """``count`` agents (bulk, like a fleet) whose heartbeat was due up to ``seconds_late``
    seconds before ``now``; ``fields`` go on every one (environment, tags, host...)."""
    from datetime import timedelta

    from incidents.models import Agent
    from incidents.signing import SEAL_PURPOSE
    from portal.lib.secretbox import seal

    sealed = seal("never-used", purpose=SEAL_PURPOSE)
    rows = [
        Agent(
            name=f"{prefix}-{i:05d}",
            secret_sealed=sealed,
            last_seen=now - timedelta(seconds=300 + i),
            last_telemetry={"cpu_pct": 10 + i % 50},
            alert_after=now - timedelta(seconds=1 + i % seconds_late),
            **fields,
        )
        for i in range(count)
    ]
    return Agent.objects.bulk_create(rows)
