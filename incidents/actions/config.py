"""Configuration of the incident side: the ops policy (with its kill switch), agents,
detection rules and grouping rules. Admin, API and commands call these; each write
is validated (``full_clean``), done in one transaction and audited exactly once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.contrib.auth.models import User
from django.db import transaction

from incidents.actions.autopatch import cancel_pending_attempts
from incidents.actions.common import IncidentError
from incidents.models import Agent, DetectionRule, GroupingRule, OpsPolicy
from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib import configedit
from portal.lib.permissions import require_perm
from portal.lib.text import UnstorableText, refuse_unstorable

MANAGE_PERMISSION = "portal.manage_portal"

By = User | Actor | str

POLICY_EDITABLE = (
    "auto_remediation_enabled",
    "whitelist",
    "max_auto_severity",
    "multisig_min_severity",
    "canary_percent",
)

AGENT_EDITABLE = (
    "name", "kind", "owner", "environment", "host", "expected_period", "grace",
    "available_version", "tags", "depends_on", "enabled",
)  # fmt: skip

RULE_EDITABLE = ("key", "kind", "metric", "warning", "critical", "enabled", "description")

GROUPING_EDITABLE = (
    "name", "enabled", "position", "cause", "group_by", "tag", "min_agents", "min_percent",
    "window_seconds", "wait_seconds", "description",
)  # fmt: skip


def _manager(by: By, what: str) -> Actor:
    actor = Actor.of(by)
    require_perm(actor.user, MANAGE_PERMISSION, what, IncidentError)
    return actor


def _storable(fields: dict[str, Any]) -> None:
    try:
        refuse_unstorable({k: v for k, v in fields.items() if isinstance(v, str)})
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None


class PolicyUpdate(NamedTuple):
    policy: OpsPolicy
    changes: configedit.Diff
    cancelled: list[int]


def update_policy(*, by: By, **changes: Any) -> PolicyUpdate:
    """Change the ops policy (``POLICY_EDITABLE``): one POLICY_CHANGED event, none if
    nothing changed. Turning auto-remediation off (the kill switch) cancels, in the same
    transaction, every attempt that has not reached APPLYING."""
    actor = _manager(by, "change the ops policy")
    with transaction.atomic():
        pk = OpsPolicy.current().pk
        policy, diff = configedit.update(
            OpsPolicy, pk, changes, editable=POLICY_EDITABLE, error=IncidentError,
            what="ops policy",
        )  # fmt: skip
        if not diff:
            return PolicyUpdate(policy, diff, [])
        switched_off = "auto_remediation_enabled" in diff and not policy.auto_remediation_enabled
        cancelled = cancel_pending_attempts("kill switch turned off") if switched_off else []
        record(
            AuditEventType.POLICY_CHANGED,
            actor=actor,
            subject=policy,
            details={
                "changes": diff,
                "enabled": policy.auto_remediation_enabled,
                "cancelled": cancelled,
            },
        )
    return PolicyUpdate(policy, diff, cancelled)


def set_kill_switch(enabled: bool, *, by: By) -> list[int]:
    """Turn auto-remediation on or off; off cancels attempts not yet APPLYING."""
    return update_policy(by=by, auto_remediation_enabled=enabled).cancelled


def update_agent(agent: Agent | int, *, by: By, **changes: Any) -> Agent:
    """Change an agent's settings (``AGENT_EDITABLE``; never its secret: see
    ``rotate_agent_secret``): one AGENT_UPDATED event with old and new values."""
    actor = _manager(by, "change agents")
    _storable(changes)
    pk = agent.pk if isinstance(agent, Agent) else agent
    with transaction.atomic():
        saved, diff = configedit.update(
            Agent, pk, changes, editable=AGENT_EDITABLE, error=IncidentError, what="agent"
        )
        if diff:
            record(
                AuditEventType.AGENT_UPDATED,
                actor=actor,
                subject=saved,
                details={"name": saved.name, "changes": diff},
            )
    return saved


def _forget_rules() -> None:
    from incidents.rules import forget_cached_rules

    forget_cached_rules()


def create_rule(*, by: By, **fields: Any) -> DetectionRule:
    """Add a detection rule (one DETECTION_RULE_CHANGED event, change "created")."""
    actor = _manager(by, "change detection rules")
    _storable(fields)
    with transaction.atomic():
        rule = configedit.create(
            DetectionRule, fields, editable=RULE_EDITABLE, error=IncidentError,
            what="detection rule",
        )  # fmt: skip
        record(
            AuditEventType.DETECTION_RULE_CHANGED,
            actor=actor,
            subject=rule,
            details={"change": "created", **configedit.values(rule, RULE_EDITABLE)},
        )
    _forget_rules()
    return rule


def update_rule(rule: DetectionRule | int, *, by: By, **changes: Any) -> DetectionRule:
    """Change a detection rule's thresholds or switch it (one DETECTION_RULE_CHANGED event
    with old and new values; nothing if unchanged). The admin's list editing calls it too."""
    actor = _manager(by, "change detection rules")
    _storable(changes)
    pk = rule.pk if isinstance(rule, DetectionRule) else rule
    with transaction.atomic():
        saved, diff = configedit.update(
            DetectionRule, pk, changes, editable=RULE_EDITABLE, error=IncidentError,
            what="detection rule",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.DETECTION_RULE_CHANGED,
                actor=actor,
                subject=saved,
                details={"change": "updated", "key": saved.key, "changes": diff},
            )
    _forget_rules()
    return saved


def _grouping_details(rule: GroupingRule, created: bool) -> dict[str, Any]:
    return {
        "grouping_rule": rule.name, "enabled": rule.enabled, "cause": rule.cause,
        "group_by": rule.group_by, "tag": rule.tag, "min_agents": rule.min_agents,
        "min_percent": rule.min_percent, "window_seconds": rule.window_seconds,
        "wait_seconds": rule.wait_seconds, "created": created,
    }  # fmt: skip


def _forget_grouping() -> None:
    from incidents import storms

    storms.forget_cached_rules()


def create_grouping_rule(*, by: By, **fields: Any) -> GroupingRule:
    """Add a storm grouping rule (one POLICY_CHANGED event naming it)."""
    actor = _manager(by, "change grouping rules")
    _storable(fields)
    with transaction.atomic():
        rule = configedit.create(
            GroupingRule, fields, editable=GROUPING_EDITABLE, error=IncidentError,
            what="grouping rule",
        )  # fmt: skip
        record(
            AuditEventType.POLICY_CHANGED,
            actor=actor,
            subject=rule,
            details=_grouping_details(rule, created=True),
        )
    _forget_grouping()
    return rule


def update_grouping_rule(rule: GroupingRule | int, *, by: By, **changes: Any) -> GroupingRule:
    """Change a storm grouping rule (one POLICY_CHANGED event; nothing if unchanged)."""
    actor = _manager(by, "change grouping rules")
    _storable(changes)
    pk = rule.pk if isinstance(rule, GroupingRule) else rule
    with transaction.atomic():
        saved, diff = configedit.update(
            GroupingRule, pk, changes, editable=GROUPING_EDITABLE, error=IncidentError,
            what="grouping rule",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.POLICY_CHANGED,
                actor=actor,
                subject=saved,
                details={**_grouping_details(saved, created=False), "changes": diff},
            )
    _forget_grouping()
    return saved
