"""Incident storms: grouping into parent incidents, digests, dependency suppression.

Borrowed, and changed where it pays:

- Alertmanager's ``group_by`` / ``group_wait`` / ``group_interval``: a ``GroupingRule``
  names the set (fleet, environment, host, tag), ``wait_seconds`` holds a matching
  page while a storm may still form, ``INCIDENT_DIGEST_INTERVAL`` spaces the group's
  digests. Unlike Alertmanager, a group forms only past a threshold (N agents or X % of
  the set within a window), so one failing agent still pages as itself, at once.
- Alertmanager's inhibit rules and the check dependencies Healthchecks users ask for:
  an agent whose host agent (an agent of kind "host" on the same ``pra.Host``) or a
  declared upstream agent (``Agent.depends_on``) is down pages nobody of its own; its
  incident says why, and pages once its upstream is back but it is still down.
- PagerDuty's alert grouping: members stay real incidents with their own timeline and
  auto-resolution; the parent carries paging and escalation.

Writes happen inside the callers' transactions (``incidents.actions``): ``plan`` before
the incidents are inserted (so they are written with their group and suppression),
``settle`` right after. ``sweep`` runs every 30 s with the other incident sweeps.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Min, Q, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from incidents.choices import INCIDENT_OPEN, IncidentStatus, Severity
from incidents.models import Agent, GroupingRule, Incident, IncidentEvent, IncidentGroup
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.lib.bulk import insert_rows
from portal.live import LiveEvent, publish
from portal.notify import notify

logger = logging.getLogger(__name__)

SYSTEM = Actor.system("incidents")
GROUP_OPEN = (IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED)
SEVERITY_LEVEL = {1: "info", 2: "warning", 3: "critical", 4: "critical"}

_cache: tuple[float, list[GroupingRule]] = (0.0, [])
CACHE_SECONDS = 10.0


def active_rules() -> list[GroupingRule]:
    """Enabled grouping rules, re-read at most every 10 s (they are read per new incident)."""
    global _cache
    loaded_at, found = _cache
    if time.monotonic() - loaded_at > CACHE_SECONDS:
        found = list(GroupingRule.objects.filter(enabled=True))
        _cache = (time.monotonic(), found)
    return found


def forget_cached_rules() -> None:
    global _cache
    _cache = (0.0, [])


def group_url(group_id: int) -> str:
    from django.urls import reverse

    return reverse("admin:incidents_incidentgroup_change", args=[group_id])


# --- planning new incidents --------------------------------------------------------------


@dataclass
class Plan:
    """What happens to the incidents about to open (keyed by agent id)."""

    now: datetime
    groups: dict[int, IncidentGroup] = field(default_factory=dict)
    suppressed: dict[int, tuple[int, str]] = field(default_factory=dict)
    held: dict[int, datetime] = field(default_factory=dict)
    formed: list[IncidentGroup] = field(default_factory=list)
    joined: dict[int, int] = field(default_factory=dict)  # existing group id -> new members
    joined_first: dict[int, datetime] = field(default_factory=dict)  # ... -> earliest detected
    # formed group id -> start of its window: settle() takes the earlier incidents in
    earlier_since: dict[int, datetime] = field(default_factory=dict)

    def pages(self, agent_id: int) -> bool:
        """Does this agent's new incident page on its own, now?"""
        return not (agent_id in self.groups or agent_id in self.suppressed or agent_id in self.held)

    def fields(self, agent_id: int, next_escalation_at: datetime) -> dict[str, Any]:
        """The incident's columns this plan decides."""
        group = self.groups.get(agent_id)
        by, why = self.suppressed.get(agent_id, (None, ""))
        pages = self.pages(agent_id)
        return {
            "group_id": group.pk if group else None,
            "suppressed_by_id": by,
            "suppression": why,
            "paged_at": self.now if pages else None,
            "page_due_at": None if group or by else self.held.get(agent_id),
            "next_escalation_at": next_escalation_at if pages else None,
        }

    def audit(self) -> dict[str, Any]:
        """What to add to the batch's audit event (so it stays one per batch)."""
        details: dict[str, Any] = {}
        if self.groups:
            details["grouped"] = {
                str(gid): sorted(a for a, g in self.groups.items() if g.pk == gid)
                for gid in sorted({g.pk for g in self.groups.values()})
            }
        if self.formed:
            details["groups_formed"] = [
                {"group": g.pk, "rule": g.rule_id, "key": g.key, "cause": g.cause}
                for g in self.formed
            ]
        if self.suppressed:
            details["suppressed"] = {str(a): by for a, (by, _) in sorted(self.suppressed.items())}
        if self.held:
            details["held"] = sorted(self.held)
        return details


