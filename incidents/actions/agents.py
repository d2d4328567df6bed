"""Agents: registration, secret rotation and commands sent to them."""

from __future__ import annotations

import secrets
from typing import Any

from django.db import transaction

from incidents.actions.common import IncidentError
from incidents.choices import (
    CommandKind,
)
from incidents.models import (
    Agent,
    AgentCommand,
)
from incidents.signing import SEAL_PURPOSE
from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib.secretbox import seal
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.lib.validation import full_clean_or_refuse


def create_agent(*, name: str, by: Actor | Any = "system:cli", **fields: Any) -> tuple[Agent, str]:
    """Register an agent; returns it and its secret, which is shown once and stored sealed."""
    try:
        refuse_unstorable({"name": name, **fields})
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    secret = secrets.token_urlsafe(32)
    agent = Agent(name=name, secret_sealed=seal(secret, purpose=SEAL_PURPOSE), **fields)
    full_clean_or_refuse(agent, IncidentError)
    with transaction.atomic():
        agent.save()
        record(
            AuditEventType.AGENT_CREATED,
            actor=by,
            subject=agent,
            details={"name": name, "kind": agent.kind, "environment": agent.environment},
        )
    return agent, secret


def rotate_agent_secret(agent: Agent, *, by: Actor | Any) -> str:
    """A new secret, shown once. It also clears the replay high-water mark: nothing signed
    with the old secret passes any more, and an agent whose clock ran ahead can start over."""
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(
            secret_sealed=seal(secret, purpose=SEAL_PURPOSE), last_signed_us=None, last_nonce=""
        )
        record(AuditEventType.AGENT_SECRET_ROTATED, actor=by, subject=agent, details={})
    return secret


def send_command(
    agent: Agent, kind: str, payload: dict[str, Any], *, by: Actor | Any
) -> AgentCommand:
    """Queue a command for the agent; it is delivered in its next heartbeat response."""
    if kind not in CommandKind.values:
        raise IncidentError("invalid", f"unknown command {kind!r}")
    actor = Actor.of(by)
    with transaction.atomic():
        command = AgentCommand.objects.create(
            agent=agent, kind=kind, payload=payload, requested_by=actor.label
        )
        record(
            AuditEventType.AGENT_COMMAND_SENT,
            actor=actor,
            subject=command,
            details={"agent": agent.name, "kind": kind, "payload": payload},
        )
    return command
