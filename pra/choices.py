"""States and enumerations of remediation actions."""

from django.db import models

from portal.choices import Impact
from portal.kinds import AUDIT_EVENTS, LIVE_EVENTS, NOTIFICATIONS

__all__ = ["Impact", "ActionStatus", "TRANSITIONS", "TERMINAL", "OPEN", "FailureCause"]


class ActionStatus(models.TextChoices):
    PROPOSED = "PROPOSED", "Proposed"
    APPROVED = "APPROVED", "Approved"
    # Approved, but it may only run inside a maintenance window (``pra.windows``):
    # released (-> APPROVED) at the window's opening, or EXPIRED/VOIDED with a reason.
    WAITING = "WAITING", "Approved, waiting for its window"
    REJECTED = "REJECTED", "Rejected"
    EXPIRED = "EXPIRED", "Expired"
    EXECUTING = "EXECUTING", "Executing"
    COMPLETED = "COMPLETED", "Completed"
    FAILED = "FAILED", "Failed"
    # Its approval no longer covers it (the host was edited, or the pre-flight failed
    # after approval): ended for good, ``void_reason`` says why; propose it again.
    VOIDED = "VOIDED", "Approval voided"


# The only moves a status may make. Everything else is a bug or a race lost.
TRANSITIONS: dict[str, set[str]] = {
    ActionStatus.PROPOSED: {
        ActionStatus.APPROVED,
        ActionStatus.WAITING,
        ActionStatus.REJECTED,
        ActionStatus.EXPIRED,
    },
    ActionStatus.WAITING: {
        ActionStatus.APPROVED,
        ActionStatus.EXPIRED,
        ActionStatus.VOIDED,
        ActionStatus.REJECTED,  # cancelled by an approver before its window
    },
    ActionStatus.APPROVED: {ActionStatus.EXECUTING, ActionStatus.EXPIRED, ActionStatus.VOIDED},
    ActionStatus.EXECUTING: {ActionStatus.COMPLETED, ActionStatus.FAILED},
}
TERMINAL = frozenset(
    {
        ActionStatus.REJECTED,
        ActionStatus.EXPIRED,
        ActionStatus.COMPLETED,
        ActionStatus.FAILED,
        ActionStatus.VOIDED,
    }
)
OPEN = frozenset(
    {ActionStatus.PROPOSED, ActionStatus.WAITING, ActionStatus.APPROVED, ActionStatus.EXECUTING}
)


class FailureCause(models.TextChoices):
    DENIED = "DENIED", "Denied by the target's wrapper"
    SUDO = "SUDO", "sudo / permission refused"
    COMMAND_ERROR = "COMMAND_ERROR", "Command failed on the target"
    UNREACHABLE = "UNREACHABLE", "SSH unreachable or timed out"
    HOST_KEY_MISMATCH = "HOST_KEY_MISMATCH", "Host key mismatch"
    TIMEOUT = "TIMEOUT", "Command timed out"
    WORKER_LOST = "WORKER_LOST", "Worker lost mid-run"
    CONFIG = "CONFIG", "Portal configuration error"


class Verification(models.TextChoices):
    PENDING = "PENDING", "Not checked yet"
    VERIFIED = "VERIFIED", "Verified"
    NOT_VERIFIED = "NOT_VERIFIED", "Not verified (escalate)"
    SKIPPED = "SKIPPED", "No probe"


# --- what this app adds to the portal's vocabularies (portal.kinds) -------------------


@AUDIT_EVENTS.register
class AuditEvents(models.TextChoices):
    """Audit event types of remediation (``AuditEvent.event_type``)."""

    HOST_ADDED = "HOST_ADDED", "Host added"
    HOST_KEY_PINNED = "HOST_KEY_PINNED", "Host key pinned"
    HOST_UPDATED = "HOST_UPDATED", "Host updated"
    HOST_KEY_MISMATCH = "HOST_KEY_MISMATCH", "Host key mismatch"
    DIAGNOSTIC_RUN = "DIAGNOSTIC_RUN", "Diagnostic run"
    PRA_PROPOSED = "PRA_PROPOSED", "Action proposed"
    PRA_PREFLIGHT = "PRA_PREFLIGHT", "Action pre-flight"
    PRA_APPROVED = "PRA_APPROVED", "Action approved"
    PRA_REJECTED = "PRA_REJECTED", "Action rejected"
    PRA_EXPIRED = "PRA_EXPIRED", "Action expired"
    PRA_VOIDED = "PRA_VOIDED", "Approval voided"
    PRA_EXECUTING = "PRA_EXECUTING", "Action executing"
    PRA_EXECUTED = "PRA_EXECUTED", "Action executed"
    PRA_FAILED = "PRA_FAILED", "Action failed"
    PRA_VERIFIED = "PRA_VERIFIED", "Action verified"
    PRA_NOT_VERIFIED = "PRA_NOT_VERIFIED", "Action not verified"
    PRA_REENQUEUED = "PRA_REENQUEUED", "Action re-enqueued"
    PRA_RELEASED = "PRA_RELEASED", "Action released in its maintenance window"
    WINDOW_CREATED = "WINDOW_CREATED", "Maintenance window created"
    WINDOW_UPDATED = "WINDOW_UPDATED", "Maintenance window changed"
    WINDOW_DELETED = "WINDOW_DELETED", "Maintenance window deleted"
    WINDOW_OPENED = "WINDOW_OPENED", "Maintenance window opened (pre-maintenance backups)"
    FREEZE_CREATED = "FREEZE_CREATED", "Change freeze created"
    FREEZE_UPDATED = "FREEZE_UPDATED", "Change freeze changed"
    FREEZE_DELETED = "FREEZE_DELETED", "Change freeze deleted"


@LIVE_EVENTS.register
class LiveEvents(models.TextChoices):
    """Live event kinds remediation publishes to dashboards."""

    PRA_ACTION = "pra.action", "Remediation action changed"
    PRA_OUTPUT = "pra.output", "Remediation output"


@NOTIFICATIONS.register
class Notifications(models.TextChoices):
    """Notification kinds of remediation; channels subscribe to kinds."""

    PRA_AWAITING_APPROVAL = "PRA_AWAITING_APPROVAL", "Remediation awaiting approval"
    PRA_FAILED = "PRA_FAILED", "Remediation failed"
    PRA_NOT_VERIFIED = "PRA_NOT_VERIFIED", "Remediation not verified"
