"""Enumerations shared across the portal, and the portal's own kinds (``portal.kinds``)."""

from django.db import models

from portal.kinds import AUDIT_EVENTS, LIVE_EVENTS, NOTIFICATIONS

# Every app's audit event types, live event kinds and notification kinds: registries
# (``portal.kinds``) each app adds its own to from its ``choices.py``; they read like
# the enumerations they replace (``AuditEventType.PRA_PROPOSED``, ``NotificationKind(v)``).
AuditEventType = AUDIT_EVENTS
LiveEventKind = LIVE_EVENTS
NotificationKind = NOTIFICATIONS


@AUDIT_EVENTS.register
class AuditEvents(models.TextChoices):
    """Audit event types of the portal itself (``AuditEvent.event_type``)."""

    USER_CREATED = "USER_CREATED", "User created"
    USER_UPDATED = "USER_UPDATED", "User updated"
    TOKEN_CREATED = "TOKEN_CREATED", "API token created"
    TOKEN_REVOKED = "TOKEN_REVOKED", "API token revoked"
    APPROVAL_SIGNED = "APPROVAL_SIGNED", "Approval signature"
    APPROVAL_RULE_CHANGED = "APPROVAL_RULE_CHANGED", "Approval rule changed"
    MCP_TOOL_CALL = "MCP_TOOL_CALL", "MCP tool call"
    NOTIFICATION_FAILED = "NOTIFICATION_FAILED", "Notification failed"
    NOTIFICATION_RETRIED = "NOTIFICATION_RETRIED", "Notification retried"
    NOTIFICATION_TEST = "NOTIFICATION_TEST", "Test notification sent"
    NOTIFICATION_CONFIG_CHANGED = "NOTIFICATION_CONFIG_CHANGED", "Notification settings changed"


@LIVE_EVENTS.register
class LiveEvents(models.TextChoices):
    """Live event kinds the portal itself publishes to dashboards."""

    PING = "ping", "Ping"


@NOTIFICATIONS.register
class Notifications(models.TextChoices):
    """Notification kinds of the portal itself; channels subscribe to kinds."""

    TEST = "TEST", "Test notification"


class Impact(models.TextChoices):
    """How much harm a request can do; decides its approval rule."""

    LOW = "LOW", "Low"
    MEDIUM = "MEDIUM", "Medium"
    HIGH = "HIGH", "High"


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