def plan(
    agents: list[Agent], *, cause: str, severity: int, detected: dict[int, datetime], now
) -> Plan:
    """Decide groups, suppression and held pages for new incidents of ``agents`` (one cause).

    May form groups (a row each; their page goes out in ``settle``). Call it in the
    transaction that then inserts the incidents.
    """
    result = Plan(now=now)
    if not agents:
        return result
    if settings.INCIDENT_SUPPRESS_DEPENDENTS:
        result.suppressed = _suppressors(agents, now)
    remaining = list(agents)
    for rule in active_rules():
        if not rule.matches(cause):
            continue
        buckets: dict[str, list[Agent]] = defaultdict(list)
        for agent in remaining:
            key = rule.key_for(agent)
            if key is not None:
                buckets[key].append(agent)
        for key, members in buckets.items():
            group = _join_or_form(rule, key, cause, members, severity, detected, now, result)
            if group is not None:
                for agent in members:
                    result.groups[agent.pk] = group
            elif rule.wait_seconds:
                due = now + timedelta(seconds=rule.wait_seconds)
                for agent in members:
                    result.held[agent.pk] = max(due, result.held.get(agent.pk, due))
        remaining = [a for a in remaining if a.pk not in result.groups]
    for agent_id in list(result.held):
        if agent_id in result.groups or agent_id in result.suppressed:
            del result.held[agent_id]
    return result


def _suppressors(agents: list[Agent], now) -> dict[int, tuple[int, str]]:
    """Agents whose host agent or an upstream agent is down: agent id -> (that agent, why).

    Down means flagged missing, or past its own deadline (``alert_after``) even if the
    sweep has not flagged it yet: a host whose services' deadlines come first is down
    all the same. Two queries whatever the number of agents.
    """
    found: dict[int, tuple[int, str]] = {}
    down = Q(missing=True) | Q(alert_after__lt=now)
    hosts = {a.host_id for a in agents if a.host_id and a.kind != Agent.Kind.HOST}
    if hosts:
        host_agents: dict[int, tuple[int, str]] = {}
        for pk, name, host_id in (
            Agent.objects.filter(down, kind=Agent.Kind.HOST, enabled=True, host_id__in=hosts)
            .order_by("pk")
            .values_list("pk", "name", "host_id")
        ):
            host_agents.setdefault(host_id, (pk, name))
        for agent in agents:
            if agent.kind != Agent.Kind.HOST and agent.host_id in host_agents:
                pk, name = host_agents[agent.host_id]
                found[agent.pk] = (pk, f"host agent {name} is down")
    through = Agent.depends_on.through
    upstream_down = Q(to_agent__missing=True) | Q(to_agent__alert_after__lt=now)
    for agent_id, upstream_id, name in (
        through.objects.filter(upstream_down, from_agent_id__in=[a.pk for a in agents])
        .filter(to_agent__enabled=True)
        .order_by("to_agent_id")
        .values_list("from_agent_id", "to_agent_id", "to_agent__name")
    ):
        found.setdefault(agent_id, (upstream_id, f"upstream agent {name} is down"))
    return found


def _triggered(rule: GroupingRule, count: int, key: str) -> bool:
    if count < 2:
        return False
    if rule.min_agents is not None and count >= rule.min_agents:
        return True
    if rule.min_percent is None:
        return False
    size = Agent.objects.filter(rule.agents_of(key), enabled=True).count()
    return bool(size) and count * 100 >= rule.min_percent * size


