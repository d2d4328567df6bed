"""Every write to remediation state. Admin, API, MCP, commands and jobs call these.

Status moves are compare-and-swap updates (``_move``): whoever loses a race
changes nothing. Audit events are written in the same transaction; live
events and jobs go out only on commit.
"""

from __future__ import annotations

from pra.actions.approval import approve_action, expire_action, reject_action, request_execution
from pra.actions.common import (
    DENIED_EXIT,
    ENQUEUE_GUARD_SECONDS,
    EXECUTE_PERMISSION,
    PROPOSE_PERMISSION,
    VOIDED_EVENT,
    ActionError,
    execution_job_id,
    preflight_job_id,
)
from pra.actions.diagnostics import (
    DIAGNOSE_PERMISSION,
    connectivity_ports,
    run_diagnostic,
)
from pra.actions.execution import (
    OUTPUT_SIZE_EVERY,
    claim_action,
    classify,
    finish_execution,
    heartbeat,
    publish_output,
    record_verification,
    still_running,
)
from pra.actions.hosts import HOST_EDITABLE, add_host, pin_host_key, update_host
from pra.actions.preflight import (
    reconcile_preflights,
    record_preflight,
    rerun_preflight,
)
from pra.actions.proposal import (
    MIN_RATIONALE,
    Proposal,
    Proposer,
    propose_action,
    submit_proposal,
    validate_emergency,
    validate_proposal,
)
from pra.actions.sweeps import expire_due, reap_lost_runs, reconcile_approved, release_waiting

__all__ = [
    "ActionError",
    "DENIED_EXIT",
    "DIAGNOSE_PERMISSION",
    "ENQUEUE_GUARD_SECONDS",
    "EXECUTE_PERMISSION",
    "HOST_EDITABLE",
    "MIN_RATIONALE",
    "OUTPUT_SIZE_EVERY",
    "PROPOSE_PERMISSION",
    "Proposal",
    "Proposer",
    "VOIDED_EVENT",
    "add_host",
    "approve_action",
    "claim_action",
    "classify",
    "connectivity_ports",
    "execution_job_id",
    "expire_action",
    "expire_due",
    "finish_execution",
    "heartbeat",
    "pin_host_key",
    "preflight_job_id",
    "propose_action",
    "publish_output",
    "reap_lost_runs",
    "reconcile_approved",
    "reconcile_preflights",
    "record_preflight",
    "record_verification",
    "reject_action",
    "release_waiting",
    "request_execution",
    "rerun_preflight",
    "run_diagnostic",
    "still_running",
    "submit_proposal",
    "update_host",
    "validate_emergency",
    "validate_proposal",
]
