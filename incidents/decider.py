"""Choose what to do about an incident: ask the decision service, else use heuristics.

The decision service (``DECIDER_URL``) gets the incident as JSON and answers
``{"action", "patch_version", "confidence", "explanation"}``. When it is not
configured, down, slow (``DECIDER_TIMEOUT_MS``) or answers nonsense, the
heuristics below decide, and the decision records why.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from pydantic import BaseModel, Field, ValidationError

from incidents.choices import DecisionAction, DecisionSource, RuleKind
from incidents.models import Incident
from pra.catalog import CATALOG

logger = logging.getLogger(__name__)


class DeciderAnswer(BaseModel):
    action: DecisionAction
    patch_version: str = Field(default="", max_length=40, pattern=r"^[A-Za-z0-9_.+-]*$")
    confidence: float = Field(ge=0.0, le=1.0)
    explanation: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class Choice:
    source: str
    action: str
    patch_version: str
    confidence: float
    explanation: str
    fallback_reason: str = ""


def _payload(incident: Incident) -> dict:
    agent = incident.agent
    return {
        "incident": incident.pk,
        "cause": incident.cause,
        "severity": incident.severity,
        "title": incident.title,
        "occurrences": incident.occurrences,
        "telemetry": incident.telemetry,
        "agent": {
            "name": agent.name,
            "kind": agent.kind,
            "environment": agent.environment,
            "version": agent.version,
            "available_version": agent.available_version,
        },
    }


def ask_service(incident: Incident) -> Choice:
    """Raise ``RuntimeError`` with a short reason when the service cannot be used."""
    request = urllib.request.Request(
        settings.DECIDER_URL,
        data=json.dumps(_payload(incident)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.DECIDER_TIMEOUT) as response:
            raw = response.read(64 * 1024)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"decider unreachable: {getattr(exc, 'reason', exc)}") from None
    try:
        answer = DeciderAnswer.model_validate_json(raw)
    except ValidationError as exc:
        raise RuntimeError(
            f"decider answer rejected: {exc.error_count()} invalid field(s)"
        ) from None
    return Choice(
        source=DecisionSource.DECIDER,
        action=answer.action,
        patch_version=answer.patch_version,
        confidence=answer.confidence,
        explanation=answer.explanation,
    )


def heuristics(incident: Incident, reason: str = "") -> Choice:
    """Simple, explainable rules of thumb."""
    agent = incident.agent
    kind = incident.rule.kind if incident.rule else ""

    def choice(action, explanation, version="", confidence=0.6):
        return Choice(DecisionSource.HEURISTIC, action, version, confidence, explanation, reason)

    if incident.cause.startswith("service:"):
        unit = incident.cause.split(":", 1)[1]
        if agent.host_id and f"restart_{unit}" in CATALOG:
            return choice(
                DecisionAction.REMEDIATE,
                f"{unit} is down on {agent.host}; restart_{unit} is in the catalog.",
                confidence=0.8,
            )
        return choice(DecisionAction.ESCALATE, f"{unit} is down and no catalog action fits.")
    if kind in (RuleKind.WEBHOOK_FAILURE, RuleKind.ERROR_SPIKE):
        if agent.available_version and agent.available_version != agent.version:
            return choice(
                DecisionAction.PATCH,
                f"Failures on {agent.version or 'unknown version'}; {agent.available_version} "
                "is the known-good version.",
                version=agent.available_version,
                confidence=0.7,
            )
        return choice(DecisionAction.ESCALATE, "Failures and no other known-good version.")
    if kind == RuleKind.METRIC_THRESHOLD and incident.cause == "disk" and agent.host_id:
        return choice(
            DecisionAction.REMEDIATE, "Disk filling up: rotate logs on the host.", confidence=0.6
        )
    return choice(DecisionAction.ESCALATE, "No safe automatic fix known; a person decides.")


def decide(incident: Incident) -> Choice:
    if not settings.DECIDER_URL:
        return heuristics(incident, "no decision service configured")
    try:
        return ask_service(incident)
    except RuntimeError as exc:
        return heuristics(incident, str(exc))
    except Exception as exc:  # noqa: BLE001 - any surprise from the service path falls back
        logger.exception("decision service call failed for incident %s", incident.pk)
        return heuristics(incident, f"decider error: {exc.__class__.__name__}")
