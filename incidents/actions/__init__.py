"""Every write to incident state. The API, admin, jobs and the agent path call these.

Status moves are compare-and-swap updates; audit rows go in the same
transaction; live events, notifications and jobs go out on commit.
"""

from __future__ import annotations

from incidents.actions.agents import create_agent, rotate_agent_secret, send_command
from incidents.actions.autopatch import (
    REQUEUE_AFTER,
    STAGING_GRACE,
    approve_attempt,
    cancel_pending_attempts,
    expire_attempts,
    expire_pending_attempts,
    fail_stuck_staging,
    finish_command,
    hand_back_failed_remediations,
    reject_attempt,
    requeue_ready_attempts,
    roll_back,
    run_attempt,
    sweep_attempts,
)
from incidents.actions.common import (
    DECIDE_BATCH_BUDGET,
    DECIDE_BATCH_TIMEOUT,
    SYSTEM,
    IncidentError,
    policy_verdict,
)
from incidents.actions.config import (
    AGENT_EDITABLE,
    GROUPING_EDITABLE,
    POLICY_EDITABLE,
    RULE_EDITABLE,
    PolicyUpdate,
    create_grouping_rule,
    create_rule,
    set_kill_switch,
    update_agent,
    update_grouping_rule,
    update_policy,
    update_rule,
)
from incidents.actions.decisions import NO_HOST, act_on_incident, decide_many, record_decision
from incidents.actions.heartbeats import ingest_heartbeat, mark_missing_agents, prune_samples
from incidents.actions.lifecycle import (
    SEVERITY_LEVEL,
    acknowledge_incident,
    escalate_due,
    open_incidents,
    open_or_update_incident,
    page_now,
    resolve_incident,
)

__all__ = [
    "AGENT_EDITABLE",
    "GROUPING_EDITABLE",
    "POLICY_EDITABLE",
    "PolicyUpdate",
    "RULE_EDITABLE",
    "create_grouping_rule",
    "create_rule",
    "update_agent",
    "update_grouping_rule",
    "update_policy",
    "update_rule",
    "DECIDE_BATCH_BUDGET",
    "DECIDE_BATCH_TIMEOUT",
    "IncidentError",
    "NO_HOST",
    "REQUEUE_AFTER",
    "SEVERITY_LEVEL",
    "STAGING_GRACE",
    "SYSTEM",
    "acknowledge_incident",
    "act_on_incident",
    "approve_attempt",
    "cancel_pending_attempts",
    "create_agent",
    "decide_many",
    "escalate_due",
    "expire_attempts",
    "expire_pending_attempts",
    "fail_stuck_staging",
    "finish_command",
    "hand_back_failed_remediations",
    "ingest_heartbeat",
    "mark_missing_agents",
    "open_incidents",
    "open_or_update_incident",
    "page_now",
    "policy_verdict",
    "prune_samples",
    "record_decision",
    "reject_attempt",
    "requeue_ready_attempts",
    "resolve_incident",
    "roll_back",
    "rotate_agent_secret",
    "run_attempt",
    "send_command",
    "set_kill_switch",
    "sweep_attempts",
]