def _join_or_form(rule, key, cause, members, severity, detected, now, result: Plan):
    group = (
        IncidentGroup.objects.select_for_update()
        .filter(rule=rule, key=key, cause=cause, status__in=GROUP_OPEN)
        .first()
    )
    if group is not None:
        _count_joined(result, group, members, detected)
        return group
    since = now - timedelta(seconds=rule.window_seconds)
    earlier = Incident.objects.filter(
        rule.agents_of(key, "agent__"),
        cause=cause,
        status__in=INCIDENT_OPEN,
        group__isnull=True,
        opened_at__gte=since,
    ).aggregate(n=Count("id"), first=Min("detected_at"), worst=Max("severity"))
    count = earlier["n"] + len(members)
    if not _triggered(rule, count, key):
        return None
    first_seen = min([detected[a.pk] for a in members] + [t for t in [earlier["first"]] if t])
    label = cause if cause != "heartbeat" else "missed heartbeats"
    try:
        with transaction.atomic():
            group = IncidentGroup.objects.create(
                rule=rule,
                key=key,
                cause=cause,
                title=f"Storm ({key}): {label}"[:200],
                severity=max(severity, earlier["worst"] or 0),
                first_seen=first_seen,
                last_seen=now,
                members_total=0,
                opened_at=now,
                escalation_level=1,
                next_escalation_at=now + _first_escalation_delay(),
                notified_at=now,
            )
    except IntegrityError:
        # Another sweep or heartbeat formed it a moment ago: join it.
        group = IncidentGroup.objects.get(rule=rule, key=key, cause=cause, status__in=GROUP_OPEN)
        _count_joined(result, group, members, detected)
        return group
    result.earlier_since[group.pk] = since
    result.formed.append(group)
    return group


def _count_joined(result: Plan, group: IncidentGroup, members, detected) -> None:
    result.joined[group.pk] = result.joined.get(group.pk, 0) + len(members)
    first = min(detected[a.pk] for a in members)
    result.joined_first[group.pk] = min(first, result.joined_first.get(group.pk, first))


def _first_escalation_delay() -> timedelta:
    from portal.models import EscalationLevel

    level = EscalationLevel.objects.filter(level=2).first()
    minutes = level.delay_minutes if level else settings.ESCALATION_DELAY_MINUTES
    return timedelta(minutes=minutes)


# --- after the incidents are written -----------------------------------------------------


def settle(result: Plan, opened: list[Incident]) -> None:
    """After the incidents of ``result`` are inserted: formed groups take in the earlier
    incidents of their set and page once; joined groups count their new members; the
    grouped, suppressed and held incidents get a timeline line saying so."""
    now = result.now
    events: list[tuple[int, str, str]] = []
    by_agent = {i.agent_id: i for i in opened}
    for group in result.formed:
        rule = group.rule
        assert rule is not None  # formed from a rule by this plan
        members = [
            by_agent[a] for a, g in result.groups.items() if g.pk == group.pk and a in by_agent
        ]
        earlier = list(
            Incident.objects.filter(
                rule.agents_of(group.key, "agent__"),
                cause=group.cause,
                status__in=INCIDENT_OPEN,
                group__isnull=True,
                opened_at__gte=result.earlier_since[group.pk],
            )
            .exclude(pk__in=[i.pk for i in members])
            .values_list("pk", flat=True)
        )
        if earlier:
            # Escalation moves to the group; their own pages already went out.
            Incident.objects.filter(pk__in=earlier, group__isnull=True).update(
                group=group, next_escalation_at=None, page_due_at=None
            )
            events += [(pk, "GROUPED", _grouped_text(group)) for pk in earlier]
        total = len(members) + len(earlier)
        IncidentGroup.objects.filter(pk=group.pk).update(members_total=total)
        group.members_total = total
        _page_group_opened(group, total)
    for group_id, count in result.joined.items():
        IncidentGroup.objects.filter(pk=group_id).update(
            members_total=F("members_total") + count,
            joined_since_notice=F("joined_since_notice") + count,
            last_seen=now,
            first_seen=Least("first_seen", Value(result.joined_first[group_id])),
            severity=Greatest("severity", max((i.severity for i in opened), default=1)),
        )
    for incident in opened:
        grouped = result.groups.get(incident.agent_id)
        if grouped is not None:
            events.append((incident.pk, "GROUPED", _grouped_text(grouped)))
        if incident.agent_id in result.suppressed:
            _, why = result.suppressed[incident.agent_id]
            events.append((incident.pk, "SUPPRESSED", f"no page of its own: {why}"))
        elif grouped is None and incident.agent_id in result.held:
            due = result.held[incident.agent_id]
            events.append((incident.pk, "HELD",
                           f"page held until {due:%H:%M:%S} in case a storm forms"))  # fmt: skip
    if events:
        insert_rows(
            IncidentEvent,
            {
                "incident": [pk for pk, _, _ in events],
                "kind": [kind for _, kind, _ in events],
                "message": [text[:500] for _, _, text in events],
            },
            {"at": now, "data": {}},
        )


