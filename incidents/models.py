"""Incident models: agents and their heartbeats, rules, incidents, decisions, auto-patches."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from incidents.choices import (
    AttemptStatus,
    CommandKind,
    CommandStatus,
    DecisionAction,
    DecisionSource,
    IncidentStatus,
    Outcome,
    RuleKind,
    Severity,
)
from portal.approvals import fingerprint_of
from portal.choices import Impact


def approval_ttl() -> int:
    """Seconds a PENDING auto-patch may wait, for signatures then for a worker
    (``AUTOPATCH_APPROVAL_TTL``), before the sweep ends it EXPIRED."""
    return int(settings.AUTOPATCH_APPROVAL_TTL)


_slug = RegexValidator(r"^[a-z0-9][a-z0-9_.-]{0,62}$", "lowercase letters, digits, '_', '.', '-'")
_version = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$", "a version like 1.4.2")
_TAG = r"[a-z0-9][a-z0-9_.:-]{0,39}"
_tags = RegexValidator(
    rf"^\s*(?:{_TAG}(?:\s+{_TAG})*)?\s*$", "space-separated tags of [a-z0-9_.:-], 40 at most each"
)


def normalize_tags(raw: str) -> str:
    """Tags stored one way (sorted, unique, single spaces), so a lookup can rely on it."""
    return " ".join(sorted(set((raw or "").split())))


def tag_filter(tag: str, prefix: str = "") -> Q:
    """Agents (``prefix`` = "agent__" from incidents) carrying ``tag``, in any database."""
    field = f"{prefix}tags"
    return (
        Q(**{field: tag})
        | Q(**{f"{field}__startswith": f"{tag} "})
        | Q(**{f"{field}__endswith": f" {tag}"})
        | Q(**{f"{field}__contains": f" {tag} "})
    )


class Agent(models.Model):
    """Something that sends heartbeats: a plugin, a service or a host.

    Its latest telemetry lives on this row (the hot path is one small update);
    ``alert_after`` (indexed) is when a missing heartbeat becomes an incident.
    """

    class Kind(models.TextChoices):
        PLUGIN = "plugin", "Plugin"
        SERVICE = "service", "Service"
        HOST = "host", "Host"

    name = models.CharField(max_length=63, unique=True, validators=[_slug])
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SERVICE)
    owner = models.CharField(max_length=100, blank=True)
    environment = models.CharField(max_length=30, default="production")
    host = models.ForeignKey(
        "pra.Host",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="For host-level causes: remediations are proposed on this host.",
    )
    expected_period = models.PositiveIntegerField(
        default=120, validators=[MinValueValidator(5), MaxValueValidator(86400)]
    )
    grace = models.PositiveIntegerField(default=60, validators=[MaxValueValidator(86400)])
    version = models.CharField(max_length=40, blank=True, validators=[_version])
    available_version = models.CharField(
        max_length=40,
        blank=True,
        validators=[_version],
        help_text="Known-good version heuristics may patch to.",
    )
    last_seen = models.DateTimeField(null=True, blank=True)
    last_telemetry = models.JSONField(default=dict, blank=True)
    alert_after = models.DateTimeField(null=True, blank=True)
    missing = models.BooleanField(default=False)
    # Replay high-water mark, kept here (not only in Redis) so a flush or restart of Redis
    # never lets a captured heartbeat in again: each accepted heartbeat must be signed
    # strictly later than the previous one (set in the heartbeat's own UPDATE).
    last_signed_us = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Signed timestamp (µs since the epoch) of the last accepted heartbeat.",
    )
    last_nonce = models.CharField(max_length=64, blank=True, editable=False)
    tags = models.CharField(
        max_length=300,
        blank=True,
        validators=[_tags],
        help_text="Space-separated tags (e.g. dc-paris rack-12): grouping rules can group by one.",
    )
    depends_on = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="dependents",
        help_text="Upstream agents: while one of them is down, this agent's incidents page "
        "nobody of their own (dependency suppression).",
    )
    secret_sealed = models.TextField(editable=False)
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # The missed-heartbeat sweep reads only overdue, not-yet-flagged agents.
            models.Index(
                fields=["alert_after"],
                name="agent_overdue_idx",
                condition=Q(missing=False, enabled=True),
            )
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        self.tags = normalize_tags(self.tags)
        super().save(*args, **kwargs)

    @property
    def tag_list(self) -> list[str]:
        return self.tags.split()


class HeartbeatSample(models.Model):
    """One heartbeat's telemetry, kept for ``HEARTBEAT_RETENTION_HOURS`` then pruned."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="samples")
    received = models.DateTimeField()
    version = models.CharField(max_length=40, blank=True)
    telemetry = models.JSONField(default=dict)

    class Meta:
        ordering = ["-received"]
        indexes = [models.Index(fields=["agent", "received"]), models.Index(fields=["received"])]

    def __str__(self) -> str:
        return f"{self.agent} at {self.received}"


