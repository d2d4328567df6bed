"""Remediation models: hosts, actions, diagnostics."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
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

    # Maintenance windows and change freezes (``pra.windows``). An emergency runs
    # during a freeze and outside windows, with a typed reason and one more signature.
    emergency = models.BooleanField(default=False)
    emergency_reason = models.TextField(blank=True)
    window = models.ForeignKey(
        "MaintenanceWindow",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="actions",
        help_text="the window this action was approved for",
    )
    window_opens_at = models.DateTimeField(null=True, blank=True)
    window_closes_at = models.DateTimeField(null=True, blank=True)
    # What it waits for, in words ("approved for the window starting Sun 02:00 UTC"),
    # and after a wait ended without a run, why.
    hold_reason = models.CharField(max_length=300, blank=True)

    verification = models.CharField(
        max_length=12, choices=Verification.choices, default=Verification.PENDING
    )
    verification_output = models.TextField(blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "remediation action"
        indexes = [
            models.Index(fields=["status", "expires_at"]),
            # The dashboard's "running" and "recently finished" panels sort on it.
            models.Index(fields=["status_changed_at"], name="praaction_status_changed_idx"),
        ]

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

    @property
    def approval_extra_signatures(self) -> int:
        """An emergency needs one more signature than its impact's rule."""
        return 1 if self.emergency else 0

    def approval_fingerprint(self) -> str:
        # Only emergencies add a field: every other action keeps the fingerprint its
        # signatures were given for before windows existed.
        extra = {"emergency": self.emergency_reason} if self.emergency else {}
        return fingerprint_of(
            **extra,
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
        indexes = [models.Index(fields=["created"], name="diagnosticrun_created_idx")]

    def __str__(self) -> str:
        return f"{self.command} on {self.host.name}"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error


def _valid_timezone(value: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {value!r} (e.g. UTC, Europe/Paris)") from None


_tag_validator = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", "one host tag (no commas)")

WEEKDAYS = [(0, "Monday"), (1, "Tuesday"), (2, "Wednesday"), (3, "Thursday"),
            (4, "Friday"), (5, "Saturday"), (6, "Sunday")]  # fmt: skip


class MaintenanceWindow(models.Model):
    """A recurring period in which actions that require a window may run.

    Its start recurs either as a cron expression or as a weekday and time, read in
    ``timezone``; it lasts ``duration_minutes``. Global, or only for hosts with
    ``host_tag``. It may require a fresh verified backup of ``backup_sources``, taken
    at each opening, before anything runs in it. Edited only through
    ``pra.windows`` (admins; one audit event per change).
    """

    name = models.CharField(max_length=63, unique=True, validators=[_name_validator])
    description = models.CharField(max_length=300, blank=True)
    cron = models.CharField(
        max_length=100, blank=True, help_text="start times as cron (e.g. '0 2 * * 0'), or ..."
    )
    weekday = models.PositiveSmallIntegerField(
        null=True, blank=True, choices=WEEKDAYS, help_text="... a weekday and a start time"
    )
    start_time = models.TimeField(null=True, blank=True)
    duration_minutes = models.PositiveIntegerField(
        validators=[MinValueValidator(5), MaxValueValidator(7 * 24 * 60)]
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[_valid_timezone])
    host_tag = models.CharField(
        max_length=63,
        blank=True,
        validators=[_tag_validator],
        help_text="empty: every host; otherwise only hosts with this tag",
    )
    backup_sources = models.ManyToManyField(
        "backups.BackupSource",
        blank=True,
        related_name="maintenance_windows",
        help_text="backed up and verified at each opening before anything runs in the window",
    )
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from croniter import croniter

        by_cron = bool(self.cron.strip())
        by_day = self.weekday is not None or self.start_time is not None
        if by_cron == by_day:
            raise ValidationError("Give either a cron expression or a weekday and start time.")
        if by_cron and not croniter.is_valid(self.cron.strip()):
            raise ValidationError({"cron": f"not a valid cron expression: {self.cron!r}"})
        if by_day and (self.weekday is None or self.start_time is None):
            raise ValidationError("A weekday window needs both the weekday and the start time.")


class ChangeFreeze(models.Model):
    """A period in which only emergency actions run (everywhere). Edited through
    ``pra.windows`` by admins, one audit event per change."""

    reason = models.CharField(max_length=300)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="pra_freeze_ends_after_start",
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.reason} ({self.starts_at:%Y-%m-%d %H:%M} - {self.ends_at:%Y-%m-%d %H:%M} UTC)"
        )

    def clean(self) -> None:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The freeze must end after it starts."})


class WindowOpening(models.Model):
    """One opening of a window that requires backups: the runs requested at its start.

    At most one per (window, start), so two sweeps never request the backups twice.
    """

    window = models.ForeignKey(MaintenanceWindow, on_delete=models.CASCADE, related_name="openings")
    opens_at = models.DateTimeField()
    closes_at = models.DateTimeField()
    backup_runs = models.ManyToManyField("backups.BackupRun", blank=True, related_name="+")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-opens_at"]
        constraints = [
            models.UniqueConstraint(fields=["window", "opens_at"], name="pra_one_opening_per_start")
        ]

    def __str__(self) -> str:
        return f"{self.window.name} at {self.opens_at:%Y-%m-%d %H:%M} UTC"


__all__ = [
    "Host",
    "PRAAction",
    "DiagnosticRun",
    "Source",
    "PreflightStatus",
    "FailureCause",
    "MaintenanceWindow",
    "ChangeFreeze",
    "WindowOpening",
]
