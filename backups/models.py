"""Backup models: sources, runs and their artifacts, restore requests, watched disks."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlsplit

from croniter import croniter
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from backups.choices import (
    DEFAULT_DRILL_SCHEDULE,
    DEFAULT_KUBE_KINDS,
    DEFAULT_SCHEDULES,
    DRILL_KINDS,
    ArtifactFormat,
    DrillStatus,
    Impact,
    PgMode,
    RestoreMode,
    RestoreStatus,
    RunStatus,
    SourceKind,
    Transport,
    Trigger,
    Verification,
    VerifyLevel,
)
from backups.faults import FailureCause
from portal.approvals import fingerprint_of

_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_.-]{0,62}$", "lowercase letters, digits, '_', '.', '-' (max 63)"
)
_env_name_validator = RegexValidator(r"^[A-Z_][A-Z0-9_]{0,127}$", "an environment variable name")
_kube_name_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", "a Kubernetes name"
)
_kinds_validator = RegexValidator(r"^[a-z0-9.]+(,[a-z0-9.]+)*$", "comma-separated resource kinds")
_list_validator = RegexValidator(
    r"^$|^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$", "comma-separated names"
)
_host_validator = RegexValidator(
    r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^[0-9A-Fa-f:.]{2,45}$",
    "a host name or an IP address",
)
_pg_name_validator = RegexValidator(
    r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$", "letters, digits, '_', '.', '-' (max 63)"
)


def split_list(value: str) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class BackupSource(models.Model):
    """Something the portal backs up on a schedule: a PostgreSQL server, a Redis, a cluster.

    Credentials are never stored here: a source names the environment
    variable or the file holding its password (``password_env`` /
    ``password_file``), read only when a tool is started and handed to it
    through its environment (PGPASSWORD, REDISCLI_AUTH), never its argv.
    """

    name = models.CharField(max_length=63, unique=True, validators=[_name_validator])
    kind = models.CharField(max_length=12, choices=SourceKind.choices)
    enabled = models.BooleanField(default=True)
    stale_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Since when it has had no fresh verified backup (notified once).",
    )
    schedule = models.CharField(
        max_length=100,
        blank=True,
        help_text="cron expression (UTC); blank: 02:00 PostgreSQL, 02:15 Redis, 02:30 Kubernetes",
    )
    transport = models.CharField(max_length=14, choices=Transport.choices, default=Transport.DIRECT)
    dsn = models.CharField(
        max_length=300,
        blank=True,
        help_text="postgres://user@host:port or redis://host:port — no password here",
    )
    pg_mode = models.CharField(max_length=14, choices=PgMode.choices, default=PgMode.PER_DATABASE)
    databases = models.CharField(
        max_length=500,
        blank=True,
        validators=[_list_validator],
        help_text="comma-separated; blank: every database that accepts connections",
    )
    pg_role_passwords = models.BooleanField(
        default=False,
        help_text="per-database backups also dump the roles (pg_dumpall --globals-only); tick "
        "to include their password hashes (needs a superuser; default --no-role-passwords)",
    )
    password_env = models.CharField(
        max_length=128, blank=True, validators=[_env_name_validator], help_text="env var name"
    )
    password_file = models.CharField(max_length=500, blank=True, help_text="file holding it")
    kubeconfig = models.CharField(max_length=500, blank=True, help_text="path; blank: default")
    kube_context = models.CharField(max_length=253, blank=True)
    kube_namespace = models.CharField(
        max_length=63, blank=True, validators=[_kube_name_validator], help_text="pod's namespace"
    )
    kube_pod = models.CharField(
        max_length=253, blank=True, validators=[_kube_name_validator], help_text="for kubectl exec"
    )
    kube_container = models.CharField(max_length=63, blank=True, validators=[_kube_name_validator])
    kube_kinds = models.CharField(
        max_length=300, default=DEFAULT_KUBE_KINDS, validators=[_kinds_validator]
    )
    kube_namespaces = models.CharField(
        max_length=500,
        blank=True,
        validators=[_list_validator],
        help_text="Kubernetes sources: comma-separated; blank: all namespaces",
    )
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="keep every backup this many days; blank: BACKUP_RETENTION_DAYS",
    )
    keep_weekly = models.PositiveSmallIntegerField(
        default=0, help_text="also keep the newest backup of each of the last N weeks"
    )
    keep_monthly = models.PositiveSmallIntegerField(
        default=0, help_text="also keep the newest backup of each of the last N months"
    )
    stall_timeout = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="seconds without a byte from the tool before it is killed and the run "
        "FAILED; blank: BACKUP_STALL_TIMEOUT",
    )
    drill_target = models.ForeignKey(
        "RestoreTarget",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="drill_sources",
        help_text="restore drills: a registered scratch target allowed for drills; blank: none",
    )
    drill_schedule = models.CharField(
        max_length=100, blank=True, help_text="cron (UTC) of restore drills; blank: weekly"
    )
    rto_target_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.001)],
        help_text="a drill's restore must take at most this long; blank: the kind's default",
    )
    drill_horizon = models.DateTimeField(null=True, blank=True, editable=False)
    schedule_horizon = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="every slot up to here was created or reported missed",
    )
    missed_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="when a slot was last reported missed"
    )
    missed_detail = models.CharField(max_length=500, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def cron(self) -> str:
        return self.schedule or DEFAULT_SCHEDULES[self.kind]

    @property
    def retention(self) -> int:
        return self.retention_days or settings.BACKUP_RETENTION_DAYS

    @property
    def drill_cron(self) -> str:
        return self.drill_schedule or DEFAULT_DRILL_SCHEDULE

    @property
    def rto_target(self) -> float:
        """Seconds a drill's restore may take (the source's own, else the kind's default)."""
        if self.rto_target_seconds:
            return self.rto_target_seconds
        return float(settings.BACKUP_RTO_TARGETS.get(self.kind, 900))

    @property
    def database_list(self) -> list[str]:
        return split_list(self.databases)

    @property
    def namespace_list(self) -> list[str]:
        return split_list(self.kube_namespaces)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.schedule and not croniter.is_valid(self.schedule):
            errors["schedule"] = "not a valid cron expression"
        both = "give an environment variable or a file, not both"
        if self.password_env and self.password_file:
            errors["password_env"] = both
        from backups import credentials  # models stay importable without the app loaded

        for name, what in (("password_file", "password file"), ("kubeconfig", "kubeconfig")):
            if getattr(self, name):
                try:
                    credentials.check_file_reference(getattr(self, name), what=what)
                except credentials.CredentialError as exc:
                    errors[name] = str(exc)
        if self.dsn:
            parts = urlsplit(self.dsn)
            expected: dict[str, set[str]] = {
                SourceKind.POSTGRES: {"postgres", "postgresql"},
                SourceKind.REDIS: {"redis"},
            }
            if self.kind in expected and parts.scheme not in expected[self.kind]:
                errors["dsn"] = f"use a {'/'.join(sorted(expected[self.kind]))}:// URL"
            elif parts.password:
                errors["dsn"] = "no password in the DSN: use password_env or password_file"
        if self.kind in {SourceKind.POSTGRES, SourceKind.REDIS}:
            if self.transport == Transport.DIRECT and not self.dsn:
                errors["dsn"] = "a direct source needs a DSN"
            if self.transport == Transport.KUBECTL_EXEC and not (
                self.kube_pod and self.kube_namespace
            ):
                errors["kube_pod"] = "kubectl exec needs a namespace and a pod"
        if self.kind == SourceKind.TERRAFORM:
            from backups import terraform

            errors.update(terraform.source_errors(self))
        if self.kind == SourceKind.KUBERNETES and self.transport != Transport.DIRECT:
            errors["transport"] = "Kubernetes resources are read with kubectl get"
        if self.drill_schedule and not croniter.is_valid(self.drill_schedule):
            errors["drill_schedule"] = "not a valid cron expression"
        target = self.drill_target if self.drill_target_id else None
        if target is not None:
            if self.kind not in DRILL_KINDS:
                errors["drill_target"] = "restore drills are for PostgreSQL and Redis sources"
            elif target.kind != self.kind:
                errors["drill_target"] = f"a {target.get_kind_display()} target cannot take it"
            elif not target.drills:
                errors["drill_target"] = (
                    f"restore target {target.name} is not registered for drills (an "
                    "administrator ticks 'drills' on it)"
                )
        if errors:
            raise ValidationError(errors)


