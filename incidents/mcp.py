"""Incidents' MCP tools (read-only): what is wrong, how bad, and where it is in its life.

Registered from ``IncidentsConfig.ready()``; served by ``portal.mcp``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from incidents.choices import INCIDENT_OPEN, Severity
from incidents.models import Incident
from portal.mcp.core import READ_ONLY, Call, ToolError, require_view, run, tool


class IncidentEventOut(BaseModel):
    at: datetime
    kind: str
    message: str


class IncidentOut(BaseModel):
    """An incident as on-call sees it: what, how bad, where it is in its life."""

    id: int
    agent: str
    cause: str
    title: str
    severity: str
    status: str = Field(description="OPEN, ACKNOWLEDGED, MITIGATING or RESOLVED.")
    opened_at: datetime
    resolved_at: datetime | None
    occurrences: int
    escalation_level: int
    remediation_action_id: int | None = Field(
        description="The remediation proposed for it, if any (see get_pra_action)."
    )
    telemetry: dict[str, Any]
    timeline: list[IncidentEventOut] = Field(default_factory=list)


def _incident_out(incident, with_timeline: bool) -> dict:
    return {
        "id": incident.pk,
        "agent": incident.agent.name,
        "cause": incident.cause,
        "title": incident.title,
        "severity": Severity(incident.severity).label,
        "status": incident.status,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "occurrences": incident.occurrences,
        "escalation_level": incident.escalation_level,
        "remediation_action_id": incident.remediation_id,
        "telemetry": incident.telemetry,
        "timeline": [
            {"at": e.at, "kind": e.kind, "message": e.message} for e in incident.events.all()
        ]
        if with_timeline
        else [],
    }


def _list_incidents(call: Call, include_resolved: bool, limit: int) -> list[dict]:
    require_view(call)
    qs = Incident.objects.select_related("agent").order_by("-severity", "-opened_at")
    if not include_resolved:
        qs = qs.filter(status__in=INCIDENT_OPEN)
    return [_incident_out(i, with_timeline=False) for i in qs[:limit]]


@tool(annotations=READ_ONLY)
async def list_incidents(
    include_resolved: Annotated[bool, Field(description="Also list resolved ones.")] = False,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
) -> list[IncidentOut]:
    """Incidents opened by the detection rules, most severe and newest first.

    Use get_incident for the timeline; diagnose the agent's host with the
    diagnostic tools before proposing a remediation.
    """
    return await run(_list_incidents, include_resolved, limit)


def _get_incident(call: Call, incident_id: int) -> dict:
    require_view(call)
    incident = Incident.objects.select_related("agent").filter(pk=incident_id).first()
    if incident is None:
        raise ToolError(f"No incident #{incident_id}. list_incidents shows the open ones.")
    call.subject = ("incidents.incident", str(incident.pk))
    return _incident_out(incident, with_timeline=True)


@tool(annotations=READ_ONLY)
async def get_incident(
    incident_id: Annotated[int, Field(ge=1, description="Incident id from list_incidents.")],
) -> IncidentOut:
    """One incident with its timeline: detection, decision, attempts, remediation, resolution."""
    return await run(_get_incident, incident_id)
