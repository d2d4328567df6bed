"""The lean path for ``POST /api/agents/heartbeat``: quiet heartbeats, batched.

Most heartbeats say "still here, all fine": the agent is known, the signature holds,
the body is valid, no rule is broken, nothing is open for the agent. For those this
ASGI layer, in front of Django, does the same checks as ``incidents.api`` without
Django's request stack and writes them in batches: one statement per batch on a
persistent connection of its own (an ``UPDATE … FROM unnest(…)`` of the agent rows,
the replay check in its ``WHERE`` as before, the samples and the commands to deliver
in the same statement), then ``COMMIT``, and only then the 200 answers. A process
killed before the commit answers nobody; one killed after it leaves heartbeats
applied that their agent did not hear about, which the agent's next heartbeat (signed
later) simply follows.

Anything else goes to Django unchanged, the body replayed: a refused or unusual
request (415, 413, 400, 401, 409: the answers stay Django's), a heartbeat that breaks
a rule, one whose agent is missing, has an open incident or a patch in flight, and
any heartbeat the batch did not apply (stale, replayed, secret rotated, agent
disabled: the statement checks the agent row itself, so a cached secret cannot let
a rotated or disabled agent in). The answers are the same; the full path only runs
where something is to be done.

Settings (env): ``HEARTBEAT_FAST_PATH`` (on), ``HEARTBEAT_BATCH_MAX`` (heartbeats per
statement), ``HEARTBEAT_BATCH_WAIT_MS`` (how long the first heartbeat of a batch
waits for company).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydantic import ConfigDict, ValidationError, create_model, field_validator

from incidents import api, rules, signing
from incidents.api import HeartbeatIn
from incidents.models import DetectionRule
from portal.lib.secretbox import unseal
from portal.metrics import LATENCY, REQUESTS

logger = logging.getLogger(__name__)

#: an ASGI application: ``await app(scope, receive, send)``
ASGIApp = Callable[..., Awaitable[None]]

PATH = "/api/agents/heartbeat"
AGENT_CACHE_SECONDS = 60.0
BATCH_TIMEOUT = 10.0  # seconds a batch may take (connect, statement, commit)
RULES_CACHE_SECONDS = rules.CACHE_SECONDS
_HEADERS = [
    (b"content-type", b"application/json; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]

# One statement per batch. The agent row is the replay mark and the eligibility check:
# an agent that is missing, disabled, has a new secret, an open incident or a patch in
# flight is not updated, and its heartbeat goes to the full path.
BATCH_SQL = """
WITH v AS (
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[],
                         %s::text[], %s::text[], %s::int[])
        AS v(id, sealed, us, nonce, telemetry, version, env, ttl)
), up AS (
    UPDATE incidents_agent a
    SET last_seen = now(), last_telemetry = v.telemetry::jsonb, version = v.version,
        environment = COALESCE(NULLIF(v.env, ''), a.environment),
        alert_after = now() + v.ttl * interval '1 second', missing = false,
        last_signed_us = v.us, last_nonce = v.nonce
    FROM v
    WHERE a.id = v.id AND a.secret_sealed = v.sealed AND a.enabled AND NOT a.missing
      AND (a.last_signed_us IS NULL OR a.last_signed_us < v.us)
      AND NOT EXISTS (SELECT 1 FROM incidents_incident i
                      WHERE i.agent_id = a.id AND i.status <> 'RESOLVED')
      AND NOT EXISTS (SELECT 1 FROM incidents_autopatchattempt p
                      WHERE p.agent_id = a.id AND p.status IN ('APPLYING', 'HEALTH_CHECK'))
    RETURNING a.id
), samples AS (
    INSERT INTO incidents_heartbeatsample (agent_id, received, version, telemetry)
    SELECT v.id, now(), v.version, v.telemetry::jsonb FROM v JOIN up ON up.id = v.id
), commands AS (
    UPDATE incidents_agentcommand c SET status = 'DELIVERED', delivered_at = now()
    WHERE c.id IN (
        SELECT c2.id FROM incidents_agentcommand c2 JOIN up ON up.id = c2.agent_id
        WHERE c2.status = 'PENDING' FOR UPDATE OF c2 SKIP LOCKED)
    RETURNING c.agent_id, c.id, c.kind, c.payload::text
)
SELECT id, NULL::bigint, NULL::text, NULL::text FROM up
UNION ALL
SELECT agent_id, id, kind, payload FROM commands
"""


@dataclass
class CachedAgent:
    pk: int
    name: str
    sealed: str
    secret: str
    ttl: int  # expected period + grace
    period: int
    loaded: float


@dataclass
class Beat:
    agent: CachedAgent
    at_us: int
    nonce: str
    telemetry: str
    version: str
    env: str
    #: set by ``Batcher.submit``: (applied?, commands)
    done: asyncio.Future[tuple[bool, list[dict]]] | None = None


class Stats:
    """Counters for tests and /metrics-style introspection (this process only)."""

    def __init__(self) -> None:
        self.fast = self.fallback = self.batches = self.largest = 0


def _connect_kwargs() -> dict:
    from django.db import connections

    params = connections["default"].get_connection_params()
    for key in ("cursor_factory", "context", "server_side_binding", "pool"):
        params.pop(key, None)
    return params


class Batcher:
    """Collects heartbeats and writes each batch with one statement, then commits."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Beat] = asyncio.Queue()
        self.conn = None
        self.lookup_conn = None
        self.lookup_lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.agents: dict[str, CachedAgent] = {}
        self.rules: tuple[float, list[DetectionRule]] = (0.0, [])
        self.stats = Stats()

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _connection(self, which: str):
        import psycopg

        conn = getattr(self, which)
        if conn is None or conn.closed or conn.broken:
            conn = await psycopg.AsyncConnection.connect(**_connect_kwargs(), autocommit=True)
            setattr(self, which, conn)
        return conn

    # --- reads (agents, rules), on their own connection -------------------------------

    async def agent(self, name: str) -> CachedAgent | None:
        cached = self.agents.get(name)
        now = time.monotonic()
        if cached is not None and now - cached.loaded < AGENT_CACHE_SECONDS:
            return cached
        async with self.lookup_lock:
            conn = await self._connection("lookup_conn")
            row = await (
                await conn.execute(
                    "SELECT id, secret_sealed, expected_period, grace FROM incidents_agent "
                    "WHERE name = %s AND enabled",
                    [name],
                )
            ).fetchone()
        if row is None:
            self.agents.pop(name, None)
            return None
        pk, sealed, period, grace = row
        secret = unseal(sealed, purpose=signing.SEAL_PURPOSE)
        if secret is None:
            return None
        cached = CachedAgent(pk, name, sealed, secret, period + grace, period, now)
        self.agents[name] = cached
        return cached

    def forget(self, name: str) -> None:
        self.agents.pop(name, None)

    async def active_rules(self) -> list[DetectionRule]:
        loaded, found = self.rules
        if time.monotonic() - loaded <= RULES_CACHE_SECONDS:
            return found
        async with self.lookup_lock:
            conn = await self._connection("lookup_conn")
            rows = await (
                await conn.execute(
                    "SELECT id, key, kind, metric, warning, critical, description "
                    "FROM incidents_detectionrule WHERE enabled"
                )
            ).fetchall()
        found = [
            DetectionRule(pk=pk, key=key, kind=kind, metric=metric, warning=warning,
                          critical=critical, description=description, enabled=True)
            for pk, key, kind, metric, warning, critical, description in rows
        ]  # fmt: skip
        self.rules = (time.monotonic(), found)
        return found

    # --- writes ------------------------------------------------------------------------

    async def submit(self, beat: Beat) -> tuple[bool, list[dict]]:
        """(applied?, commands to deliver); not applied means: let the full path answer."""
        done = beat.done = asyncio.get_running_loop().create_future()
        self.start()
        await self.queue.put(beat)
        return await done

    async def _run(self) -> None:
        carry: list[Beat] = []
        while True:
            batch = carry or [await self.queue.get()]
            carry = []
            deadline = time.monotonic() + settings.HEARTBEAT_BATCH_WAIT_MS / 1000
            while len(batch) < settings.HEARTBEAT_BATCH_MAX:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            while not self.queue.empty() and len(batch) < settings.HEARTBEAT_BATCH_MAX:
                batch.append(self.queue.get_nowait())
            # One heartbeat per agent per statement; a second one waits for the next.
            seen: set[int] = set()
            unique: list[Beat] = []
            for beat in batch:
                (carry if beat.agent.pk in seen else unique).append(beat)
                seen.add(beat.agent.pk)
            await self._write(unique)

    async def _write(self, batch: list[Beat]) -> None:
        try:
            rows = await asyncio.wait_for(self._statement(batch), BATCH_TIMEOUT)
            # Committed: only now may anyone hear 200.
        except Exception as exc:
            # Not committed, or not known to be: the full path answers each of them (a
            # heartbeat that did commit gets 409 there, never a second write).
            logger.warning(
                "heartbeat batch of %s not written (%s); the full path answers them",
                len(batch), exc.__class__.__name__,
            )  # fmt: skip
            for beat in batch:
                if beat.done is not None and not beat.done.done():
                    beat.done.set_result((False, []))
            conn, self.conn = self.conn, None
            if conn is not None and not conn.closed:
                await conn.close()
            return
        self._answer(batch, rows)

    async def _statement(self, batch: list[Beat]) -> list:
        conn = await self._connection("conn")
        async with conn.transaction():
            rows = await (
                await conn.execute(
                    BATCH_SQL,
                    [
                        [b.agent.pk for b in batch],
                        [b.agent.sealed for b in batch],
                        [b.at_us for b in batch],
                        [b.nonce for b in batch],
                        [b.telemetry for b in batch],
                        [b.version for b in batch],
                        [b.env for b in batch],
                        [b.agent.ttl for b in batch],
                    ],
                )
            ).fetchall()
        return rows

    def _answer(self, batch: list[Beat], rows: list) -> None:
        applied: set[int] = set()
        commands: dict[int, list[dict]] = {}
        for agent_id, command_id, kind, payload in rows:
            if command_id is None:
                applied.add(agent_id)
            else:
                commands.setdefault(agent_id, []).append(
                    {"id": command_id, "kind": kind, "payload": json.loads(payload)}
                )
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(batch))
        for beat in batch:
            ok = beat.agent.pk in applied
            if not ok:
                self.forget(beat.agent.name)  # maybe a new secret: read it again next time
            if beat.done is not None and not beat.done.done():
                beat.done.set_result((ok, commands.get(beat.agent.pk, [])))