def fresh_since(now: datetime | None = None) -> datetime:
    """Backups created since then are young enough to be fresh (``BACKUP_FRESH_HOURS``)."""
    return (now or timezone.now()) - timedelta(hours=settings.BACKUP_FRESH_HOURS)


class BackupRunQuerySet(models.QuerySet["BackupRun"]):
    """The one place that says which backups count (issue 13 §4): ``usable()`` is the
    "last good backup" of freshness, retention, shrink comparison, restores and reports."""

    def of_source(self, source) -> BackupRunQuerySet:
        """The source's own backups (not the safety backups taken of restore targets)."""
        return self.filter(source=source, restore__isnull=True)

    def stored(self) -> BackupRunQuerySet:
        """Succeeded and still on the storage (whatever their verification)."""
        return self.filter(status=RunStatus.SUCCEEDED, deleted_at__isnull=True)

    def usable(self) -> BackupRunQuerySet:
        """Good backups: stored, fully verified, and not suspiciously small unless a person
        accepted them (``backups.actions.accept_backup``)."""
        return self.stored().filter(
            Q(shrink_flag=False) | Q(accepted_at__isnull=False),
            verification=Verification.VERIFIED,
        )

    def awaiting_acceptance(self) -> BackupRunQuerySet:
        """Verified but much smaller than the previous good one, and nobody accepted them."""
        return self.stored().filter(
            verification=Verification.VERIFIED, shrink_flag=True, accepted_at__isnull=True
        )

    def last_good(self) -> BackupRun | None:
        """The newest ``usable()`` backup: "the last good backup" (of a source, with
        ``of_source``), the one freshness, drills, reports and MCP speak of."""
        return self.usable().order_by("-created").first()

    def size_reference(self, run: BackupRun) -> BackupRun | None:
        """The newest succeeded run of ``run``'s source other than ``run`` (whatever its
        trigger, verification or retention): what a new run's size is expected from."""
        return (
            self.filter(source=run.source_id, status=RunStatus.SUCCEEDED)
            .exclude(pk=run.pk)
            .order_by("-created")
            .first()
        )

    def fresh(self, now: datetime | None = None) -> BackupRunQuerySet:
        """Good backups young enough to count (``BACKUP_FRESH_HOURS`` before ``now``)."""
        return self.usable().filter(created__gte=fresh_since(now))


