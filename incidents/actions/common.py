"""Shared pieces of the incident actions: the error class, job enqueueing on commit,
timeline events, live announcements and the decision helpers used by several topics."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from incidents.choices import (
    Outcome,
    Severity,
)
from incidents.models import (
    Agent,
    Decision,
    Incident,
    IncidentEvent,
    OpsPolicy,
)
from portal.audit import Actor
from portal.choices import LiveEventKind
from portal.errors import RequestRefused
from portal.lib import jobs
from portal.live import LiveEvent, publish

logger = logging.getLogger("incidents.actions")


SYSTEM = Actor.system("incidents")


class IncidentError(RequestRefused):
    """A refused incident request."""


def _job(
    func_path: str,
    *args: jobs.JobArg,
    job_id: str,
    queue: str = "default",
    job_timeout: int | None = None,
) -> None:
    jobs.enqueue_on_commit(func_path, *args, queue=queue, job_id=job_id, job_timeout=job_timeout)


def _event(incident: Incident, kind: str, message: str, **data: Any) -> None:
    IncidentEvent.objects.create(
        incident=incident, at=timezone.now(), kind=kind, message=message[:500], data=data
    )


def _announce(incident: Incident, summary: str, *, dashboard: bool = True) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.INCIDENT,
            subject_type="incidents.incident",
            subject_id=str(incident.pk),
            status=incident.status,
            summary=summary[:300],
            data={
                "agent": incident.agent.name,
                "severity": incident.severity,
                "severity_label": Severity(incident.severity).label,
                "cause": incident.cause,
                "title": incident.title,
            },
        ),
        dashboard=dashboard,
    )


# A batch job decides one incident after the other: it stops in time and leaves the rest
# to a follow-up job (each may wait DECIDER_TIMEOUT on the decision service).
DECIDE_BATCH_TIMEOUT = 600


DECIDE_BATCH_BUDGET = 300


def _decision_outcome(decision: Decision, outcome: str, detail: str) -> None:
    Decision.objects.filter(pk=decision.pk, outcome=Outcome.PENDING).update(
        outcome=outcome, outcome_detail=detail[:300]
    )


def policy_verdict(policy: OpsPolicy, agent: Agent, severity: int) -> tuple[str, str]:
    """("auto" | "approval" | "refused", why) for an automatic patch of ``agent``."""
    if not policy.auto_remediation_enabled:
        return "refused", "auto-remediation is switched off (kill switch)"
    if not policy.whitelist.filter(pk=agent.pk).exists():
        return "refused", f"{agent.name} is not on the auto-remediation whitelist"
    if policy.canary_percent < 100 and agent.pk % 100 >= policy.canary_percent:
        return "refused", f"{agent.name} is outside the {policy.canary_percent}% canary"
    if severity >= policy.multisig_min_severity:
        return "approval", f"severity {Severity(severity).label} needs signatures"
    if severity > policy.max_auto_severity:
        return "refused", (
            f"severity {Severity(severity).label} is above the automatic maximum "
            f"({Severity(policy.max_auto_severity).label})"
        )
    return "auto", "within policy"