_batcher: Batcher | None = None


def batcher() -> Batcher:
    global _batcher
    if _batcher is None:
        _batcher = Batcher()
    return _batcher


def _twin():
    """``HeartbeatIn``'s fields, constraints and checks on a plain pydantic model: the ninja
    Schema base and the whole-body text walk cost ~80 µs a heartbeat, most of the lean
    path's own work. The text walk is replaced by refusing any ``\\u`` escape (the only
    way NUL or a lone surrogate gets into valid UTF-8 JSON): those go the full way."""

    def metrics(cls, value):
        return api.check_metrics(value)

    def services(cls, value):
        return api.check_services(value)

    config = HeartbeatIn.model_config
    return create_model(
        "QuietHeartbeat",
        __config__=ConfigDict(extra=config["extra"], allow_inf_nan=config["allow_inf_nan"],
                              strict=config["strict"]),
        __validators__={"check_metrics": field_validator("metrics")(metrics),
                        "check_services": field_validator("services")(services)},
        **{name: (f.annotation, f) for name, f in HeartbeatIn.model_fields.items()},
    )  # fmt: skip


QUIET = _twin()


def quiet_body(body: bytes) -> Any:
    """The body as ``parse_body(body, HeartbeatIn)`` reads it, or None where that would
    refuse it or where this cannot tell (the full path then answers). Any: ``QUIET`` is
    built at import time, so its fields (``HeartbeatIn``'s) are unknown to the checker."""
    if b"\\u" in body:
        return None
    try:
        text = body.decode("utf-8")  # as parse_body: never json's UTF-16/32 guessing
        data = json.loads(text, object_pairs_hook=api._unique_keys, parse_constant=api._no_constant)
    except ValueError:  # bad UTF-8, bad JSON, a duplicate key
        return None
    if not isinstance(data, dict):
        return None
    try:
        return QUIET.model_validate(data)
    except ValidationError:
        return None


