"""The decider's verdicts: recording a decision and carrying it out under the ops policy."""

from __future__ import annotations

from django.db import transaction

from incidents import decider
from incidents.actions.autopatch import _start_patch
from incidents.actions.common import (
    DECIDE_BATCH_BUDGET,
    DECIDE_BATCH_TIMEOUT,
    _announce,
    _decision_outcome,
    _event,
    _job,
    logger,
)
from incidents.actions.lifecycle import _move_incident
from incidents.choices import (
    INCIDENT_OPEN,
    DecisionAction,
    DecisionSource,
    IncidentStatus,
    Outcome,
)
from incidents.models import (
    Decision,
    Incident,
)
from portal.audit import Actor, record
from portal.choices import AuditEventType


def decide_many(incident_ids: list[int], budget: float = DECIDE_BATCH_BUDGET) -> dict[str, int]:
    """Decide each incident of a batch (``act_on_incident``), skipping those decided already,
    so running a batch twice (a retry, a follow-up) never decides one twice. Past
    ``budget`` seconds the rest goes to a follow-up job."""
    import time

    started = time.monotonic()
    decided_already = set(
        Decision.objects.filter(incident_id__in=incident_ids).values_list("incident_id", flat=True)
    )
    done = skipped = 0
    for position, incident_id in enumerate(incident_ids):
        if time.monotonic() - started > budget:
            rest = incident_ids[position:]
            with transaction.atomic():
                _job("incidents.jobs.decide_many", rest,
                     job_id=f"incident-decide-batch-{rest[0]}-{rest[-1]}",
                     job_timeout=DECIDE_BATCH_TIMEOUT)  # fmt: skip
            return {"decided": done, "skipped": skipped, "deferred": len(rest)}
        if incident_id in decided_already:
            skipped += 1
            continue
        if act_on_incident(incident_id) is not None:
            done += 1
        else:
            skipped += 1
    return {"decided": done, "skipped": skipped, "deferred": 0}


def record_decision(incident: Incident, choice: decider.Choice) -> Decision:
    decision = Decision.objects.create(
        incident=incident,
        source=choice.source,
        action=choice.action,
        patch_version=choice.patch_version,
        confidence=choice.confidence,
        explanation=choice.explanation[:2000],
        fallback_reason=choice.fallback_reason[:200],
    )
    via = choice.source.lower() + (f" ({choice.fallback_reason})" if choice.fallback_reason else "")
    _event(
        incident,
        "DECISION",
        f"{choice.action} via {via}: {choice.explanation}",
        decision=decision.pk,
        confidence=choice.confidence,
    )
    record(
        AuditEventType.DECISION_MADE,
        actor=Actor.system("decider"),
        subject=incident,
        details={
            "decision": decision.pk,
            "source": choice.source,
            "action": choice.action,
            "patch_version": choice.patch_version,
            "confidence": choice.confidence,
            "fallback_reason": choice.fallback_reason,
        },
    )
    return decision


def act_on_incident(incident_id: int) -> Decision | None:
    """Decide (service or heuristics) and act within policy. Called by a job.

    The decision is always recorded: if carrying it out fails in a way nobody planned
    for, that part is rolled back alone (a savepoint), the decision says so and the
    incident stays with people (escalation goes on), instead of the job crashing and
    taking the decision with it.
    """
    incident = Incident.objects.select_related("agent", "rule").filter(pk=incident_id).first()
    if incident is None or incident.status not in INCIDENT_OPEN:
        return None
    try:
        choice = decider.decide(incident)
    except Exception as exc:  # noqa: BLE001 - a bug in the heuristics must not lose the incident
        logger.exception("deciding incident %s failed", incident_id)
        choice = decider.Choice(
            source=DecisionSource.HEURISTIC,
            action=DecisionAction.ESCALATE,
            patch_version="",
            confidence=0.0,
            explanation="No decision could be made; a person decides.",
            fallback_reason=f"decision error: {exc.__class__.__name__}",
        )
    with transaction.atomic():
        decision = record_decision(incident, choice)
        try:
            with transaction.atomic():
                _carry_out(incident, decision, choice)
        except Exception as exc:  # noqa: BLE001 - recorded and shown, see the docstring
            logger.exception("carrying out decision %s failed", decision.pk)
            why = (
                f"escalated: carrying out {choice.action} failed unexpectedly "
                f"({exc.__class__.__name__}); a person decides"
            )
            _decision_outcome(decision, Outcome.SKIPPED, why)
            _event(incident, "DECISION", why, decision=decision.pk)
            _announce(incident, why)
    return decision


def _carry_out(incident: Incident, decision: Decision, choice: decider.Choice) -> None:
    if choice.action == DecisionAction.PATCH and choice.patch_version:
        _start_patch(incident, decision)
    elif choice.action == DecisionAction.REMEDIATE:
        _propose_remediation(incident, decision)
    else:
        _decision_outcome(decision, Outcome.SKIPPED, "escalated to people")


NO_HOST = "decider asked for a host remediation but the agent has no host"


def _propose_remediation(incident: Incident, decision: Decision) -> None:
    from pra.actions import ActionError, Proposer, propose_action

    agent = incident.agent
    if agent.host_id is None:
        # A decision service may ask for this whatever the agent is: an escalation, recorded.
        _decision_outcome(decision, Outcome.SKIPPED, f"escalated: {NO_HOST}")
        _event(incident, "REMEDIATION", f"no remediation proposed: {NO_HOST}; a person decides")
        return
    action = (
        f"restart_{incident.cause.split(':', 1)[1]}"
        if incident.cause.startswith("service:")
        else "rotate_logs"
    )
    try:
        with transaction.atomic():
            pra_action = propose_action(
                action=action,
                host=agent.host,
                params={},
                rationale=(
                    f"Incident #{incident.pk} on {agent.name}: {incident.title}. "
                    f"Decision: {decision.explanation}"
                ),
                by=Proposer.rule(incident.cause),
            )
    except ActionError as exc:
        _decision_outcome(decision, Outcome.SKIPPED, f"remediation refused: {exc.message}")
        _event(incident, "REMEDIATION", f"could not propose {action}: {exc.message}")
        return
    Incident.objects.filter(pk=incident.pk).update(remediation=pra_action)
    _move_incident(incident, IncidentStatus.MITIGATING)
    _event(incident, "REMEDIATION", f"proposed {action} on {agent.host} (#{pra_action.pk})",
           action=pra_action.pk)  # fmt: skip
