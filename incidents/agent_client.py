"""Reference agent: signed heartbeats with real local telemetry, and command handling.

Standard library only, so it can be copied to any machine with Python 3.11:

    PORTAL_URL=https://ops.example.com PORTAL_AGENT=web-1 PORTAL_AGENT_SECRET_FILE=/etc/agent.key \\
        python -m incidents.agent_client --version 1.4.2

Commands (``update``, ``rollback``, ``config``) arrive in heartbeat responses and
go to a pluggable handler (``--handler module:function``); the default handler
only records the new version. Every command is acked or failed with its output.

Requests are signed with a microsecond timestamp that strictly increases within the
process: the portal refuses a heartbeat not signed later than the last one it accepted
from this agent (replay protection, see ``incidents.signing``). Run one process per agent.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[["Agent", dict], tuple[bool, str]]


def local_telemetry(path: str = "/") -> dict[str, float]:
    """Load, memory and disk use of this machine (Linux /proc, portable fallbacks)."""
    metrics: dict[str, float] = {}
    try:
        load1 = os.getloadavg()[0]
        metrics["load1"] = round(load1, 2)
        metrics["cpu_pct"] = round(min(100.0, 100.0 * load1 / (os.cpu_count() or 1)), 1)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) for line in fh if ":" in line}
        total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
        metrics["mem_pct"] = round(100.0 * (total - available) / total, 1)
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    usage = shutil.disk_usage(path)
    metrics["disk_pct"] = round(100.0 * usage.used / usage.total, 1)
    return metrics


def service_states(units: list[str]) -> dict[str, str]:
    """``systemctl is-active`` of each watched unit ("unknown" when it cannot tell)."""
    states = {}
    for unit in units:
        try:
            result = subprocess.run(
                ["systemctl", "is-active", unit], capture_output=True, text=True, timeout=5
            )
            state = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            state = "unknown"
        allowed = {"active", "inactive", "failed", "unknown"}
        states[unit] = state if state in allowed else "unknown"
    return states


def sign(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{nonce}\n{method} {path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class Agent:
    url: str
    name: str
    secret: str
    version: str
    env: str = "production"
    handler: Handler | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # telemetry overrides (tests, demos)
    watch_services: list[str] = field(default_factory=list)
    timeout: float = 10.0

    _last_us: int = field(default=0, init=False, repr=False)

    def next_timestamp(self) -> str:
        """Microseconds, strictly increasing within this process even if the clock steps
        back: the portal refuses a heartbeat not signed later than the last one it took."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _post(self, path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        timestamp, nonce = self.next_timestamp(), secrets.token_urlsafe(18)
        headers = {
            "Content-Type": "application/json",
            "X-Agent": self.name,
            "X-Agent-Timestamp": timestamp,
            "X-Agent-Nonce": nonce,
            "X-Agent-Signature": sign(self.secret, timestamp, nonce, "POST", path, body),
        }
        request = urllib.request.Request(self.url.rstrip("/") + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"{}")

    def heartbeat_payload(self) -> dict:
        extra = dict(self.extra)
        metrics = {**local_telemetry(), **extra.pop("metrics", {})}
        services = {**service_states(self.watch_services), **extra.pop("services", {})}
        return {
            "errors_last_24h": extra.pop("errors_last_24h", 0),
            "webhook_fail_rate": extra.pop("webhook_fail_rate", 0.0),
            "version": self.version,
            "env": self.env,
            "metrics": metrics,
            **({"services": services} if services else {}),
        }

    def beat(self) -> list[dict]:
        """One heartbeat; runs and reports any commands it returns. Returns the commands."""
        answer = self._post("/api/agents/heartbeat", self.heartbeat_payload())
        commands = answer.get("commands", [])
        for command in commands:
            self.run_command(command)
        return commands

    def run_command(self, command: dict) -> None:
        handler = self.handler or default_handler
        try:
            ok, output = handler(self, command)
        except Exception as exc:  # a handler bug must still be reported, not crash the agent
            ok, output = False, f"handler error: {exc.__class__.__name__}: {exc}"
        verb = "ack" if ok else "fail"
        self._post(f"/api/agents/commands/{command['id']}/{verb}", {"output": output[:8000]})


def default_handler(agent: Agent, command: dict) -> tuple[bool, str]:
    """Record the version an update/rollback asks for (real deployments plug their own)."""
    kind, payload = command.get("kind"), command.get("payload") or {}
    if kind in ("update", "rollback") and payload.get("version"):
        agent.version = str(payload["version"])
        return True, f"{kind} to {agent.version} applied"
    if kind == "config":
        agent.extra.update(payload.get("telemetry", {}))
        return True, "configuration applied"
    return False, f"unsupported command {kind!r}"


def load_handler(spec: str) -> Handler:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "handle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("PORTAL_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--name", default=os.environ.get("PORTAL_AGENT"))
    parser.add_argument("--secret-file", default=os.environ.get("PORTAL_AGENT_SECRET_FILE"))
    parser.add_argument("--version", default=os.environ.get("PORTAL_AGENT_VERSION", "1.0.0"))
    parser.add_argument("--env", default=os.environ.get("PORTAL_AGENT_ENV", "production"))
    parser.add_argument("--period", type=float, default=120.0, help="seconds between heartbeats")
    parser.add_argument("--handler", help="module:function handling commands")
    parser.add_argument("--telemetry", default="{}", help="JSON merged into each heartbeat")
    parser.add_argument("--once", action="store_true", help="send one heartbeat and exit")
    parser.add_argument(
        "--watch-service", action="append", default=[], help="report this unit's state"
    )
    args = parser.parse_args(argv)
    secret = os.environ.get("PORTAL_AGENT_SECRET")
    if args.secret_file:
        with open(args.secret_file) as fh:
            secret = fh.read().strip()
    if not args.name or not secret:
        parser.error("an agent name and secret are needed (PORTAL_AGENT, PORTAL_AGENT_SECRET_FILE)")
    agent = Agent(
        url=args.url,
        name=args.name,
        secret=secret,
        version=args.version,
        env=args.env,
        handler=load_handler(args.handler) if args.handler else None,
        extra=json.loads(args.telemetry),
        watch_services=args.watch_service,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        try:
            commands = agent.beat()
            print(json.dumps({"ok": True, "version": agent.version, "commands": len(commands)}),
                  flush=True)  # fmt: skip
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), file=sys.stderr, flush=True)
        if args.once or stop.wait(args.period):
            return 0


if __name__ == "__main__":
    sys.exit(main())