class DetectionRule(models.Model):
    """A detection rule (data, edited in the admin): thresholds per level."""

    key = models.CharField(max_length=40, unique=True, validators=[_slug])
    kind = models.CharField(max_length=20, choices=RuleKind.choices)
    metric = models.CharField(max_length=40, blank=True, help_text="Telemetry field compared.")
    warning = models.FloatField(null=True, blank=True)
    critical = models.FloatField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class Incident(models.Model):
    """One problem of one agent with one cause; repeats update it, never duplicate it."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="incidents")
    cause = models.CharField(max_length=80)
    rule = models.ForeignKey(DetectionRule, null=True, blank=True, on_delete=models.SET_NULL)
    title = models.CharField(max_length=200)
    severity = models.PositiveSmallIntegerField(choices=Severity.choices)
    status = models.CharField(
        max_length=14, choices=IncidentStatus.choices, default=IncidentStatus.OPEN, db_index=True
    )
    detected_at = models.DateTimeField(help_text="When the condition was first observed.")
    opened_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    occurrences = models.PositiveIntegerField(default=1)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=300, blank=True)
    auto_resolved = models.BooleanField(default=False)
    telemetry = models.JSONField(default=dict, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    next_escalation_at = models.DateTimeField(null=True, blank=True, db_index=True)
    remediation = models.ForeignKey(
        "pra.PRAAction", null=True, blank=True, on_delete=models.SET_NULL, related_name="incidents"
    )
    group = models.ForeignKey(
        "IncidentGroup",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="members",
        help_text="The storm this incident is part of: the group pages and escalates, not it.",
    )
    suppressed_by = models.ForeignKey(
        Agent,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The upstream or host agent that was down when this opened (no page of its own).",
    )
    suppression = models.CharField(max_length=300, blank=True)
    paged_at = models.DateTimeField(
        null=True, blank=True, help_text="When its own page went out (none if grouped/suppressed)."
    )
    page_due_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A page held by a grouping rule's wait, sent then unless a storm took it in.",
    )

    class Meta:
        ordering = ["-opened_at"]
        indexes = [
            models.Index(fields=["opened_at"], name="incident_opened_idx"),  # the list's order
            models.Index(
                fields=["page_due_at"], name="incident_held_page_idx",
                condition=Q(page_due_at__isnull=False),
            ),
            models.Index(
                fields=["suppressed_by"], name="incident_suppressed_idx",
                condition=Q(suppressed_by__isnull=False, paged_at__isnull=True),
            ),
        ]  # fmt: skip
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "cause"],
                condition=~Q(status=IncidentStatus.RESOLVED),
                name="one_open_incident_per_agent_and_cause",
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def mttd(self):
        return self.opened_at - self.detected_at

    @property
    def mttr(self):
        return (self.resolved_at - self.opened_at) if self.resolved_at else None


class GroupingRule(models.Model):
    """When many agents fail together, one parent incident (an ``IncidentGroup``) stands for
    them: it pages once, then sends digests, and it escalates; its members do neither.

    A rule groups the new incidents whose cause matches ``cause`` by ``group_by`` (the
    whole fleet, an environment, a host, or the agents carrying ``tag``). A group forms
    when, within ``window_seconds``, at least ``min_agents`` agents of one such set have
    an open incident of one cause, or at least ``min_percent`` % of the set's enabled
    agents do (whichever is set and reached first; never fewer than two). Incidents
    that join afterwards are members at once. ``wait_seconds`` holds the page of a
    matching incident that is not (yet) in a group, so a storm that forms within that
    time takes it in (Alertmanager's ``group_wait``); 0 pages at once. Rules are
    tried in ``position`` order; the first whose group takes an incident keeps it.
    """

    class GroupBy(models.TextChoices):
        FLEET = "fleet", "The whole fleet"
        ENVIRONMENT = "environment", "Environment"
        HOST = "host", "Host"
        TAG = "tag", "Tag"

    name = models.CharField(max_length=63, unique=True, validators=[_slug])
    enabled = models.BooleanField(default=True)
    position = models.PositiveSmallIntegerField(default=100)
    cause = models.CharField(
        max_length=80,
        default="*",
        help_text="Cause to group: '*' (any), one cause ('heartbeat'), or a prefix ('service:*').",
    )
    group_by = models.CharField(max_length=12, choices=GroupBy.choices, default=GroupBy.FLEET)
    tag = models.CharField(
        max_length=40, blank=True, validators=[RegexValidator(rf"^{_TAG}$", "one tag")]
    )
    min_agents = models.PositiveIntegerField(
        null=True, blank=True, default=20, validators=[MinValueValidator(2)]
    )
    min_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    window_seconds = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(30), MaxValueValidator(86400)]
    )
    wait_seconds = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(3600)],
        help_text="Hold a matching incident's own page this long (0: page at once).",
    )  # fmt: skip
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.group_by == self.GroupBy.TAG and not self.tag:
            raise ValidationError({"tag": "Name the tag whose agents this rule groups."})
        if self.group_by != self.GroupBy.TAG and self.tag:
            raise ValidationError({"tag": "Only rules grouping by tag name a tag."})
        if self.min_agents is None and self.min_percent is None:
            raise ValidationError("Set a number of agents, a percentage, or both.")
        if not re.fullmatch(r"\*|[a-z0-9][a-z0-9_.:-]{0,78}\*?", self.cause or ""):
            raise ValidationError({"cause": "'*', a cause, or a prefix ending in '*'."})

    def matches(self, cause: str) -> bool:
        if self.cause == "*":
            return True
        if self.cause.endswith("*"):
            return cause.startswith(self.cause[:-1])
        return cause == self.cause

    def key_for(self, agent: Agent) -> str | None:
        """The set this agent belongs to under this rule (None: the rule does not apply)."""
        if self.group_by == self.GroupBy.FLEET:
            return "fleet"
        if self.group_by == self.GroupBy.ENVIRONMENT:
            return f"environment={agent.environment}"
        if self.group_by == self.GroupBy.HOST:
            return f"host={agent.host_id}" if agent.host_id else None
        return f"tag={self.tag}" if self.tag in agent.tags.split() else None

    def agents_of(self, key: str, prefix: str = "") -> Q:
        """The agents of the set ``key`` (``prefix`` "agent__" to filter incidents)."""
        if self.group_by == self.GroupBy.FLEET:
            return Q()
        value = key.split("=", 1)[1]
        if self.group_by == self.GroupBy.ENVIRONMENT:
            return Q(**{f"{prefix}environment": value})
        if self.group_by == self.GroupBy.HOST:
            return Q(**{f"{prefix}host_id": int(value)})
        return tag_filter(value, prefix)


class IncidentGroup(models.Model):
    """A storm: the parent incident of many agents failing together with one cause.

    It pages once when it forms, then at most one digest per ``INCIDENT_DIGEST_INTERVAL``
    while members join or recover; escalation runs on it, not on its members. Members
    resolve on their own as their agents recover; the group resolves when the last one
    has (or when a person resolves it, which resolves its open members too).
    """

    rule = models.ForeignKey(GroupingRule, null=True, blank=True, on_delete=models.SET_NULL)
    key = models.CharField(
        max_length=100, help_text="The set grouped, e.g. environment=production."
    )
    cause = models.CharField(max_length=80)
    title = models.CharField(max_length=200)
    severity = models.PositiveSmallIntegerField(choices=Severity.choices)
    status = models.CharField(
        max_length=14, choices=IncidentStatus.choices, default=IncidentStatus.OPEN, db_index=True
    )
    first_seen = models.DateTimeField(help_text="When its first member's condition was observed.")
    last_seen = models.DateTimeField(help_text="When its latest member joined.")
    members_total = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=300, blank=True)
    auto_resolved = models.BooleanField(default=False)
    escalation_level = models.PositiveSmallIntegerField(default=1)
    next_escalation_at = models.DateTimeField(null=True, blank=True, db_index=True)
    notified_at = models.DateTimeField(null=True, blank=True, help_text="Its last page or digest.")
    joined_since_notice = models.PositiveIntegerField(default=0)
    recovered_since_notice = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key", "cause"],
                condition=~Q(status=IncidentStatus.RESOLVED),
                name="one_open_group_per_rule_key_cause",
            )
        ]

    def __str__(self) -> str:
        return f"storm #{self.pk} {self.title}"


class IncidentEvent(models.Model):
    """The incident's timeline: detection → decision → approvals → execution → resolution."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=20)
    message = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Decision(models.Model):
    """What the decider (or the heuristics) chose, and later how it turned out (learning)."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="decisions")
    source = models.CharField(max_length=10, choices=DecisionSource.choices)
    action = models.CharField(max_length=10, choices=DecisionAction.choices)
    patch_version = models.CharField(max_length=40, blank=True)
    confidence = models.FloatField(default=0.0)
    explanation = models.TextField(blank=True)
    fallback_reason = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    outcome_detail = models.CharField(max_length=300, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.action} ({self.source}) for incident {self.incident_id}"


class OpsPolicy(models.Model):
    """The single row deciding what may heal itself (edited in the admin)."""

    auto_remediation_enabled = models.BooleanField(
        default=True, help_text="Kill switch: off cancels attempts that have not reached APPLYING."
    )
    whitelist = models.ManyToManyField(
        Agent, blank=True, help_text="Only these agents are ever patched automatically."
    )
    max_auto_severity = models.PositiveSmallIntegerField(
        choices=Severity.choices, default=Severity.MEDIUM
    )
    multisig_min_severity = models.PositiveSmallIntegerField(
        choices=Severity.choices,
        default=Severity.HIGH,
        help_text="At and above this severity a patch waits for human approvals.",
    )
    canary_percent = models.PositiveSmallIntegerField(
        default=100, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "ops policy"
        verbose_name_plural = "ops policy"

    def __str__(self) -> str:
        return "Ops policy"

    @classmethod
    def current(cls) -> OpsPolicy:
        policy, _ = cls.objects.get_or_create(pk=1)
        return policy


class AgentCommand(models.Model):
    """A command waiting for an agent (delivered in heartbeat responses, then acked/failed)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(max_length=10, choices=CommandKind.choices)
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=CommandStatus.choices, default=CommandStatus.PENDING
    )
    created = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    output = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150)

    class Meta:
        ordering = ["created"]
        indexes = [models.Index(fields=["agent", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} → {self.agent}"


class AutoPatchAttempt(models.Model):
    """staging → apply → health check → success or rollback. Immutable once terminal."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="attempts")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="attempts")
    decision = models.ForeignKey(Decision, on_delete=models.PROTECT, related_name="attempts")
    from_version = models.CharField(max_length=40, blank=True)
    target_version = models.CharField(max_length=40, validators=[_version])
    severity = models.PositiveSmallIntegerField(choices=Severity.choices)
    status = models.CharField(
        max_length=14, choices=AttemptStatus.choices, default=AttemptStatus.PENDING, db_index=True
    )
    needs_approval = models.BooleanField(default=False)
    staging_result = models.CharField(max_length=300, blank=True)
    update_command = models.ForeignKey(
        AgentCommand, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rollback_command = models.ForeignKey(
        AgentCommand, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deadline = models.DateTimeField(null=True, blank=True, db_index=True)
    detail = models.CharField(max_length=300, blank=True)
    created = models.DateTimeField()
    status_changed_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"patch {self.agent} → {self.target_version} ({self.status})"

    @property
    def approval_expires_at(self) -> datetime:
        """When the sweep ends this attempt EXPIRED if it is still PENDING."""
        return self.created + timedelta(seconds=approval_ttl())

    # --- Approvable (multi-signature patches reuse the remediation rules) ----
    @property
    def approval_impact(self) -> str:
        return Impact.HIGH if self.severity >= Severity.CRITICAL else Impact.MEDIUM

    @property
    def approval_requester_id(self) -> int | None:
        return None  # proposed by the system: any approver may sign

    @property
    def approval_confirmation_text(self) -> str:
        return self.agent.name

    def approval_fingerprint(self) -> str:
        return fingerprint_of(
            kind="autopatch",
            id=self.pk,
            agent=self.agent.name,
            from_version=self.from_version,
            target_version=self.target_version,
        )