def _header(scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _read_body(receive, limit: int) -> tuple[bytes, bool, list]:
    """The body, whether it is complete within ``limit``, and the messages read."""
    chunks, size, messages = [], 0, []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"", False, messages
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False, messages
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True, messages


async def _quiet_beat(scope, body: bytes) -> Beat | None:
    """The heartbeat, if it is one for the lean path; None: the full path answers."""
    media, _, params = _header(scope, b"content-type").partition(";")
    if media.strip().lower() != "application/json":
        return None
    if params.strip() and params.strip().lower().replace(" ", "") not in (
        "charset=utf-8", "charset=utf8", 'charset="utf-8"',
    ):  # fmt: skip
        return None
    name = _header(scope, b"x-agent")
    timestamp = _header(scope, b"x-agent-timestamp")
    nonce = _header(scope, b"x-agent-nonce")
    given = _header(scope, b"x-agent-signature")
    if not (name and timestamp and nonce and len(given) == 64 and given.isascii()):
        return None
    at_us = signing.parse_timestamp(timestamp)
    if at_us is None or abs(time.time() - at_us / 1e6) > settings.HEARTBEAT_MAX_SKEW:
        return None
    if not signing.NONCE.match(nonce) or not (signing.AGENT_NAME.match(name) and name.isascii()):
        return None
    agent = await batcher().agent(name)
    if agent is None:
        return None
    expected = signing.signature(agent.secret, timestamp, nonce, "POST", PATH, body)
    if not hmac.compare_digest(expected, given):
        return None
    parsed = quiet_body(body)
    if parsed is None:
        return None
    telemetry = {
        "errors_last_24h": parsed.errors_last_24h,
        "webhook_fail_rate": parsed.webhook_fail_rate,
        **parsed.metrics,
    }
    if parsed.services:
        telemetry["services"] = parsed.services
    if rules.evaluate(telemetry, await batcher().active_rules()):
        return None  # something to open: the full path does it
    return Beat(agent, at_us, nonce, json.dumps(telemetry), parsed.version, parsed.env)


def wrap(inner: ASGIApp) -> ASGIApp:
    """``inner`` (the portal's ASGI application) with the lean heartbeat path in front."""

    async def application(scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != PATH
            or not settings.HEARTBEAT_FAST_PATH
        ):
            return await inner(scope, receive, send)
        limit = settings.HEARTBEAT_MAX_BYTES
        declared = _header(scope, b"content-length")
        if not declared.isdigit() or int(declared) > limit:
            return await inner(scope, receive, send)
        started = time.perf_counter()
        body, complete, messages = await _read_body(receive, limit)
        beat = await _quiet_beat(scope, body) if complete else None
        applied, commands = (await batcher().submit(beat)) if beat is not None else (False, [])
        if applied and beat is not None:
            batcher().stats.fast += 1
            answer = json.dumps(
                {"ok": True, "agent": beat.agent.name, "commands": commands,
                 "next_in": beat.agent.period}
            ).encode()  # fmt: skip
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_HEADERS, (b"content-length", str(len(answer)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            # Counted as Django's middleware counts the requests it serves (/metrics).
            REQUESTS.labels("POST", "200").inc()
            LATENCY.labels("POST").observe(time.perf_counter() - started)
            return None
        batcher().stats.fallback += 1
        replay = list(messages)

        async def replayed():
            return replay.pop(0) if replay else await receive()

        return await inner(scope, replayed, send)

    return application
