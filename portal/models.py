"""Portal-wide models: the append-only audit log and the role permissions."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from portal.choices import AuditEventType, Impact


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


class ApprovalRule(models.Model):
    """How many people must sign a request of a given impact (edited in the admin).

    Shared by every kind of request: remediations, self-healing patches, restores.
    """

    impact = models.CharField(max_length=10, choices=Impact.choices, unique=True)
    required_approvals = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    require_confirmation = models.BooleanField(
        default=False, help_text="Approvers must type the target's name to confirm."
    )
    allow_auto_approve = models.BooleanField(
        default=False,
        help_text="A proposer may ask for automatic approval (never for HIGH impact).",
    )
    validity_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(30), MaxValueValidator(3600)],
        help_text="An approved request not started within this time expires.",
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["impact"]

    def __str__(self) -> str:
        return f"{self.impact}: {self.required_approvals} approval(s)"

    def clean(self) -> None:
        if self.impact == Impact.HIGH:
            if self.allow_auto_approve:
                raise ValidationError({"allow_auto_approve": "HIGH impact is never auto-approved."})
            if self.required_approvals < 2:
                raise ValidationError({"required_approvals": "HIGH impact needs at least 2."})
            if not self.require_confirmation:
                raise ValidationError(
                    {"require_confirmation": "HIGH impact always needs a typed confirmation."}
                )


class Approval(models.Model):
    """One person's signature on one request, bound to exactly what they were shown.

    ``fingerprint`` hashes the request's content (action, target, parameters);
    signatures only count while the request still has that fingerprint.
    """

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.CharField(max_length=64)
    request = GenericForeignKey("content_type", "object_id")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    fingerprint = models.CharField(max_length=64)
    comment = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created"]
        constraints = [
            models.UniqueConstraint(
                fields=["content_type", "object_id", "approver", "fingerprint"],
                name="approval_one_signature_per_person",
            )
        ]
        indexes = [models.Index(fields=["content_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.approver} signed {self.content_type.model} #{self.object_id}"


class ApiToken(models.Model):
    """A personal bearer token for the API and MCP. Only a SHA-256 of it is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, to recognise it.")
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
