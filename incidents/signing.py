"""Agent request signing (HMAC-SHA256), so a captured request cannot be replayed.

An agent sends, with every request::

    X-Agent: <name>
    X-Agent-Timestamp: <unix seconds>[.<up to 6 fraction digits>]
    X-Agent-Nonce: <16-64 chars [A-Za-z0-9_-]>
    X-Agent-Signature: hex(HMAC-SHA256(secret, "<timestamp>\\n<nonce>\\n<METHOD> <path>\\n" + body))

The portal refuses a timestamp more than ``HEARTBEAT_MAX_SKEW`` (300 s) away.

Replays are refused by PostgreSQL, not Redis: each agent row keeps a high-water mark
(``last_signed_us``, ``last_nonce``) and a heartbeat is applied only if it is signed
strictly later than the last accepted one. The check is a condition of the heartbeat's
own ``UPDATE`` (a compare-and-swap, no extra query), so a Redis flush or restart changes
nothing. A heartbeat that is older than, or as old as, the last accepted one is refused
with 409 whether it is a replay or an out-of-order delivery: heartbeats are snapshots, and
an older one would overwrite newer telemetry. The reference agent sends microsecond
timestamps that strictly increase. Agents sending whole seconds keep working as long as
their heartbeats are at least a second apart.

Command acks and fails are not part of the mark (they follow a heartbeat within the same
second for agents sending whole seconds); they are replay-safe by their own
compare-and-swap: a command moves from DELIVERED to ACKED or FAILED once, so a replayed
ack gets 409 and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings

from incidents.models import Agent
from portal.lib.secretbox import unseal

NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TIMESTAMP = re.compile(r"^([0-9]{1,12})(?:\.([0-9]{1,6}))?$")
AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SEAL_PURPOSE = "agent-hmac"  # what the agent secrets are sealed for (portal.lib.secretbox)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SignatureError(Exception):
    """Refused; the message is safe to return to the caller."""

    status = 401


class StaleRequest(SignatureError):
    """Signed correctly but not later than the last accepted heartbeat (replay or reorder)."""

    status = 409


@dataclass(frozen=True)
class Signed:
    """A request whose signature checked out."""

    agent: Agent
    at_us: int  # the signed timestamp, in microseconds since the epoch
    nonce: str


def signature(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{nonce}\n{method} {path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def parse_timestamp(value: str) -> int | None:
    """``"1733000000"`` or ``"1733000000.123456"`` → microseconds (exact, no float)."""
    match = TIMESTAMP.match(value) if value.isascii() else None
    if match is None:
        return None
    seconds, fraction = match.groups()
    return int(seconds) * 1_000_000 + int((fraction or "").ljust(6, "0"))


def format_us(at_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=at_us)).isoformat(timespec="microseconds")


def verify(headers, method: str, path: str, body: bytes) -> Signed:
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
    at_us = parse_timestamp(timestamp)
    if at_us is None or abs(time.time() - at_us / 1e6) > settings.HEARTBEAT_MAX_SKEW:
        raise SignatureError("timestamp missing or outside the allowed window (check the clock)")
    if not NONCE.match(nonce):
        raise SignatureError("nonce must be 16-64 characters of [A-Za-z0-9_-]")
    # A name that cannot be an agent's (NUL, spaces, …) never reaches the database; it
    # gets the same answer as an unknown agent below.
    known_shape = bool(AGENT_NAME.match(name)) and name.isascii()
    # No ORDER BY (the model orders by name) and no telemetry JSON: this runs per heartbeat.
    agent = (
        Agent.objects.filter(name=name, enabled=True)
        .only("name", "secret_sealed", "expected_period", "grace", "missing", "environment",
              "version", "last_signed_us", "last_nonce")
        .order_by()
        .first()
        if known_shape
        else None
    )  # fmt: skip
    secret = unseal(agent.secret_sealed, purpose=SEAL_PURPOSE) if agent else None
    expected = signature(secret or "x", timestamp, nonce, method, path, body)
    # Same work whether or not the agent exists: no oracle on agent names.
    if not hmac.compare_digest(expected, given) or agent is None or secret is None:
        raise SignatureError("bad signature or unknown agent")
    return Signed(agent=agent, at_us=at_us, nonce=nonce)


def check_order(signed: Signed, last_us: int | None, last_nonce: str) -> None:
    """Raise ``StaleRequest`` unless ``signed`` is later than the mark ``(last_us, last_nonce)``."""
    if last_us is None or signed.at_us > last_us:
        return
    if signed.at_us == last_us and signed.nonce == last_nonce:
        raise StaleRequest(
            "replayed request: this heartbeat (same timestamp and nonce) was already accepted"
        )
    raise StaleRequest(
        f"out-of-order or replayed heartbeat: signed at {format_us(signed.at_us)}, not after "
        f"the last accepted one ({format_us(last_us)}); sign each heartbeat with a strictly "
        "increasing timestamp"
    )
