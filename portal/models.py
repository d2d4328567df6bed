"""Portal-wide models: audit log, role permissions, approvals, tokens, notifications."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.admin.decorators import display
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
    validate_email,
)
from django.db import models
from django.utils import timezone

from portal.choices import (
    AuditEventType,
    ChannelKind,
    Impact,
    NotificationKind,
    NotificationSeverity,
    NotificationStatus,
)


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

    ``hash`` is an HMAC-SHA256 over this row's content and ``prev_hash`` with the
    key named by ``key_id`` (keys live in settings, never in the database); rows
    from before keyed chains have an empty ``key_id`` and a plain SHA-256. Rows
    are written only by ``portal.audit.record`` and never changed: on PostgreSQL
    triggers refuse UPDATE, DELETE and TRUNCATE (docs/security.md).
    """

    created = models.DateTimeField(db_index=True)
    # Any app's kind (``portal.kinds.AUDIT_EVENTS``): no database-level choices, so a new
    # kind needs no migration; ``get_event_type_display`` reads the label from the registry.
    event_type = models.CharField(max_length=40, db_index=True)
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
    key_id = models.CharField(
        max_length=32, blank=True, default="", help_text="HMAC key that signed it; empty: legacy"
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["subject_type", "subject_id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.event_type} by {self.actor}"

    @display(description="event type", ordering="event_type")
    def get_event_type_display(self) -> str:
        """The registered label (the stored value itself for a kind no app declares)."""
        return AuditEventType.label(self.event_type)


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
        if self.impact != Impact.LOW and self.allow_auto_approve:
            raise ValidationError({"allow_auto_approve": "Only LOW impact may be auto-approved."})
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

    class Scope(models.TextChoices):
        API = "api", "REST API"
        MCP = "mcp", "MCP (AI assistant)"

    name = models.CharField(max_length=100)
    scope = models.CharField(
        max_length=3,
        choices=Scope.choices,
        default=Scope.API,
        help_text="Where it works: an MCP token never opens the REST API (which can approve).",
    )
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


_ENV_NAME = RegexValidator(r"^[A-Z_][A-Z0-9_]{0,99}$", "an environment variable name (A-Z, 0-9, _)")


class NotificationChannel(models.Model):
    """Where notifications go: a generic JSON webhook, a Slack incoming webhook, or email.

    A secret URL (every Slack webhook URL, any URL carrying a token) is never
    stored: ``url_env`` names the environment variable (or ``NAME_FILE``) that
    holds it. ``url`` is only for plain, credential-free receivers.
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Plain webhook URL without credentials (WEBHOOK only). Otherwise use url_env.",
    )
    url_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[_ENV_NAME],
        help_text="Environment variable holding the secret URL (NAME or NAME_FILE).",
    )
    recipients = models.CharField(
        max_length=1000, blank=True, help_text="Comma-separated email addresses (EMAIL only)."
    )
    kinds = models.JSONField(
        default=list, blank=True, help_text="Kinds this channel receives; empty means all."
    )
    min_severity = models.CharField(
        max_length=10,
        choices=NotificationSeverity.choices,
        default=NotificationSeverity.INFO,
    )
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def recipient_list(self) -> list[str]:
        return [r.strip() for r in self.recipients.split(",") if r.strip()]

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.kind in {ChannelKind.WEBHOOK, ChannelKind.SLACK}:
            if bool(self.url) == bool(self.url_env):
                errors["url_env"] = "Give exactly one of url and url_env."
            elif self.url and self.kind == ChannelKind.SLACK:
                errors["url"] = (
                    "A Slack webhook URL is a secret: put it in an environment variable "
                    "and name that variable in url_env."
                )
            elif self.url:
                parts = urlsplit(self.url)
                if parts.scheme not in {"http", "https"}:
                    errors["url"] = "Only http(s) URLs."
                elif parts.query or parts.username or parts.password or "slack.com" in parts.netloc:
                    errors["url"] = (
                        "This URL carries credentials: put it in an environment variable "
                        "and name that variable in url_env."
                    )
            if self.recipients:
                errors["recipients"] = "Recipients are for email channels only."
        elif self.kind == ChannelKind.EMAIL:
            if self.url or self.url_env:
                errors["url"] = "Email channels have no URL."
            if not self.recipient_list:
                errors["recipients"] = "Give at least one email address."
            else:
                try:
                    for address in self.recipient_list:
                        validate_email(address)
                except ValidationError:
                    errors["recipients"] = f"{address!r} is not an email address."
        if not isinstance(self.kinds, list) or not all(
            isinstance(k, str) and k in NotificationKind.values for k in self.kinds
        ):
            errors["kinds"] = "A list of notification kinds: " + ", ".join(NotificationKind.values)
        if errors:
            raise ValidationError(errors)


class EscalationLevel(models.Model):
    """One step of incident escalation (L1 operator ... L4 architect) and who it reaches.

    An unacknowledged incident moves to the next level after ``delay_minutes``;
    notifications sent at a level go to these channels on top of the subscribed ones.
    """

    level = models.PositiveSmallIntegerField(
        unique=True, validators=[MinValueValidator(1), MaxValueValidator(4)]
    )
    name = models.CharField(max_length=50)
    delay_minutes = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Minutes without acknowledgement before escalating past this level.",
    )
    channels = models.ManyToManyField(NotificationChannel, blank=True, related_name="levels")

    class Meta:
        ordering = ["level"]

    def __str__(self) -> str:
        return f"L{self.level} {self.name}"


class Notification(models.Model):
    """One message for one channel, and what became of it (the job's durable record).

    Written in the caller's transaction by ``portal.notify.notify``; moved only by
    ``portal.notify`` (PENDING -> SENT | FAILED). ``last_error`` is redacted: it
    never holds the channel's URL or any part of its query.
    """

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.PROTECT, related_name="notifications"
    )
    # Any app's kind (``portal.kinds.NOTIFICATIONS``), like ``AuditEvent.event_type``.
    kind = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    severity = models.CharField(max_length=10, choices=NotificationSeverity.choices)
    subject_type = models.CharField(max_length=60, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    link = models.CharField(max_length=500, blank=True, help_text="Where to look (a portal page).")
    escalation_level = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=10,
        choices=NotificationStatus.choices,
        default=NotificationStatus.PENDING,
        db_index=True,
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A sender holds it until then (no double sends)."
    )
    last_error = models.CharField(max_length=1000, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["subject_type", "subject_id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} -> {self.channel_id} ({self.status})"

    @display(description="kind", ordering="kind")
    def get_kind_display(self) -> str:
        """The registered label (the stored value itself for a kind no app declares)."""
        return NotificationKind.label(self.kind)
