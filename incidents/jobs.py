"""RQ entry points for incidents. Thin: ids in, incidents.actions does the work."""

from __future__ import annotations

from incidents import actions


def decide(incident_id: int) -> str:
    decision = actions.act_on_incident(incident_id)
    return decision.action if decision else "nothing"


def decide_many(incident_ids: list[int]) -> dict:
    """One job per sweep batch (see ``actions.open_incidents``)."""
    return actions.decide_many(incident_ids)


def run_attempt(attempt_id: int) -> str:
    return actions.run_attempt(attempt_id)


def sweep() -> dict:
    """Every 30 s: missed heartbeats, attempts past their bound (health window, approval
    TTL, staging timeout, lost jobs), remediations that ended without a fix, due
    escalations; storms: held pages, digests, escalation, storms whose members all
    recovered."""
    from incidents import storms

    return {
        "missing": len(actions.mark_missing_agents()),
        **actions.sweep_attempts(),
        "handed_back": len(actions.hand_back_failed_remediations()),
        "escalated": actions.escalate_due(),
        **storms.sweep(),
    }


def prune() -> int:
    return actions.prune_samples()