class BackupRun(models.Model):
    """One backup of one source: scheduled, manual, or a safety backup before a restore.

    Status moves only through ``backups.actions`` (compare-and-swap). A
    scheduled slot exists at most once per source (``one_run_per_slot``), so
    two schedulers or a restart never run it twice. Its files are listed only
    once the run committed them (``artifact_path`` set, status SUCCEEDED).
    """

    source = models.ForeignKey(BackupSource, on_delete=models.PROTECT, related_name="runs")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    status = models.CharField(
        max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    status_changed_at = models.DateTimeField()
    created = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    bytes_raw = models.BigIntegerField(default=0, help_text="bytes produced by the tool")
    bytes_stored = models.BigIntegerField(default=0, help_text="bytes stored (compressed)")
    progress_bytes = models.BigIntegerField(default=0)
    checksum = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the run's manifest (lists each file's)"
    )
    duration_s = models.FloatField(null=True, blank=True)
    artifact_path = models.CharField(max_length=500, blank=True)
    stderr = models.TextField(blank=True)
    error = models.TextField(blank=True)
    failure_cause = models.CharField(
        max_length=20, choices=FailureCause.choices, blank=True, help_text="why it failed"
    )
    missed_at = models.DateTimeField(
        null=True, blank=True, help_text="reported missed: not started in BACKUP_MISSED_AFTER"
    )
    verification = models.CharField(
        max_length=10, choices=Verification.choices, default=Verification.PENDING
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_level = models.CharField(
        max_length=5,
        choices=VerifyLevel.choices,
        blank=True,
        help_text="how much the verification that decided the state read (VERIFIED: full)",
    )
    verify_seconds = models.FloatField(
        null=True, blank=True, help_text="how long that verification took"
    )
    verify_detail = models.TextField(blank=True)
    verify_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="a re-verification asked for and not done yet"
    )
    verify_requested_by = models.CharField(max_length=150, blank=True)
    verify_job_id = models.CharField(max_length=64, blank=True)
    shrink_flag = models.BooleanField(
        default=False, help_text="dramatically smaller than the previous good backup"
    )
    copy_location = models.CharField(
        max_length=500, blank=True, help_text="where its second copy is (BACKUP_COPY_TO)"
    )
    copied_at = models.DateTimeField(null=True, blank=True)
    copy_error = models.TextField(blank=True)
    accepted_at = models.DateTimeField(
        null=True, blank=True, help_text="a person accepted it although it shrank dramatically"
    )
    accepted_by = models.CharField(max_length=150, blank=True)
    accept_reason = models.CharField(max_length=500, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="files removed (retention)")
    restore = models.ForeignKey(
        "RestoreRequest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="safety_runs",
    )

    objects = BackupRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "scheduled_for"],
                condition=Q(scheduled_for__isnull=False),
                name="backups_one_run_per_slot",
            )
        ]
        indexes = [models.Index(fields=["source", "status", "created"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.source.name} {self.status}"

    @property
    def storage_key(self) -> str:
        """Where this run's files go: ``<source>/<UTC time>-run<id>[-safety]``."""
        suffix = "-safety" if self.trigger == Trigger.SAFETY else ""
        return f"{self.source.name}/{self.created:%Y%m%dT%H%M%SZ}-run{self.pk}{suffix}"

    @property
    def awaiting_acceptance(self) -> bool:
        """The row's own ``BackupRunQuerySet.awaiting_acceptance`` (same rule, no query)."""
        return (
            self.status == RunStatus.SUCCEEDED
            and self.deleted_at is None
            and self.verification == Verification.VERIFIED
            and self.shrink_flag
            and self.accepted_at is None
        )

    @property
    def usable(self) -> bool:
        """The row's own ``BackupRunQuerySet.usable`` (same rule, no query): a good backup,
        one to count and restore from."""
        return (
            self.status == RunStatus.SUCCEEDED
            and self.deleted_at is None
            and self.verification == Verification.VERIFIED
            and not self.awaiting_acceptance
        )

    def is_fresh(self, now: datetime | None = None) -> bool:
        """The row's own ``BackupRunQuerySet.fresh`` (same rule, no query)."""
        return self.usable and self.created >= fresh_since(now)


class BackupArtifactQuerySet(models.QuerySet["BackupArtifact"]):
    def restorable(self) -> BackupArtifactQuerySet:
        """Files a restore may be planned from: verified, of a good (``usable``) backup."""
        return self.filter(verification=Verification.VERIFIED, run__in=BackupRun.objects.usable())


class BackupArtifact(models.Model):
    """One stored file of a run (one database, one RDB, one resources YAML).

    ``sha256`` is over the stored (compressed) bytes, so verification re-reads
    exactly what is on disk.
    """

    run = models.ForeignKey(BackupRun, on_delete=models.CASCADE, related_name="artifacts")
    component = models.CharField(max_length=200, help_text="database name, 'redis', 'resources'")
    key = models.CharField(max_length=500, help_text="storage key")
    format = models.CharField(max_length=10, choices=ArtifactFormat.choices)
    bytes_raw = models.BigIntegerField(default=0)
    bytes_stored = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    key_id = models.CharField(
        max_length=64,
        blank=True,
        help_text="id of the BACKUP_ENCRYPTION_KEYS key it is encrypted with; blank: not encrypted",
    )
    verification = models.CharField(
        max_length=10, choices=Verification.choices, default=Verification.PENDING
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_level = models.CharField(max_length=5, choices=VerifyLevel.choices, blank=True)
    verify_seconds = models.FloatField(null=True, blank=True)
    verify_detail = models.TextField(blank=True)
    facts = models.JSONField(default=dict, blank=True, help_text="counts found by verification")
    created = models.DateTimeField(auto_now_add=True)

    objects = BackupArtifactQuerySet.as_manager()

    class Meta:
        ordering = ["run", "component"]

    def __str__(self) -> str:
        return f"{self.run.source.name} #{self.run_id} {self.component}"

    @property
    def restorable(self) -> bool:
        """The row's own ``BackupArtifactQuerySet.restorable`` (same rule; reads ``run``)."""
        return self.verification == Verification.VERIFIED and self.run.usable


class RestoreTarget(models.Model):
    """A server or cluster that restores may write to, registered by an administrator.

    Restores go only to the backup's own source or to one of these: no
    preview, plan or restore ever connects to a host given free-form. Every
    change goes through ``backups.actions.create_restore_target`` /
    ``update_restore_target`` (audited; ``revision`` counts changes, and a
    restore planned against an older revision is refused). Nothing secret is
    stored: the password is named (an environment variable, or a file under
    ``BACKUP_SECRETS_DIR``) and read only when a tool connects.
    """

    name = models.CharField(max_length=63, unique=True, validators=[_name_validator])
    kind = models.CharField(max_length=12, choices=SourceKind.choices)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=300, blank=True)
    host = models.CharField(
        max_length=253, blank=True, validators=[_host_validator], help_text="PostgreSQL / Redis"
    )
    port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="blank: 5432 (PostgreSQL), 6379 (Redis)",
    )
    username = models.CharField(
        max_length=63,
        blank=True,
        validators=[_pg_name_validator],
        help_text="PostgreSQL role / Redis ACL user; blank: postgres / default",
    )
    database = models.CharField(
        max_length=63,
        blank=True,
        validators=[_pg_name_validator],
        help_text="PostgreSQL: the only database restores may write to; blank: any "
        "database name on this server (default: the backed-up database's)",
    )
    password_env = models.CharField(
        max_length=128, blank=True, validators=[_env_name_validator], help_text="env var name"
    )
    password_file = models.CharField(
        max_length=500, blank=True, help_text="a file under BACKUP_SECRETS_DIR"
    )
    kubeconfig = models.CharField(
        max_length=500, blank=True, help_text="a file under BACKUP_SECRETS_DIR; blank: default"
    )
    kube_context = models.CharField(max_length=253, blank=True)
    drills = models.BooleanField(
        default=False,
        help_text="scheduled restore drills may restore into it without approvals: only new "
        "databases (created and dropped by the drill) or an empty Redis (flushed after)",
    )
    revision = models.PositiveIntegerField(default=1, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    created_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()}: {self.where})"

    @property
    def where(self) -> str:
        if self.kind == SourceKind.KUBERNETES:
            return self.kube_context or "current context"
        default = 5432 if self.kind == SourceKind.POSTGRES else 6379
        return f"{self.host}:{self.port or default}"

    def clean(self) -> None:
        from backups.credentials import CredentialError, check_file_reference

        errors: dict[str, str] = {}
        both = "give an environment variable or a file, not both"
        if self.password_env and self.password_file:
            errors["password_env"] = both
        for name in ("password_file", "kubeconfig"):
            value = getattr(self, name)
            if value:
                try:
                    check_file_reference(value, what=name.replace("_", " "))
                except CredentialError as exc:
                    errors[name] = str(exc)
        if self.kind in {SourceKind.POSTGRES, SourceKind.REDIS}:
            if not self.host:
                errors["host"] = "a PostgreSQL or Redis target needs a host"
            if self.kubeconfig or self.kube_context:
                errors["kubeconfig"] = "only Kubernetes targets have a kubeconfig/context"
        if self.kind == SourceKind.TERRAFORM:
            errors["kind"] = "a Terraform state is restored into its own object only"
        if self.kind == SourceKind.REDIS and self.database:
            errors["database"] = "a Redis target is the whole instance (no database)"
        if self.kind == SourceKind.KUBERNETES:
            for name in ("host", "port", "username", "database", "password_env", "password_file"):
                if getattr(self, name):
                    errors[name] = "Kubernetes targets use a kubeconfig and a context"
        if errors:
            raise ValidationError(errors)