def _grouped_text(group: IncidentGroup) -> str:
    return (
        f"part of storm #{group.pk} ({group.key}, {group.cause}): the storm pages and "
        "escalates, not this incident"
    )


def _page_group_opened(group: IncidentGroup, total: int) -> None:
    label = Severity(group.severity).label
    notify(
        NotificationKind.INCIDENT_OPENED,
        title=f"[{label}] {group.title}: {total:,} agents",
        body=(
            f"{total:,} agents of {group.key} have an open {group.cause} incident "
            f"(first seen {group.first_seen:%Y-%m-%d %H:%M:%S %Z}). One page for all of them; "
            f"digests follow at most every {settings.INCIDENT_DIGEST_INTERVAL} s while the "
            "storm changes."
        ),
        subject=group,
        severity=SEVERITY_LEVEL[group.severity],
        escalation_level=1,
        url=group_url(group.pk),
    )
    _announce(group, f"storm opened: {total:,} agents")


def _announce(group: IncidentGroup, summary: str, *, dashboard: bool = True) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.INCIDENT,
            subject_type="incidents.incidentgroup",
            subject_id=str(group.pk),
            status=group.status,
            summary=summary[:300],
            data={"cause": group.cause, "key": group.key, "severity": group.severity},
        ),
        dashboard=dashboard,
    )


# --- members recovering ------------------------------------------------------------------


def member_resolved(group_id: int) -> bool:
    """A member resolved (in the caller's transaction): count it for the next digest, and
    resolve the group if it was the last open one. True if the group resolved."""
    group = IncidentGroup.objects.select_for_update().filter(pk=group_id).first()
    if group is None or group.status not in GROUP_OPEN:
        return False
    IncidentGroup.objects.filter(pk=group_id).update(
        recovered_since_notice=F("recovered_since_notice") + 1
    )
    if Incident.objects.filter(group_id=group_id, status__in=INCIDENT_OPEN).exists():
        _announce(group, "a member recovered", dashboard=False)  # its page re-reads
        return False
    return _resolve(group, by=None, reason="every member recovered", auto=True)


def _resolve(group: IncidentGroup, *, by, reason: str, auto: bool) -> bool:
    now = timezone.now()
    won = IncidentGroup.objects.filter(pk=group.pk, status__in=GROUP_OPEN).update(
        status=IncidentStatus.RESOLVED,
        resolved_at=now,
        resolution=reason[:300],
        auto_resolved=auto,
        next_escalation_at=None,
    )
    if not won:
        return False
    group.refresh_from_db()
    record(
        AuditEventType.INCIDENT_RESOLVED,
        actor=SYSTEM if auto else by,
        subject=group,
        details={"auto": auto, "reason": reason, "members": group.members_total,
                 "duration_s": round((now - group.opened_at).total_seconds())},
    )  # fmt: skip
    notify(
        NotificationKind.INCIDENT_RESOLVED,
        title=f"Resolved: {group.title}",
        body=f"Storm #{group.pk} ({group.members_total:,} agents) resolved: {reason}",
        subject=group,
        severity="info",
        url=group_url(group.pk),
    )
    _announce(group, f"storm resolved: {reason}")
    return True


# --- people ----------------------------------------------------------------------------


