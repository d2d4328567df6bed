"""States and enumerations of backups and restores."""

from django.db import models

from portal.choices import Impact
from portal.kinds import AUDIT_EVENTS, LIVE_EVENTS, NOTIFICATIONS

__all__ = [
    "Impact",
    "SourceKind",
    "PgMode",
    "Transport",
    "Trigger",
    "RunStatus",
    "RUN_TRANSITIONS",
    "ArtifactFormat",
    "Verification",
    "VerifyLevel",
    "RestoreMode",
    "RestoreStatus",
    "RESTORE_TRANSITIONS",
    "RESTORE_OPEN",
    "DEFAULT_SCHEDULES",
    "DEFAULT_KUBE_KINDS",
    "DEFAULT_DRILL_SCHEDULE",
    "DrillStatus",
    "DRILL_TRANSITIONS",
    "DRILL_KINDS",
]


class SourceKind(models.TextChoices):
    POSTGRES = "postgres", "PostgreSQL"
    REDIS = "redis", "Redis"
    KUBERNETES = "kubernetes", "Kubernetes resources"
    TERRAFORM = "terraform", "Terraform state (S3 object)"


# One default time per kind, spread so three nightly backups never overlap at start.
DEFAULT_SCHEDULES: dict[str, str] = {
    SourceKind.POSTGRES: "0 2 * * *",
    SourceKind.REDIS: "15 2 * * *",
    SourceKind.KUBERNETES: "30 2 * * *",
    SourceKind.TERRAFORM: "45 2 * * *",
}
DEFAULT_KUBE_KINDS = "all,configmaps,secrets,pvc,ingress"


class PgMode(models.TextChoices):
    PER_DATABASE = "per_database", "pg_dump -Fc, one artifact per database"
    DUMPALL = "dumpall", "pg_dumpall (whole cluster, plain SQL)"


class Transport(models.TextChoices):
    DIRECT = "direct", "Direct (network)"
    KUBECTL_EXEC = "kubectl_exec", "Inside a pod (kubectl exec)"


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    MANUAL = "manual", "Manual"
    SAFETY = "safety", "Safety backup before a restore"


class RunStatus(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"


RUN_TRANSITIONS: dict[str, set[str]] = {
    RunStatus.QUEUED: {RunStatus.RUNNING, RunStatus.FAILED},
    RunStatus.RUNNING: {RunStatus.SUCCEEDED, RunStatus.FAILED},
}
RUN_OPEN = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class ArtifactFormat(models.TextChoices):
    PG_CUSTOM = "pg_custom", "pg_dump custom format"
    PG_SQL = "pg_sql", "pg_dumpall SQL"
    PG_GLOBALS = "pg_globals", "pg_dumpall --globals-only SQL (roles, memberships)"
    RDB = "rdb", "Redis RDB"
    K8S_YAML = "k8s_yaml", "Kubernetes YAML"
    TFSTATE = "tfstate", "Terraform state JSON"


class Verification(models.TextChoices):
    PENDING = "PENDING", "Not verified yet"
    VERIFIED = "VERIFIED", "Verified"
    FAILED = "FAILED", "Verification failed"


class VerifyLevel(models.TextChoices):
    """How much of a stored backup a verification read (issue 13 §3)."""

    QUICK = "quick", "Quick: checksum and table of contents / header"
    FULL = "full", "Full: every byte read and decoded by the real tool"


class RestoreMode(models.TextChoices):
    OVERWRITE = "overwrite", "Overwrite an existing target"
    SCRATCH = "scratch", "Into a new, empty scratch target"


class RestoreStatus(models.TextChoices):
    PLANNED = "PLANNED", "Planned (awaiting approvals)"
    APPROVED = "APPROVED", "Approved"
    REJECTED = "REJECTED", "Rejected"
    EXPIRED = "EXPIRED", "Expired"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"


RESTORE_TRANSITIONS: dict[str, set[str]] = {
    RestoreStatus.PLANNED: {RestoreStatus.APPROVED, RestoreStatus.REJECTED, RestoreStatus.EXPIRED},
    RestoreStatus.APPROVED: {RestoreStatus.RUNNING, RestoreStatus.EXPIRED},
    RestoreStatus.RUNNING: {RestoreStatus.SUCCEEDED, RestoreStatus.FAILED},
}
RESTORE_OPEN = frozenset({RestoreStatus.PLANNED, RestoreStatus.APPROVED, RestoreStatus.RUNNING})


# Restore drills (issue 13 §8): weekly by default, Sunday 04:00 UTC (after the nightly backups).
DEFAULT_DRILL_SCHEDULE = "0 4 * * 0"
# Kinds whose backups a drill restores (into a registered scratch target) and validates.
DRILL_KINDS = frozenset({SourceKind.POSTGRES, SourceKind.REDIS})


class DrillStatus(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"


DRILL_TRANSITIONS: dict[str, set[str]] = {
    DrillStatus.QUEUED: {DrillStatus.RUNNING, DrillStatus.FAILED},
    DrillStatus.RUNNING: {DrillStatus.SUCCEEDED, DrillStatus.FAILED},
}


# --- what this app adds to the portal's vocabularies (portal.kinds) -------------------


@AUDIT_EVENTS.register
class AuditEvents(models.TextChoices):
    """Audit event types of backups and restores (``AuditEvent.event_type``)."""

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
    TFSTATE_FALLBACK = "TFSTATE_FALLBACK", "Terraform state written to a local backend (S3 down)"
    DISK_SPACE_ALERT = "DISK_SPACE_ALERT", "Disk space alert"
    BACKUP_SOURCE_CHANGED = "BACKUP_SOURCE_CHANGED", "Backup source changed"
    BACKUP_RUN_REQUESTED = "BACKUP_RUN_REQUESTED", "Backup requested (run now)"
    BACKUP_DRILL_REQUESTED = "BACKUP_DRILL_REQUESTED", "Restore drill requested (run now)"
    DR_EXERCISE_RECORDED = "DR_EXERCISE_RECORDED", "Recovery exercise recorded (timed by a person)"


@LIVE_EVENTS.register
class LiveEvents(models.TextChoices):
    """Live event kinds backups and restores publishes to dashboards."""

    BACKUP_RUN = "backup.run", "Backup run changed"


@NOTIFICATIONS.register
class Notifications(models.TextChoices):
    """Notification kinds of backups and restores; channels subscribe to kinds."""

    BACKUP_FAILED = "BACKUP_FAILED", "Backup failed"
    BACKUP_STALE = "BACKUP_STALE", "No fresh backup"
    BACKUP_MISSED = "BACKUP_MISSED", "Backup slot missed"
    DISK_SPACE = "DISK_SPACE", "Disk space"
