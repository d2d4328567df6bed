"""Agent-facing API: signed heartbeats, command acks. Typed bodies; clear 4xx JSON errors."""

from __future__ import annotations

import math
import re

from django.conf import settings
from ninja import Field, Router, Schema, Status
from pydantic import ConfigDict, field_validator

from incidents import actions, signing
from incidents.models import Agent

router = Router(tags=["agents"])

_VERSION = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_PERCENT = {"cpu_pct", "mem_pct", "disk_pct"}
_SERVICE_STATES = {"active", "running", "ok", "inactive", "failed", "stopped", "exited", "unknown"}


class AgentRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AgentAuth:
    """Size limit first (nothing is parsed from an oversized body), then the signature."""

    def __call__(self, request) -> Agent:
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            raise AgentRefused(400, "invalid Content-Length") from None
        if length > settings.HEARTBEAT_MAX_BYTES:
            raise AgentRefused(413, f"body larger than {settings.HEARTBEAT_MAX_BYTES} bytes")
        body = request.body
        if len(body) > settings.HEARTBEAT_MAX_BYTES:
            raise AgentRefused(413, f"body larger than {settings.HEARTBEAT_MAX_BYTES} bytes")
        try:
            agent = signing.verify(request.headers, request.method, request.path, body)
        except signing.SignatureError as exc:
            raise AgentRefused(401, str(exc)) from None
        request.agent = agent
        return agent


class HeartbeatIn(Schema):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    errors_last_24h: int = Field(ge=0, le=1_000_000_000)
    webhook_fail_rate: float = Field(ge=0.0, le=1.0)
    version: str = Field(pattern=_VERSION)
    env: str = Field(pattern=r"^[a-z0-9_-]{1,30}$")
    metrics: dict[str, float] = Field(default_factory=dict, max_length=50)
    services: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not _KEY.match(key):
                raise ValueError(f"metric name {key!r} must match [a-z][a-z0-9_]*")
            if not math.isfinite(number) or number < 0 or number > 1e12:
                raise ValueError(f"metric {key} must be a finite number >= 0")
            if key in _PERCENT and number > 100:
                raise ValueError(f"{key} is a percentage (0-100)")
        return value

    @field_validator("services")
    @classmethod
    def _services(cls, value: dict[str, str]) -> dict[str, str]:
        for name, state in value.items():
            if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.@-]{0,63}$", name):
                raise ValueError(f"service name {name!r} is not a unit name")
            if state not in _SERVICE_STATES:
                raise ValueError(f"service state {state!r} not one of {sorted(_SERVICE_STATES)}")
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


class CommandResultIn(Schema):
    model_config = ConfigDict(extra="forbid")
    output: str = Field(default="", max_length=8000)


class ErrorOut(Schema):
    error: str
    message: str


AUTH = AgentAuth()


@router.post("/heartbeat", auth=AUTH, response={200: HeartbeatOut, 400: ErrorOut})
def heartbeat(request, body: HeartbeatIn):
    agent = request.agent
    telemetry = {
        "errors_last_24h": body.errors_last_24h,
        "webhook_fail_rate": body.webhook_fail_rate,
        **body.metrics,
    }
    if body.services:
        telemetry["services"] = body.services
    commands = actions.ingest_heartbeat(
        agent, version=body.version, environment=body.env, telemetry=telemetry
    )
    return {"ok": True, "agent": agent.name, "commands": commands, "next_in": agent.expected_period}


def _finish(request, command_id: int, body: CommandResultIn, ok: bool):
    try:
        command = actions.finish_command(command_id, request.agent, ok=ok, output=body.output)
    except actions.IncidentError as exc:
        status = 404 if exc.code == "not_found" else 409
        return Status(status, {"error": exc.code, "message": exc.message})
    return {"id": command.pk, "kind": command.kind, "payload": command.payload}


@router.post(
    "/commands/{command_id}/ack",
    auth=AUTH,
    response={200: CommandOut, 404: ErrorOut, 409: ErrorOut},
)
def ack(request, command_id: int, body: CommandResultIn):
    return _finish(request, command_id, body, ok=True)


@router.post(
    "/commands/{command_id}/fail",
    auth=AUTH,
    response={200: CommandOut, 404: ErrorOut, 409: ErrorOut},
)
def fail(request, command_id: int, body: CommandResultIn):
    return _finish(request, command_id, body, ok=False)