def acknowledge_group(group: IncidentGroup, *, by) -> IncidentGroup:
    """Someone has the storm: its escalation stops."""
    from incidents.actions import IncidentError

    if not (by.has_perm("portal.propose_action") or by.has_perm("portal.approve_action")):
        raise IncidentError("permission", "Only operators and approvers acknowledge incidents.")
    with transaction.atomic():
        won = IncidentGroup.objects.filter(pk=group.pk, status=IncidentStatus.OPEN).update(
            status=IncidentStatus.ACKNOWLEDGED,
            acknowledged_at=timezone.now(),
            acknowledged_by=by,
            next_escalation_at=None,
        )
        if not won:
            group.refresh_from_db()
            raise IncidentError("state", f"Storm #{group.pk} is {group.status}.")
        group.refresh_from_db()
        record(AuditEventType.INCIDENT_ACKNOWLEDGED, actor=by, subject=group, details={})
        _announce(group, f"acknowledged by {by.get_username()}")
    return group


def resolve_group(group: IncidentGroup, *, by, reason: str) -> bool:
    """A person resolves the storm: its open members resolve with the same reason."""
    from incidents import actions
    from portal.lib.text import UnstorableText, refuse_unstorable

    try:
        refuse_unstorable(reason or "", "reason")
    except UnstorableText as exc:
        raise actions.IncidentError("invalid", str(exc)) from None
    reason = " ".join((reason or "").split())[:300]
    if not (by.has_perm("portal.propose_action") or by.has_perm("portal.approve_action")):
        raise actions.IncidentError("permission", "Only operators and approvers resolve incidents.")
    if len(reason) < 5:
        raise actions.IncidentError("reason", "Say how it was resolved (at least 5 characters).")
    with transaction.atomic():
        locked = IncidentGroup.objects.select_for_update().get(pk=group.pk)
        if not _resolve(locked, by=by, reason=reason, auto=False):
            return False
        now = timezone.now()
        ids = list(
            Incident.objects.filter(group=locked, status__in=INCIDENT_OPEN).values_list(
                "pk", flat=True
            )
        )
        Incident.objects.filter(pk__in=ids, status__in=INCIDENT_OPEN).update(
            status=IncidentStatus.RESOLVED,
            resolved_at=now,
            resolution=f"storm #{locked.pk} resolved by {by.get_username()}: {reason}"[:300],
            auto_resolved=False,
            next_escalation_at=None,
            page_due_at=None,
        )
        if ids:
            insert_rows(
                IncidentEvent,
                {"incident": ids},
                {"at": now, "kind": "RESOLVED", "data": {"group": locked.pk},
                 "message": f"resolved with storm #{locked.pk} by {by.get_username()}: {reason}"[
                     :500]},
            )  # fmt: skip
        group.refresh_from_db()
    return True


# --- the sweep ---------------------------------------------------------------------------


def escalate_due(now) -> list[int]:
    """Unacknowledged storms move up one level when their delay has passed (as incidents)."""
    from portal.models import EscalationLevel

    levels = {lvl.level: lvl for lvl in EscalationLevel.objects.all()}
    escalated = []
    for group in IncidentGroup.objects.filter(
        status=IncidentStatus.OPEN, next_escalation_at__lte=now
    ):
        new_level = min(group.escalation_level + 1, 4)
        following = levels.get(new_level + 1)
        delay = following.delay_minutes if following else settings.ESCALATION_DELAY_MINUTES
        next_at = now + timedelta(minutes=delay) if new_level < 4 else None
        with transaction.atomic():
            won = IncidentGroup.objects.filter(
                pk=group.pk, status=IncidentStatus.OPEN, escalation_level=group.escalation_level
            ).update(escalation_level=new_level, next_escalation_at=next_at)
            if not won:
                continue
            name = levels[new_level].name if new_level in levels else f"L{new_level}"
            record(
                AuditEventType.INCIDENT_ESCALATED,
                actor=Actor.system("escalation"),
                subject=group,
                details={"level": new_level},
            )
            open_members = group.members.filter(status__in=INCIDENT_OPEN).count()
            notify(
                NotificationKind.INCIDENT_ESCALATED,
                title=f"[L{new_level} {name}] {group.title}",
                body=(
                    f"Storm #{group.pk} is not acknowledged ({open_members:,} agents still "
                    f"down); escalated to L{new_level}."
                ),
                subject=group,
                severity="critical",
                escalation_level=new_level,
                url=group_url(group.pk),
            )
            group.status = IncidentStatus.OPEN
            _announce(group, f"escalated to L{new_level}")
        escalated.append(group.pk)
    return escalated


