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
    HOST_KEY_MISMATCH = "HOST_KEY_MISMATCH", "Host key mismatch"
    DIAGNOSTIC_RUN = "DIAGNOSTIC_RUN", "Diagnostic run"
    PRA_PROPOSED = "PRA_PROPOSED", "Action proposed"
    PRA_PREFLIGHT = "PRA_PREFLIGHT", "Action pre-flight"
    PRA_APPROVED = "PRA_APPROVED", "Action approved"
    PRA_REJECTED = "PRA_REJECTED", "Action rejected"
    PRA_EXPIRED = "PRA_EXPIRED", "Action expired"
    PRA_EXECUTING = "PRA_EXECUTING", "Action executing"
    PRA_EXECUTED = "PRA_EXECUTED", "Action executed"
    PRA_FAILED = "PRA_FAILED", "Action failed"
    PRA_VERIFIED = "PRA_VERIFIED", "Action verified"
    PRA_NOT_VERIFIED = "PRA_NOT_VERIFIED", "Action not verified"
    PRA_REENQUEUED = "PRA_REENQUEUED", "Action re-enqueued"
    APPROVAL_SIGNED = "APPROVAL_SIGNED", "Approval signature"
    APPROVAL_RULE_CHANGED = "APPROVAL_RULE_CHANGED", "Approval rule changed"
    MCP_TOOL_CALL = "MCP_TOOL_CALL", "MCP tool call"


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
