"""States and enumerations of remediation actions."""

from django.db import models

from portal.choices import Impact

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