class RestoreRequest(models.Model):
    """A planned restore of one artifact into one target, through its whole life.

    The target is the backup's own source or a registered ``RestoreTarget``.
    Overwriting it is HIGH impact: the requester types the target's name, two
    other people approve (each typing it too), a safety backup of the target
    is taken, then the restore runs and is validated. A restore into a new,
    empty scratch target overwrites nothing: one person other than the
    requester approves it (MEDIUM); it is refused at run time if the target
    is no longer empty.
    """

    artifact = models.ForeignKey(BackupArtifact, on_delete=models.PROTECT, related_name="restores")
    mode = models.CharField(max_length=10, choices=RestoreMode.choices)
    restore_target = models.ForeignKey(
        RestoreTarget,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="restores",
        help_text="the registered target; blank: the backup's own source",
    )
    target = models.JSONField(
        help_text="what was asked and what it resolved to (no secrets: names of env vars/files)"
    )
    target_name = models.CharField(max_length=300, help_text="what people type to confirm")
    plan = models.JSONField(default=dict, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="backup_restores",
    )
    requester_label = models.CharField(max_length=150)
    status = models.CharField(
        max_length=10,
        choices=RestoreStatus.choices,
        default=RestoreStatus.PLANNED,
        db_index=True,
    )
    status_changed_at = models.DateTimeField()
    created = models.DateTimeField(db_index=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    phase = models.CharField(max_length=20, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    safety_run = models.ForeignKey(
        BackupRun, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "restore"

    def __str__(self) -> str:
        return f"restore #{self.pk} {self.artifact.component} -> {self.target_name}"

    # --- Approvable ------------------------------------------------------------
    @property
    def approval_impact(self) -> str:
        # A scratch restore overwrites nothing but still copies data somewhere: one other
        # person signs (MEDIUM is never auto-approved). Overwrites are HIGH: two, typing the name.
        return Impact.HIGH if self.mode == RestoreMode.OVERWRITE else Impact.MEDIUM

    @property
    def approval_requester_id(self) -> int | None:
        return self.requested_by_id

    @property
    def approval_confirmation_text(self) -> str:
        return self.target_name

    def approval_fingerprint(self) -> str:
        return fingerprint_of(
            kind="restore",
            id=self.pk,
            artifact=self.artifact_id,
            checksum=self.artifact.sha256,
            target=self.target,
            target_name=self.target_name,
            mode=self.mode,
        )


class BackupDrill(models.Model):
    """One restore drill: the newest good backup of a source restored into its registered
    scratch drill target, validated, timed against the source's RTO target, cleaned up.

    No approval: the target was registered for drills by an administrator (audited), and a
    drill only ever creates a new database there (dropped after) or fills an empty Redis
    (flushed after). Status moves only through ``backups.actions`` (compare-and-swap).
    """

    source = models.ForeignKey(BackupSource, on_delete=models.PROTECT, related_name="drills")
    run = models.ForeignKey(
        BackupRun, null=True, blank=True, on_delete=models.PROTECT, related_name="drills"
    )
    target = models.ForeignKey(
        "RestoreTarget",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="drill_runs",
    )
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    status = models.CharField(
        max_length=10, choices=DrillStatus.choices, default=DrillStatus.QUEUED, db_index=True
    )
    status_changed_at = models.DateTimeField()
    created = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    rto_seconds = models.FloatField(null=True, blank=True, help_text="measured restore time")
    rto_target_seconds = models.FloatField(null=True, blank=True)
    met_target = models.BooleanField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "scheduled_for"],
                condition=Q(scheduled_for__isnull=False),
                name="backups_one_drill_per_slot",
            )
        ]

    def __str__(self) -> str:
        return f"drill #{self.pk} {self.source.name} {self.status}"

    @property
    def good(self) -> bool:
        """Succeeded within its RTO target."""
        return self.status == DrillStatus.SUCCEEDED and bool(self.met_target)


class DiskWatch(models.Model):
    """Last known usage of one watched filesystem path, so an alert fires once per crossing."""

    path = models.CharField(max_length=500, unique=True)
    percent = models.FloatField(default=0)
    alerting = models.BooleanField(default=False)
    checked_at = models.DateTimeField(null=True, blank=True)
    alerted_at = models.DateTimeField(null=True, blank=True)
    consumers = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["path"]

    def __str__(self) -> str:
        return f"{self.path} {self.percent:.0f}%"


__all__ = [
    "BackupSource",
    "BackupRun",
    "BackupArtifact",
    "RestoreRequest",
    "RestoreTarget",
    "DiskWatch",
    "BackupDrill",
    "Trigger",
    "RunStatus",
    "SourceKind",
]
