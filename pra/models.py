"""Remediation models: hosts, actions, diagnostics."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from portal.approvals import fingerprint_of
from pra.catalog import CATALOG, get_spec
from pra.choices import ActionStatus, FailureCause, Impact, Verification

_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_.-]{0,62}$", "lowercase letters, digits, '_', '.', '-' (max 63)"
)


class Host(models.Model):
    """A target machine. Its SSH host key is pinned; the portal never trusts on first use."""

    name = models.CharField(max_length=63, unique=True, validators=[_name_validator])
    address = models.CharField(max_length=253, help_text="IP address or DNS name")
    port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    ssh_user = models.CharField(
        max_length=32, default="pra", validators=[RegexValidator(r"^[a-z_][a-z0-9_-]{0,31}$")]
    )
    host_key = models.TextField(help_text="Pinned OpenSSH public host key line")
    host_key_fingerprint = models.CharField(max_length=60)
    tags = models.CharField(max_length=200, blank=True, help_text="comma-separated")
    enabled = models.BooleanField(default=True)
    # Bumped (never reset) by every change of name, address, port, user or key, and part
    # of every approval's fingerprint: an approval given before an edit never counts
    # again, even once the edit is reverted.
    revision = models.PositiveIntegerField(default=1, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    #: What an approval names: which machine, and how the portal reaches it.
    CONNECTION_FIELDS = ("name", "address", "port", "ssh_user", "host_key")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.tags.split(",") if t.strip()]


class Source(models.TextChoices):
    HUMAN = "HUMAN", "Operator"
    AI = "AI", "AI assistant (MCP)"
    RULE = "RULE", "Detection rule"


class PreflightStatus(models.TextChoices):
    PENDING = "PENDING", "Running"
    OK = "OK", "OK"
    FAILED = "FAILED", "Failed"


_NEVER_RAN = frozenset({ActionStatus.REJECTED, ActionStatus.EXPIRED, ActionStatus.VOIDED})


class PRAAction(models.Model):
    """One proposed remediation from the catalog, on one host, through its whole life.

    Status moves only through ``pra.actions`` (compare-and-swap updates); the
    execution fields are written once, by the single job that won the claim.
    """

    action = models.CharField(max_length=64, choices=[(n, n) for n in CATALOG])
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="actions")
    params = models.JSONField(default=dict, blank=True)
    rationale = models.TextField()
    impact = models.CharField(max_length=10, choices=Impact.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.HUMAN)
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="proposed_actions",
    )
    proposer_label = models.CharField(max_length=150)
    auto_approve_requested = models.BooleanField(default=False)

    status = models.CharField(
        max_length=12, choices=ActionStatus.choices, default=ActionStatus.PROPOSED, db_index=True
    )
    status_changed_at = models.DateTimeField()
    created = models.DateTimeField(db_index=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    preflight_status = models.CharField(
        max_length=10, choices=PreflightStatus.choices, default=PreflightStatus.PENDING
    )
    preflight_output = models.TextField(blank=True)
    preflight_requested_at = models.DateTimeField(null=True, blank=True)

    job_id = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    connect_attempts = models.PositiveSmallIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    failure_cause = models.CharField(max_length=20, choices=FailureCause.choices, blank=True)
    failure_detail = models.TextField(blank=True)
    void_reason = models.CharField(max_length=300, blank=True)
    # Bytes of output streamed so far while EXECUTING (written at most once a second).
    output_bytes = models.PositiveIntegerField(default=0)

    verification = models.CharField(
        max_length=12, choices=Verification.choices, default=Verification.PENDING
    )
    verification_output = models.TextField(blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "remediation action"
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.command_display} on {self.host.name}"

    # Django only adds get_FOO_display when the class does not define it; the stubs'
    # plugin declares the generated one regardless.
    def get_verification_display(self) -> str:  # type: ignore[no-redef]
        if self.verification == Verification.PENDING and self.status == ActionStatus.FAILED:
            return "Not run (execution failed)"
        if self.verification == Verification.PENDING and self.status in _NEVER_RAN:
            return "Not run (never executed)"
        return Verification(self.verification).label

    @property
    def spec(self):
        return get_spec(self.action)

    # The streaming state of publish_output() in the worker holding this instance; not stored.
    _streamed_bytes: int = 0
    _streamed_saved: float = float("-inf")

    @property
    def took(self) -> timedelta | None:
        """How long the command ran; None until it has both started and finished."""
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def command_display(self) -> str:
        return " ".join([self.action, *(str(v) for v in self.params.values())])

    # --- Approvable --------------------------------------------------------
    @property
    def approval_impact(self) -> str:
        return self.impact

    @property
    def approval_requester_id(self) -> int | None:
        return self.proposed_by_id

    @property
    def approval_confirmation_text(self) -> str:
        return self.host.name

    def approval_fingerprint(self) -> str:
        return fingerprint_of(
            kind="pra",
            id=self.pk,
            action=self.action,
            host=self.host.name,
            address=f"{self.host.ssh_user}@{self.host.address}:{self.host.port}",
            host_key=self.host.host_key_fingerprint,
            host_revision=self.host.revision,
            params=self.params,
        )


class DiagnosticRun(models.Model):
    """A read-only diagnostic run on a host; may be attached to a proposal as evidence."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="diagnostics")
    command = models.CharField(max_length=200)
    exit_code = models.IntegerField(null=True, blank=True)
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150)
    created = models.DateTimeField(auto_now_add=True)
    action = models.ForeignKey(
        PRAAction, null=True, blank=True, on_delete=models.SET_NULL, related_name="evidence"
    )

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.command} on {self.host.name}"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error


__all__ = ["Host", "PRAAction", "DiagnosticRun", "Source", "PreflightStatus", "FailureCause"]
