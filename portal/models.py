"""Portal-wide models: the append-only audit log and the role permissions."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from portal.choices import AuditEventType


class PortalPermissions(models.Model):
    """Carrier for portal-wide permissions (no table).

    Roles are groups holding these permissions; views and APIs check the
    permission, never the group name.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_portal", "Can view the portal and live dashboard"),
            ("propose_action", "Can propose remediations"),
            ("run_diagnostics", "Can run read-only diagnostics"),
            ("execute_action", "Can execute approved remediations"),
            ("approve_action", "Can approve or reject requests"),
            ("manage_portal", "Can administer hosts, policies and users"),
        ]

    def __str__(self) -> str:
        return "portal permissions"


class AuditEvent(models.Model):
    """One row of the append-only, hash-chained audit log.

    ``hash`` is SHA-256 over this row's content and ``prev_hash``; rows are
    written only by ``portal.audit.record`` and never changed (a trigger
    rejects UPDATE and DELETE on PostgreSQL).
    """

    created = models.DateTimeField(db_index=True)
    event_type = models.CharField(max_length=40, choices=AuditEventType.choices, db_index=True)
    actor = models.CharField(max_length=150, help_text="user name or system:/mcp:/agent: identity")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    subject_type = models.CharField(max_length=60, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["subject_type", "subject_id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.event_type} by {self.actor}"