def send_digests(now) -> list[int]:
    """One digest per storm that changed since its last message, at most every
    ``INCIDENT_DIGEST_INTERVAL`` seconds. Returns the groups that got one."""
    due = now - timedelta(seconds=settings.INCIDENT_DIGEST_INTERVAL)
    sent = []
    for group in IncidentGroup.objects.filter(status__in=GROUP_OPEN, notified_at__lte=due).filter(
        Q(joined_since_notice__gt=0) | Q(recovered_since_notice__gt=0)
    ):
        joined, recovered = group.joined_since_notice, group.recovered_since_notice
        with transaction.atomic():
            # Counted down, not zeroed: members joining meanwhile go in the next digest.
            won = IncidentGroup.objects.filter(
                pk=group.pk, notified_at=group.notified_at, status__in=GROUP_OPEN
            ).update(
                notified_at=now,
                joined_since_notice=F("joined_since_notice") - joined,
                recovered_since_notice=F("recovered_since_notice") - recovered,
            )
            if not won:
                continue
            still = group.members.filter(status__in=INCIDENT_OPEN).count()
            notify(
                NotificationKind.INCIDENT_DIGEST,
                title=f"[{Severity(group.severity).label}] {group.title}: {still:,} still down",
                body=(
                    f"Storm #{group.pk} ({group.key}, {group.cause}) since "
                    f"{group.notified_at:%H:%M:%S %Z}: {joined:,} more agents, {recovered:,} "
                    f"recovered; {still:,} of {group.members_total:,} still down. Last seen "
                    f"{group.last_seen:%H:%M:%S %Z}."
                ),
                subject=group,
                severity=SEVERITY_LEVEL[group.severity],
                url=group_url(group.pk),
            )
            _announce(group, f"digest: {joined:,} more, {recovered:,} recovered, {still:,} down")
        sent.append(group.pk)
    return sent


def release_held(now) -> list[int]:
    """Held pages whose wait is over and that no storm took in page now; suppressed
    incidents whose upstream is back (but which are still open) page now too."""
    from incidents import actions

    held = list(
        Incident.objects.filter(page_due_at__lte=now).values_list("pk", "group_id", "status")
    )
    drop = [pk for pk, group_id, status in held if group_id or status not in INCIDENT_OPEN]
    if drop:
        Incident.objects.filter(pk__in=drop).update(page_due_at=None)
    release = {pk: "the wait of its grouping rule ended without a storm"
               for pk, group_id, status in held if pk not in drop}  # fmt: skip
    suppressed = (
        Incident.objects.filter(
            suppressed_by__isnull=False,
            paged_at__isnull=True,
            group__isnull=True,
            status__in=INCIDENT_OPEN,
        )
        .select_related("suppressed_by")
        .only("pk", "suppressed_by__missing", "suppressed_by__alert_after",
              "suppressed_by__name", "suppressed_by__enabled")
    )  # fmt: skip
    for incident in suppressed:
        upstream = incident.suppressed_by
        assert upstream is not None  # selected with suppressed_by__isnull=False
        still_down = upstream.enabled and (
            upstream.missing or (upstream.alert_after is not None and upstream.alert_after < now)
        )
        if not still_down:
            release[incident.pk] = f"{upstream.name} is back but this agent is still down"
    if release:
        actions.page_now(release)
    return sorted(release)


def resolve_finished(now) -> list[int]:
    """Safety net: an open storm with no open member left resolves (a member resolved in
    a race with the storm forming)."""
    done = []
    for group in IncidentGroup.objects.filter(status__in=GROUP_OPEN).exclude(
        members__status__in=INCIDENT_OPEN
    ):
        with transaction.atomic():
            if _resolve(group, by=None, reason="every member recovered", auto=True):
                done.append(group.pk)
    return done


def sweep(now=None) -> dict[str, list[int]]:
    now = now or timezone.now()
    return {
        "held_or_released": release_held(now),
        "digests": send_digests(now),
        "storms_escalated": escalate_due(now),
        "storms_resolved": resolve_finished(now),
    }
