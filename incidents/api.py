"""Agent-facing API: signed heartbeats, command acks. Typed bodies; clear 4xx JSON errors.

Bodies are parsed here, strictly, not by django-ninja's lenient parser: only
``application/json`` (UTF-8), one JSON object, no duplicate keys, no ``NaN``/``Infinity``,
no type coercion (``true`` is not an integer, ``"3"`` is not a number), and no text the
database cannot store (NUL, unpaired surrogates). Each refusal names the problem and
writes nothing.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings
from ninja import Field, Router, Schema, Status
from pydantic import ConfigDict, ValidationError, field_validator

from incidents import actions, signing
from incidents.models import Agent
from portal.lib.text import UNSTORABLE, StorableInput, StorableStr

router = Router(tags=["agents"])

_VERSION = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_PERCENT = {"cpu_pct", "mem_pct", "disk_pct"}
_SERVICE_STATES = {"active", "running", "ok", "inactive", "failed", "stopped", "exited", "unknown"}
_JSON = "application/json"


class AgentRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyRefused(Exception):
    """A body that is not what the endpoint takes (400), with the reason for the agent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _media_type(request) -> tuple[str, str]:
    media, _, params = (request.headers.get("Content-Type") or "").partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


class AgentAuth:
    """Size and media type first (nothing is parsed from a refused body), then the signature."""

    def __call__(self, request) -> Agent:
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            raise AgentRefused(400, "invalid Content-Length") from None
        if length > settings.HEARTBEAT_MAX_BYTES:
            raise AgentRefused(413, f"body larger than {settings.HEARTBEAT_MAX_BYTES} bytes")
        media, charset = _media_type(request)
        if media != _JSON or charset not in ("", "utf-8", "utf8"):
            raise AgentRefused(
                415, f"Content-Type must be {_JSON} (UTF-8), not {media or 'missing'!r}"
            )
        body = request.body
        if len(body) > settings.HEARTBEAT_MAX_BYTES:
            raise AgentRefused(413, f"body larger than {settings.HEARTBEAT_MAX_BYTES} bytes")
        try:
            signed = signing.verify(request.headers, request.method, request.path, body)
        except signing.SignatureError as exc:
            raise AgentRefused(exc.status, str(exc)) from None
        request.agent = signed.agent
        request.signed = signed
        return signed.agent


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _safe(text: str) -> str:
    """Echo input in a message without echoing what cannot be stored or logged."""
    return UNSTORABLE.sub("\ufffd", text)[:80]


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(_safe(str(part)) for part in error["loc"])
        message = UNSTORABLE.sub("\ufffd", error["msg"].removeprefix("Value error, "))
        # A whole-body check (StorableInput) names the field in its message already.
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def parse_body(body: bytes, model: type[Schema]) -> Any:
    """Strict JSON → ``model``, or ``BodyRefused`` naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused("invalid", "body is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise BodyRefused(
            "duplicate_key", f"duplicate key {_safe(str(exc))!r} in the JSON body"
        ) from None
    except ValueError as exc:
        raise BodyRefused("invalid", f"body is not valid JSON: {_safe(str(exc))}") from None
    if not isinstance(data, dict):
        raise BodyRefused("invalid", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BodyRefused("invalid", _describe(exc)) from None


class HeartbeatIn(StorableInput, Schema):
    # strict: no coercion (true is not 1, "3" is not 3); an int is still a valid float.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    errors_last_24h: int = Field(ge=0, le=1_000_000_000)
    webhook_fail_rate: float = Field(ge=0.0, le=1.0)
    version: str = Field(pattern=_VERSION)
    env: str = Field(pattern=r"^[a-z0-9_-]{1,30}$")
    metrics: dict[str, float] = Field(default_factory=dict, max_length=50)
    services: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, float]) -> dict[str, float]:
        return check_metrics(value)

    @field_validator("services")
    @classmethod
    def _services(cls, value: dict[str, str]) -> dict[str, str]:
        return check_services(value)


def check_metrics(value: dict[str, float]) -> dict[str, float]:
    for key, number in value.items():
        if not _KEY.match(key):
            raise ValueError(f"metric name {_safe(key)!r} must match [a-z][a-z0-9_]*")
        if not math.isfinite(number) or number < 0 or number > 1e12:
            raise ValueError(f"metric {key} must be a finite number >= 0")
        if key in _PERCENT and number > 100:
            raise ValueError(f"{key} is a percentage (0-100)")
    return value


def check_services(value: dict[str, str]) -> dict[str, str]:
    for name, state in value.items():
        if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.@-]{0,63}$", name):
            raise ValueError(f"service name {_safe(name)!r} is not a unit name")
        if state not in _SERVICE_STATES:
            raise ValueError(f"service state {_safe(state)!r} not one of {sorted(_SERVICE_STATES)}")
    return value


class CommandOut(Schema):
    id: int
    kind: str
    payload: dict


class HeartbeatOut(Schema):
    ok: bool
    agent: str
    commands: list[CommandOut]
    next_in: int


class CommandResultIn(StorableInput, Schema):
    model_config = ConfigDict(extra="forbid", strict=True)
    output: StorableStr = Field(default="", max_length=8000)


class ErrorOut(Schema):
    error: str
    message: str


AUTH = AgentAuth()
ERRORS = {code: ErrorOut for code in (400, 401, 409, 413, 415)}


def _body_doc(model: type[Schema]) -> dict:
    """The request body in the OpenAPI schema (parsed by ``parse_body``, not by ninja)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": schema}}}}


