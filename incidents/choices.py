"""States and enumerations of the incidents app."""

from django.db import models

from portal.kinds import AUDIT_EVENTS, LIVE_EVENTS, NOTIFICATIONS


class Severity(models.IntegerChoices):
    """Ordered: policy compares severities (max for automatic action, multi-signature level)."""

    LOW = 1, "Low"
    MEDIUM = 2, "Medium"
    HIGH = 3, "High"
    CRITICAL = 4, "Critical"


class IncidentStatus(models.TextChoices):
    OPEN = "OPEN", "Open"
    ACKNOWLEDGED = "ACKNOWLEDGED", "Acknowledged"
    MITIGATING = "MITIGATING", "Mitigating"
    RESOLVED = "RESOLVED", "Resolved"


INCIDENT_TRANSITIONS: dict[str, set[str]] = {
    IncidentStatus.OPEN: {
        IncidentStatus.ACKNOWLEDGED,
        IncidentStatus.MITIGATING,
        IncidentStatus.RESOLVED,
    },
    IncidentStatus.ACKNOWLEDGED: {IncidentStatus.MITIGATING, IncidentStatus.RESOLVED},
    # Back to OPEN (escalation resumes) when the automatic fix ended without fixing it.
    IncidentStatus.MITIGATING: {
        IncidentStatus.OPEN,
        IncidentStatus.ACKNOWLEDGED,
        IncidentStatus.RESOLVED,
    },
}
INCIDENT_OPEN = frozenset(
    {IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED, IncidentStatus.MITIGATING}
)


class RuleKind(models.TextChoices):
    ERROR_SPIKE = "ERROR_SPIKE", "Error spike (errors in the last 24 h)"
    WEBHOOK_FAILURE = "WEBHOOK_FAILURE", "Webhook failure rate"
    MISSED_HEARTBEAT = "MISSED_HEARTBEAT", "Missed heartbeat"
    METRIC_THRESHOLD = "METRIC_THRESHOLD", "Metric threshold"
    SERVICE_DOWN = "SERVICE_DOWN", "Service reported down"


class DecisionAction(models.TextChoices):
    PATCH = "PATCH", "Apply a patch (update)"
    ROLLBACK = "ROLLBACK", "Roll back"
    REMEDIATE = "REMEDIATE", "Host remediation (PRA)"
    ESCALATE = "ESCALATE", "Escalate to a person"
    NONE = "NONE", "Nothing to do"


class DecisionSource(models.TextChoices):
    DECIDER = "DECIDER", "Decision service"
    HEURISTIC = "HEURISTIC", "Heuristics"


class Outcome(models.TextChoices):
    PENDING = "PENDING", "Pending"
    SUCCESS = "SUCCESS", "Success"
    FAILURE = "FAILURE", "Failure"
    SKIPPED = "SKIPPED", "Not carried out"


class AttemptStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    STAGING = "STAGING", "Staging smoke test"
    APPLYING = "APPLYING", "Applying"
    HEALTH_CHECK = "HEALTH_CHECK", "Health check"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    ROLLED_BACK = "ROLLED_BACK", "Rolled back"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"
    REJECTED = "REJECTED", "Rejected by an approver"
    EXPIRED = "EXPIRED", "Expired (not approved or started in time)"


# Every non-terminal state has a bounded exit swept by ``incidents.jobs.sweep``:
# PENDING → EXPIRED after AUTOPATCH_APPROVAL_TTL; STAGING → FAILED after
# STAGING_TIMEOUT + a grace; APPLYING/HEALTH_CHECK → ROLLED_BACK at the deadline.
ATTEMPT_TRANSITIONS: dict[str, set[str]] = {
    AttemptStatus.PENDING: {
        AttemptStatus.STAGING,
        AttemptStatus.CANCELLED,
        AttemptStatus.FAILED,
        AttemptStatus.REJECTED,
        AttemptStatus.EXPIRED,
    },
    AttemptStatus.STAGING: {AttemptStatus.APPLYING, AttemptStatus.FAILED, AttemptStatus.CANCELLED},
    AttemptStatus.APPLYING: {
        AttemptStatus.HEALTH_CHECK,
        AttemptStatus.ROLLED_BACK,
        AttemptStatus.FAILED,
    },
    AttemptStatus.HEALTH_CHECK: {AttemptStatus.SUCCEEDED, AttemptStatus.ROLLED_BACK},
}
ATTEMPT_TERMINAL = frozenset(
    {
        AttemptStatus.SUCCEEDED,
        AttemptStatus.ROLLED_BACK,
        AttemptStatus.FAILED,
        AttemptStatus.CANCELLED,
        AttemptStatus.REJECTED,
        AttemptStatus.EXPIRED,
    }
)
# Turning the kill switch off cancels attempts that have not reached APPLYING.
ATTEMPT_CANCELLABLE = frozenset({AttemptStatus.PENDING, AttemptStatus.STAGING})


class CommandKind(models.TextChoices):
    UPDATE = "update", "Update to a version"
    ROLLBACK = "rollback", "Roll back to a version"
    CONFIG = "config", "Apply configuration"


class CommandStatus(models.TextChoices):
    PENDING = "PENDING", "Waiting for the agent"
    DELIVERED = "DELIVERED", "Delivered"
    ACKED = "ACKED", "Done"
    FAILED = "FAILED", "Failed on the agent"


# --- what this app adds to the portal's vocabularies (portal.kinds) -------------------


@AUDIT_EVENTS.register
class AuditEvents(models.TextChoices):
    """Audit event types of incidents (``AuditEvent.event_type``)."""

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
    AGENT_UPDATED = "AGENT_UPDATED", "Agent settings changed"
    DETECTION_RULE_CHANGED = "DETECTION_RULE_CHANGED", "Detection rule changed"


@LIVE_EVENTS.register
class LiveEvents(models.TextChoices):
    """Live event kinds incidents publishes to dashboards."""

    INCIDENT = "incident", "Incident changed"


@NOTIFICATIONS.register
class Notifications(models.TextChoices):
    """Notification kinds of incidents; channels subscribe to kinds."""

    INCIDENT_OPENED = "INCIDENT_OPENED", "Incident opened"
    INCIDENT_ESCALATED = "INCIDENT_ESCALATED", "Incident escalated"
    INCIDENT_RESOLVED = "INCIDENT_RESOLVED", "Incident resolved"
    INCIDENT_DIGEST = "INCIDENT_DIGEST", "Incident storm digest"
    AUTOPATCH_ROLLED_BACK = "AUTOPATCH_ROLLED_BACK", "Auto-patch rolled back"
    PATCH_AWAITING_APPROVAL = "PATCH_AWAITING_APPROVAL", "Patch awaiting approval"
