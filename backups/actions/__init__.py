"""Every write to backup and restore state. Admin, commands and jobs call these.

Status moves are compare-and-swap updates (``_move_run``, ``_move_restore``):
whoever loses a race changes nothing. Audit events are written in the same
transaction; live events and jobs go out only on commit.
"""

from __future__ import annotations

from backups.actions.common import (
    ALERT_STDERR_LINES,
    MISSED_COUNTED,
    MISSED_LISTED,
    PLAN_PERMISSION,
    RESTORE_JOB,
    RUN_JOB,
    RUN_PERMISSION,
    VERIFY_JOB,
    BackupError,
    job_alive,
    notify_failure,
    restore_job_id,
    run_event,
    run_job_id,
)
from backups.actions.config import SOURCE_EDITABLE, create_source, update_source
from backups.actions.disk import record_disk_usage
from backups.actions.drills import (
    DRILL_JOB,
    claim_drill,
    drill_job_id,
    finish_drill,
    last_good_drill,
    reap_lost_drills,
    request_drill,
    schedule_drills,
)
from backups.actions.prune import RetentionResult, apply_retention, record_copy
from backups.actions.restores import (
    approve_restore,
    claim_restore,
    create_safety_run,
    expire_restores,
    finish_restore,
    plan_restore,
    record_safety_backup,
    reject_restore,
    set_restore_phase,
)
from backups.actions.runs import (
    check_freshness,
    claim_run,
    finish_run,
    previous_good,
    report_progress,
    request_run,
)
from backups.actions.schedule import reap_lost_runs, reconcile_queued, report_missed, schedule_due
from backups.actions.verification import (
    ACCEPT_PERMISSIONS,
    RESERVATION_SECONDS,
    VerificationRequest,
    accept_backup,
    record_verification,
    request_verification,
    verify_job_id,
)

__all__ = [
    "ACCEPT_PERMISSIONS",
    "ALERT_STDERR_LINES",
    "BackupError",
    "DRILL_JOB",
    "MISSED_COUNTED",
    "MISSED_LISTED",
    "PLAN_PERMISSION",
    "RESERVATION_SECONDS",
    "RESTORE_JOB",
    "RUN_JOB",
    "RUN_PERMISSION",
    "SOURCE_EDITABLE",
    "RetentionResult",
    "VERIFY_JOB",
    "VerificationRequest",
    "accept_backup",
    "apply_retention",
    "approve_restore",
    "check_freshness",
    "claim_drill",
    "claim_restore",
    "claim_run",
    "create_safety_run",
    "create_source",
    "drill_job_id",
    "expire_restores",
    "finish_drill",
    "finish_restore",
    "finish_run",
    "job_alive",
    "last_good_drill",
    "notify_failure",
    "plan_restore",
    "previous_good",
    "reap_lost_drills",
    "reap_lost_runs",
    "reconcile_queued",
    "record_copy",
    "record_disk_usage",
    "record_safety_backup",
    "record_verification",
    "reject_restore",
    "report_missed",
    "report_progress",
    "request_drill",
    "request_run",
    "request_verification",
    "restore_job_id",
    "run_event",
    "run_job_id",
    "schedule_drills",
    "schedule_due",
    "set_restore_phase",
    "update_source",
    "verify_job_id",
]
