"""Heartbeat request signing (HMAC-SHA256), so a captured request cannot be replayed.

An agent sends, with every request::

    X-Agent: <name>
    X-Agent-Timestamp: <unix seconds>
    X-Agent-Nonce: <16-64 chars [A-Za-z0-9_-]>
    X-Agent-Signature: hex(HMAC-SHA256(secret, "<timestamp>\\n<nonce>\\n<METHOD> <path>\\n" + body))

The portal refuses a timestamp more than ``HEARTBEAT_MAX_SKEW`` (300 s) away and
any nonce it has seen within that window (kept in Redis until it expires).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from django.conf import settings

from incidents.models import Agent
from portal.lib.redis import get_redis
from portal.lib.secretbox import unseal

NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SEAL_PURPOSE = "agent-hmac"  # what the agent secrets are sealed for (portal.lib.secretbox)


class SignatureError(Exception):
    """Refused; the message is safe to return to the caller."""


def signature(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{nonce}\n{method} {path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(headers, method: str, path: str, body: bytes) -> Agent:
    name = headers.get("X-Agent", "")
    timestamp = headers.get("X-Agent-Timestamp", "")
    nonce = headers.get("X-Agent-Nonce", "")
    given = headers.get("X-Agent-Signature", "")
    if not (name and timestamp and nonce and given):
        raise SignatureError(
            "missing X-Agent, X-Agent-Timestamp, X-Agent-Nonce or X-Agent-Signature"
        )
    if not given.isascii() or len(given) != 64:
        raise SignatureError("signature must be 64 hex characters")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or (
        abs(time.time() - int(timestamp)) > settings.HEARTBEAT_MAX_SKEW
    ):
        raise SignatureError("timestamp missing or outside the allowed window (check the clock)")
    if not NONCE.match(nonce):
        raise SignatureError("nonce must be 16-64 characters of [A-Za-z0-9_-]")
    # No ORDER BY (the model orders by name) and no telemetry JSON: this runs per heartbeat.
    agent = (
        Agent.objects.filter(name=name[:63], enabled=True)
        .only("name", "secret_sealed", "expected_period", "grace", "missing", "environment",
              "version")
        .order_by()
        .first()
    )  # fmt: skip
    secret = unseal(agent.secret_sealed, purpose=SEAL_PURPOSE) if agent else None
    expected = signature(secret or "x", timestamp, nonce, method, path, body)
    # Same work whether or not the agent exists: no oracle on agent names.
    if not hmac.compare_digest(expected, given) or agent is None or secret is None:
        raise SignatureError("bad signature or unknown agent")
    key = f"portal:agent-nonce:{agent.pk}:{nonce}"
    if not get_redis().set(key, 1, nx=True, ex=settings.HEARTBEAT_MAX_SKEW * 2):
        raise SignatureError("replayed request (nonce already used)")
    return agent
