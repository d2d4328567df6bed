"""Enumerations shared across the portal."""

from django.db import models


class AuditEventType(models.TextChoices):
    """Every kind of event the audit log records. Add new kinds here only."""

    USER_CREATED = "USER_CREATED", "User created"
    USER_UPDATED = "USER_UPDATED", "User updated"
    TOKEN_CREATED = "TOKEN_CREATED", "API token created"
    TOKEN_REVOKED = "TOKEN_REVOKED", "API token revoked"
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
    APPROVAL_SIGNED = "APPROVAL_SIGNED", "Approval signature"
    APPROVAL_RULE_CHANGED = "APPROVAL_RULE_CHANGED", "Approval rule changed"
    MCP_TOOL_CALL = "MCP_TOOL_CALL", "MCP tool call"
    BACKUP_RUN_STARTED = "BACKUP_RUN_STARTED", "Backup started"
    BACKUP_RUN_SUCCEEDED = "BACKUP_RUN_SUCCEEDED", "Backup succeeded"
    BACKUP_RUN_FAILED = "BACKUP_RUN_FAILED", "Backup failed"
    BACKUP_VERIFIED = "BACKUP_VERIFIED", "Backup verified"
    BACKUP_VERIFY_FAILED = "BACKUP_VERIFY_FAILED", "Backup verification failed"
    BACKUP_DELETED = "BACKUP_DELETED", "Backup deleted (retention)"
    RESTORE_PLANNED = "RESTORE_PLANNED", "Restore planned"
    RESTORE_APPROVED = "RESTORE_APPROVED", "Restore approved"
    RESTORE_REJECTED = "RESTORE_REJECTED", "Restore rejected"
    RESTORE_EXPIRED = "RESTORE_EXPIRED", "Restore expired"
    RESTORE_STARTED = "RESTORE_STARTED", "Restore started"
    RESTORE_SUCCEEDED = "RESTORE_SUCCEEDED", "Restore succeeded"
    RESTORE_FAILED = "RESTORE_FAILED", "Restore failed"
    SAFETY_BACKUP = "SAFETY_BACKUP", "Safety backup before a restore"
    RESTORE_TARGET_CREATED = "RESTORE_TARGET_CREATED", "Restore target registered"
    RESTORE_TARGET_UPDATED = "RESTORE_TARGET_UPDATED", "Restore target changed"
    BACKUP_VERIFY_REQUESTED = "BACKUP_VERIFY_REQUESTED", "Backup re-verification requested"
    BACKUP_ACCEPTED = "BACKUP_ACCEPTED", "Suspiciously small backup accepted"
    BACKUP_DRILL_STARTED = "BACKUP_DRILL_STARTED", "Restore drill started"
    BACKUP_DRILL_SUCCEEDED = "BACKUP_DRILL_SUCCEEDED", "Restore drill succeeded"
    BACKUP_DRILL_FAILED = "BACKUP_DRILL_FAILED", "Restore drill failed or over its RTO target"
    DISK_SPACE_ALERT = "DISK_SPACE_ALERT", "Disk space alert"
    AGENT_CREATED = "AGENT_CREATED", "Agent created"
    AGENT_SECRET_ROTATED = "AGENT_SECRET_ROTATED", "Agent secret rotated"
    INCIDENT_OPENED = "INCIDENT_OPENED", "Incident opened"
    INCIDENT_ACKNOWLEDGED = "INCIDENT_ACKNOWLEDGED", "Incident acknowledged"
    INCIDENT_ESCALATED = "INCIDENT_ESCALATED", "Incident escalated"
    INCIDENT_RESOLVED = "INCIDENT_RESOLVED", "Incident resolved"
    DECISION_MADE = "DECISION_MADE", "Decision made"
    AUTOPATCH_CHANGED = "AUTOPATCH_CHANGED", "Auto-patch attempt changed"
    AGENT_COMMAND_SENT = "AGENT_COMMAND_SENT", "Agent command sent"
    AGENT_COMMAND_DONE = "AGENT_COMMAND_DONE", "Agent command finished"
    POLICY_CHANGED = "POLICY_CHANGED", "Ops policy changed"
    NOTIFICATION_FAILED = "NOTIFICATION_FAILED", "Notification failed"
    NOTIFICATION_RETRIED = "NOTIFICATION_RETRIED", "Notification retried"
    NOTIFICATION_TEST = "NOTIFICATION_TEST", "Test notification sent"
    NOTIFICATION_CONFIG_CHANGED = "NOTIFICATION_CONFIG_CHANGED", "Notification settings changed"


class Impact(models.TextChoices):
    """How much harm a request can do; decides its approval rule."""

    LOW = "LOW", "Low"
    MEDIUM = "MEDIUM", "Medium"
    HIGH = "HIGH", "High"


class LiveEventKind(models.TextChoices):
    """Kinds of live events pushed to dashboards."""

    PING = "ping", "Ping"
    PRA_ACTION = "pra.action", "Remediation action changed"
    PRA_OUTPUT = "pra.output", "Remediation output"
    INCIDENT = "incident", "Incident changed"
    BACKUP_RUN = "backup.run", "Backup run changed"


class NotificationKind(models.TextChoices):
    """What a notification is about; channels subscribe to kinds (none listed = all)."""

    INCIDENT_OPENED = "INCIDENT_OPENED", "Incident opened"
    INCIDENT_ESCALATED = "INCIDENT_ESCALATED", "Incident escalated"
    INCIDENT_RESOLVED = "INCIDENT_RESOLVED", "Incident resolved"
    INCIDENT_DIGEST = "INCIDENT_DIGEST", "Incident storm digest"
    AUTOPATCH_ROLLED_BACK = "AUTOPATCH_ROLLED_BACK", "Auto-patch rolled back"
    PATCH_AWAITING_APPROVAL = "PATCH_AWAITING_APPROVAL", "Patch awaiting approval"
    PRA_AWAITING_APPROVAL = "PRA_AWAITING_APPROVAL", "Remediation awaiting approval"
    PRA_FAILED = "PRA_FAILED", "Remediation failed"
    PRA_NOT_VERIFIED = "PRA_NOT_VERIFIED", "Remediation not verified"
    BACKUP_FAILED = "BACKUP_FAILED", "Backup failed"
    BACKUP_STALE = "BACKUP_STALE", "No fresh backup"
    BACKUP_MISSED = "BACKUP_MISSED", "Backup slot missed"
    DISK_SPACE = "DISK_SPACE", "Disk space"
    TEST = "TEST", "Test notification"


class NotificationSeverity(models.TextChoices):
    """Ordered (see ``SEVERITY_RANK``): a channel gets what is at least its minimum."""

    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


SEVERITY_RANK: dict[str, int] = {
    NotificationSeverity.INFO: 0,
    NotificationSeverity.WARNING: 1,
    NotificationSeverity.CRITICAL: 2,
}


class ChannelKind(models.TextChoices):
    WEBHOOK = "WEBHOOK", "Generic webhook (JSON)"
    SLACK = "SLACK", "Slack incoming webhook"
    EMAIL = "EMAIL", "Email"


class NotificationStatus(models.TextChoices):
    """PENDING -> SENT | FAILED (after the last retry); FAILED -> PENDING on a manual retry."""

    PENDING = "PENDING", "Pending"
    SENT = "SENT", "Sent"
    FAILED = "FAILED", "Failed"
