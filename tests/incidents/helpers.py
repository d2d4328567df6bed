"""Signed requests as the reference agent sends them, and small stand-in HTTP services."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from incidents.agent_client import sign

HEARTBEAT = "/api/agents/heartbeat"


def signed_headers(name: str, secret: str, body: bytes, path: str = HEARTBEAT, **overrides):
    timestamp = str(overrides.pop("timestamp", int(time.time())))
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
    return client.post(
        HEARTBEAT, data=body, content_type="application/json",
        **signed_headers(name, secret, body, **overrides),
    )  # fmt: skip


def payload(**fields) -> dict:
    base = {"errors_last_24h": 0, "webhook_fail_rate": 0.0, "version": "1.0.0", "env": "production"}
    return base | fields


class JSONService:
    """A tiny real HTTP server on loopback answering POSTs with a programmable JSON reply
    (stand-in for the decision service and the staging runner, which are external)."""

    def __init__(self, reply: dict | None = None, status: int = 200, delay: float = 0.0):
        self.reply, self.status, self.delay = reply or {}, status, delay
        self.requests: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                service.requests.append(json.loads(self.rfile.read(length) or b"{}"))
                if service.delay:
                    threading.Event().wait(service.delay)
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
        self.server.shutdown()
        self.server.server_close()