def _refused(exc: BodyRefused | actions.IncidentError, status: int = 400):
    return Status(status, {"error": exc.code, "message": exc.message})


@router.post(
    "/heartbeat",
    auth=AUTH,
    response={200: HeartbeatOut, **ERRORS},
    openapi_extra=_body_doc(HeartbeatIn),
)
def heartbeat(request):
    agent, signed = request.agent, request.signed
    # Early and cheap, from the row the signature check read; the UPDATE re-checks it.
    try:
        signing.check_order(signed, agent.last_signed_us, agent.last_nonce)
    except signing.StaleRequest as exc:
        return Status(409, {"error": "stale", "message": str(exc)})
    try:
        body = parse_body(request.body, HeartbeatIn)
    except BodyRefused as exc:
        return _refused(exc)
    telemetry = {
        "errors_last_24h": body.errors_last_24h,
        "webhook_fail_rate": body.webhook_fail_rate,
        **body.metrics,
    }
    if body.services:
        telemetry["services"] = body.services
    try:
        commands = actions.ingest_heartbeat(
            agent,
            version=body.version,
            environment=body.env,
            telemetry=telemetry,
            signed_us=signed.at_us,
            nonce=signed.nonce,
        )
    except actions.IncidentError as exc:
        return _refused(exc, 409)
    return {"ok": True, "agent": agent.name, "commands": commands, "next_in": agent.expected_period}


def _finish(request, command_id: int, ok: bool):
    try:
        body = parse_body(request.body, CommandResultIn)
    except BodyRefused as exc:
        return _refused(exc)
    try:
        command = actions.finish_command(command_id, request.agent, ok=ok, output=body.output)
    except actions.IncidentError as exc:
        return _refused(exc, 404 if exc.code == "not_found" else 409)
    return {"id": command.pk, "kind": command.kind, "payload": command.payload}


@router.post(
    "/commands/{command_id}/ack",
    auth=AUTH,
    response={200: CommandOut, 404: ErrorOut, **ERRORS},
    openapi_extra=_body_doc(CommandResultIn),
)
def ack(request, command_id: int):
    return _finish(request, command_id, ok=True)


@router.post(
    "/commands/{command_id}/fail",
    auth=AUTH,
    response={200: CommandOut, 404: ErrorOut, **ERRORS},
    openapi_extra=_body_doc(CommandResultIn),
)
def fail(request, command_id: int):
    return _finish(request, command_id, ok=False)
