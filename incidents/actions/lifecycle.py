"""An incident's life: opening or updating, storms and paging, acknowledging, resolving,
escalating."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from incidents import storms
from incidents.actions.common import (
    DECIDE_BATCH_TIMEOUT,
    SYSTEM,
    IncidentError,
    _announce,
    _event,
    _job,
)
from incidents.choices import (
    INCIDENT_OPEN,
    INCIDENT_TRANSITIONS,
    IncidentStatus,
    Severity,
)
from incidents.models import (
    Agent,
    Incident,
    IncidentEvent,
)
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.lib.bulk import insert_rows
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.live import LiveEvent, publish
from portal.notify import notify, notify_many
from portal.roles import may

SEVERITY_LEVEL = {Severity.LOW: "info", Severity.MEDIUM: "warning", Severity.HIGH: "critical",
                  Severity.CRITICAL: "critical"}  # fmt: skip


def _first_escalation_delay() -> timedelta:
    from portal.models import EscalationLevel

    level = EscalationLevel.objects.filter(level=2).first()
    minutes = level.delay_minutes if level else settings.ESCALATION_DELAY_MINUTES
    return timedelta(minutes=minutes)


def open_or_update_incident(
    agent: Agent,
    *,
    cause: str,
    rule_id: int | None,
    severity: int,
    title: str,
    telemetry: dict[str, Any],
    detected_at: datetime,
    now: datetime | None = None,
) -> tuple[Incident, bool]:
    """One open incident per agent and cause: a repeat updates it. Returns (incident, created).

    ``now`` (default: the clock) is when it opens or repeats; tests pass their own."""
    with transaction.atomic():
        return _open_or_update(
            agent, cause=cause, rule_id=rule_id, severity=severity, title=title,
            telemetry=telemetry, detected_at=detected_at, now=now,
        )  # fmt: skip


def _open_or_update(
    agent: Agent,
    *,
    cause: str,
    rule_id: int | None,
    severity: int,
    title: str,
    telemetry: dict[str, Any],
    detected_at: datetime,
    now: datetime | None = None,
) -> tuple[Incident, bool]:
    now = now or timezone.now()
    existing = (
        Incident.objects.select_for_update()
        .filter(agent=agent, cause=cause, status__in=INCIDENT_OPEN)
        .first()
    )
    if existing is not None:
        raised = severity > existing.severity
        Incident.objects.filter(pk=existing.pk).update(
            last_seen_at=now,
            occurrences=F("occurrences") + 1,
            severity=max(existing.severity, severity),
            telemetry=telemetry,
            title=title if raised else existing.title,
        )
        existing.refresh_from_db()
        if raised:
            _event(existing, "SEVERITY", f"severity raised to {Severity(severity).label}: {title}")
            _announce(existing, f"severity raised: {title}")
        return existing, False
    _load_for_storms([agent])
    try:
        with transaction.atomic():
            plan = storms.plan(
                [agent], cause=cause, severity=severity, detected={agent.pk: detected_at}, now=now
            )
            incident = Incident.objects.create(
                agent=agent,
                cause=cause,
                rule_id=rule_id,
                title=title[:200],
                severity=severity,
                detected_at=detected_at,
                opened_at=now,
                last_seen_at=now,
                telemetry=telemetry,
                escalation_level=1,
                **plan.fields(agent.pk, now + _first_escalation_delay()),
            )
    except IntegrityError:
        # Another heartbeat opened it a moment ago: count this one as a repeat.
        return _open_or_update(
            agent, cause=cause, rule_id=rule_id, severity=severity, title=title,
            telemetry=telemetry, detected_at=detected_at, now=now,
        )  # fmt: skip
    _event(incident, "DETECTED", title, cause=cause, severity=severity)
    storms.settle(plan, [incident])
    record(
        AuditEventType.INCIDENT_OPENED,
        actor=SYSTEM,
        subject=incident,
        details={"agent": agent.name, "cause": cause, "severity": severity, "title": title,
                 **plan.audit()},
    )  # fmt: skip
    if plan.pages(agent.pk):
        notify(
            NotificationKind.INCIDENT_OPENED,
            title=f"[{Severity(severity).label}] {agent.name}: {title}",
            body=f"Incident #{incident.pk} opened for {agent.name} ({cause}).",
            subject=incident,
            severity=SEVERITY_LEVEL[Severity(severity)],
            escalation_level=1,
            url=_admin_url(incident),
        )
        _job("incidents.jobs.decide", incident.pk, job_id=f"incident-decide-{incident.pk}")
    _announce(incident, f"opened: {title}")
    return incident, True


_STORM_FIELDS = {"kind", "host_id", "tags", "environment"}


def _load_for_storms(agents: list[Agent]) -> None:
    """Grouping and suppression read these; the heartbeat path loads agents lean."""
    for agent in agents:
        missing = agent.get_deferred_fields() & _STORM_FIELDS
        if missing:
            agent.refresh_from_db(fields=sorted(missing))


def _admin_url(incident: Incident) -> str:
    from django.urls import reverse

    return reverse("admin:incidents_incident_change", args=[incident.pk])


def _move_incident(incident: Incident, new: str, **fields: Any) -> bool:
    allowed = [s for s, targets in INCIDENT_TRANSITIONS.items() if new in targets]
    won = Incident.objects.filter(pk=incident.pk, status__in=allowed).update(status=new, **fields)
    if won:
        incident.refresh_from_db()
    return bool(won)


def acknowledge_incident(incident: Incident, *, by: User) -> Incident:
    """Someone has it: stops escalation."""
    if not by.has_perm("portal.view_portal") or not (
        by.has_perm("portal.propose_action") or by.has_perm("portal.approve_action")
    ):
        raise IncidentError("permission", "Only operators and approvers acknowledge incidents.")
    with transaction.atomic():
        if incident.status != IncidentStatus.OPEN or not _move_incident(
            incident,
            IncidentStatus.ACKNOWLEDGED,
            acknowledged_at=timezone.now(),
            acknowledged_by=by,
            next_escalation_at=None,
        ):
            raise IncidentError("state", f"Incident #{incident.pk} is {incident.status}.")
        _event(incident, "ACKNOWLEDGED", f"acknowledged by {by.get_username()}")
        record(AuditEventType.INCIDENT_ACKNOWLEDGED, actor=by, subject=incident, details={})
        _announce(incident, f"acknowledged by {by.get_username()}")
    return incident


def resolve_incident(
    incident: Incident, *, by: User | Actor | str | None, reason: str, auto: bool = False
) -> bool:
    """Resolve (manually, or automatically when the condition cleared). False if already so."""
    try:
        refuse_unstorable(reason or "", "reason")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    reason = " ".join((reason or "").split())[:300]
    if not auto:
        if not may(by, "portal.propose_action") and not may(by, "portal.approve_action"):
            raise IncidentError("permission", "Only operators and approvers resolve incidents.")
        if len(reason) < 5:
            raise IncidentError("reason", "Say how it was resolved (at least 5 characters).")
    with transaction.atomic():
        now = timezone.now()
        if not _move_incident(
            incident,
            IncidentStatus.RESOLVED,
            resolved_at=now,
            resolution=reason,
            auto_resolved=auto,
            next_escalation_at=None,
            page_due_at=None,
        ):
            return False
        who = SYSTEM if auto or by is None else Actor.of(by)
        label = "auto-resolved" if auto else f"resolved by {who.label}"
        _event(incident, "RESOLVED", f"{label}: {reason}", auto=auto)
        record(
            AuditEventType.INCIDENT_RESOLVED,
            actor=who,
            subject=incident,
            details={
                "auto": auto,
                "reason": reason,
                "mttr_s": round((now - incident.opened_at).total_seconds()),
            },
        )
        # Only what paged on its own says "resolved" on its own: a storm's members recover
        # in its digests, and the storm says when the last one has.
        if incident.paged_at is not None and incident.group_id is None:
            notify(
                NotificationKind.INCIDENT_RESOLVED,
                title=f"Resolved: {incident.agent.name}: {incident.title}",
                body=f"Incident #{incident.pk} {label}: {reason}",
                subject=incident,
                severity="info",
                url=_admin_url(incident),
            )
        if incident.group_id is not None:
            # A storm's members recovering: their pages and the storm's hear it; the
            # dashboard hears the storm (its digests, its end), not thousands of members.
            storms.member_resolved(incident.group_id)
            _announce(incident, label, dashboard=False)
        else:
            _announce(incident, label)
    return True


def open_incidents(
    agents: list[Agent],
    *,
    cause: str,
    rule_id: int | None,
    severity: int,
    title: Callable[[Agent], str],
    telemetry: Callable[[Agent], dict[str, Any]],
    detected_at: Callable[[Agent], datetime],
    now: datetime | None = None,
) -> tuple[list[Incident], list[Incident]]:
    """``open_or_update_incident`` for many agents and one cause, in a fixed number of
    statements: returns (opened, updated).

    ``title``, ``telemetry`` and ``detected_at`` are functions of the agent. Call it in
    a transaction that holds the agents' rows (the sweep does). Per new incident it
    writes the same as the single path (incident, DETECTED event, notifications, a
    decision queued); per batch one audit event naming the agents and incidents, one
    live event for dashboards (a page per incident would make every open dashboard
    reload once per incident) and one job deciding them all. Repeats (an incident
    already open for the agent and cause) are rare here and go one by one.

    Storms and dependencies (``incidents.storms``): incidents a grouping rule puts in a
    storm, or whose host or upstream agent is down, or whose page a rule holds, are
    written as such and neither page nor get a decision of their own; the storm pages.
    """
    if not agents:
        return [], []
    now = now or timezone.now()
    existing = set(
        Incident.objects.filter(
            agent_id__in=[a.pk for a in agents], cause=cause, status__in=INCIDENT_OPEN
        ).values_list("agent_id", flat=True)
    )
    fresh = [a for a in agents if a.pk not in existing]
    updated = []
    for agent in agents:
        if agent.pk in existing:
            incident, _ = _open_or_update(
                agent, cause=cause, rule_id=rule_id, severity=severity, title=title(agent),
                telemetry=telemetry(agent), detected_at=detected_at(agent), now=now,
            )  # fmt: skip
            updated.append(incident)
    if not fresh:
        return [], updated
    next_at = now + _first_escalation_delay()
    titles = [title(agent)[:200] for agent in fresh]
    detected = {agent.pk: detected_at(agent) for agent in fresh}
    shared = {
        "cause": cause, "rule": rule_id, "severity": severity, "status": IncidentStatus.OPEN,
        "opened_at": now, "last_seen_at": now, "occurrences": 1, "escalation_level": 1,
        "auto_resolved": False, "resolution": "",
    }  # fmt: skip
    _load_for_storms(fresh)
    try:
        with transaction.atomic():
            plan = storms.plan(fresh, cause=cause, severity=severity, detected=detected, now=now)
            decided = [plan.fields(agent.pk, next_at) for agent in fresh]
            varying: dict[str, list[Any]] = {
                "agent": [agent.pk for agent in fresh],
                "title": titles,
                "detected_at": [detected[agent.pk] for agent in fresh],
                "telemetry": [telemetry(agent) for agent in fresh],
                **{name: [d[name] for d in decided] for name in _PLANNED},
            }
            created = insert_rows(Incident, varying, shared, returning=("id", "agent"))
    except IntegrityError:
        # Someone opened one of them a moment ago (the single path does not lock the
        # agent row): the one-by-one path sorts out which are repeats.
        opened: list[Incident] = []
        more: list[Incident] = []
        for agent in fresh:
            incident, was_created = _open_or_update(
                agent, cause=cause, rule_id=rule_id, severity=severity, title=title(agent),
                telemetry=telemetry(agent), detected_at=detected_at(agent), now=now,
            )  # fmt: skip
            (opened if was_created else more).append(incident)
        return opened, updated + more
    position = {agent.pk: i for i, agent in enumerate(fresh)}
    opened = []
    for pk, agent_id in created:
        i = position[agent_id]
        fields = {**shared, "title": titles[i], "detected_at": detected[agent_id],
                  "telemetry": varying["telemetry"][i], **decided[i]}  # fmt: skip
        fields["rule_id"] = fields.pop("rule")
        opened.append(Incident(pk=pk, agent=fresh[i], **fields))
    insert_rows(
        IncidentEvent,
        {"incident": [i.pk for i in opened], "message": [i.title[:500] for i in opened]},
        {"at": now, "kind": "DETECTED", "data": {"cause": cause, "severity": severity}},
    )
    storms.settle(plan, opened)
    record(
        AuditEventType.INCIDENT_OPENED,
        actor=SYSTEM,
        subject=("incidents.incident", str(opened[0].pk)) if len(opened) == 1 else None,
        details={
            "cause": cause,
            "severity": severity,
            "count": len(opened),
            "agents": [i.agent_id for i in opened],
            "incidents": [i.pk for i in opened],
            **plan.audit(),
        },
    )
    paged = [i for i in opened if plan.pages(i.agent_id)]
    _page(paged, cause=cause, severity=severity)
    _announce_many(opened, cause)
    return opened, updated


_PLANNED = ("group_id", "suppressed_by_id", "suppression", "paged_at", "page_due_at",
            "next_escalation_at")  # fmt: skip


def _page(incidents: list[Incident], *, cause: str, severity: int) -> None:
    """Their own pages (one notification batch) and one job deciding them."""
    if not incidents:
        return
    label = Severity(severity).label
    url = _admin_url_of()
    notify_many(
        NotificationKind.INCIDENT_OPENED,
        [
            {
                "title": f"[{label}] {i.agent.name}: {i.title}",
                "body": f"Incident #{i.pk} opened for {i.agent.name} ({cause}).",
                "subject": i,
                "url": url(i.pk),
            }
            for i in incidents
        ],
        severity=SEVERITY_LEVEL[Severity(severity)],
        escalation_level=1,
    )
    ids = [i.pk for i in incidents]
    _job(
        "incidents.jobs.decide_many",
        ids,
        job_id=f"incident-decide-batch-{ids[0]}-{ids[-1]}",
        job_timeout=DECIDE_BATCH_TIMEOUT,
    )


def page_now(reasons: dict[int, str]) -> list[int]:
    """Incidents open without a page of their own (held by a grouping rule's wait, or
    suppressed by an upstream that is back) page now, as if just opened: their page,
    escalation from now, a decision. ``reasons``: incident id -> why, on the timeline."""
    now = timezone.now()
    with transaction.atomic():
        incidents = list(
            Incident.objects.select_for_update(of=("self",))
            .select_related("agent")
            .filter(pk__in=list(reasons), paged_at__isnull=True, group__isnull=True,
                    status__in=INCIDENT_OPEN)
            .order_by("pk")
        )  # fmt: skip
        if not incidents:
            return []
        ids = [i.pk for i in incidents]
        Incident.objects.filter(pk__in=ids).update(
            paged_at=now, page_due_at=None, next_escalation_at=now + _first_escalation_delay()
        )
        insert_rows(
            IncidentEvent,
            {"incident": ids, "message": [f"paged now: {reasons[pk]}"[:500] for pk in ids]},
            {"at": now, "kind": "PAGED", "data": {}},
        )
        record(
            AuditEventType.INCIDENT_ESCALATED,
            actor=SYSTEM,
            subject=("incidents.incident", str(ids[0])) if len(ids) == 1 else None,
            details={"level": 1, "paged": ids, "agents": [i.agent_id for i in incidents]},
        )
        by_kind: dict[tuple[str, int], list[Incident]] = {}
        for incident in incidents:
            by_kind.setdefault((incident.cause, incident.severity), []).append(incident)
        for (cause, severity), group in by_kind.items():
            _page(group, cause=cause, severity=severity)
    return ids


def _admin_url_of() -> Callable[[int], str]:
    """``_admin_url`` for many incidents: one ``reverse`` (~0.2 ms each) for all of them."""
    from django.urls import reverse

    pattern = reverse("admin:incidents_incident_change", args=[999999999])
    return lambda pk: pattern.replace("999999999", str(pk))


def _announce_many(opened: list[Incident], cause: str) -> None:
    if len(opened) == 1:
        _announce(opened[0], f"opened: {opened[0].title}")
        return
    first, last = opened[0], opened[-1]
    publish(
        LiveEvent(
            kind=LiveEventKind.INCIDENT,
            subject_type="incidents.incident",
            subject_id=f"{first.pk}-{last.pk}",
            status=IncidentStatus.OPEN,
            summary=f"opened {len(opened)} incidents ({cause}): {first.agent.name} … "
            f"{last.agent.name}"[:300],
            data={
                "cause": cause,
                "count": len(opened),
                "severity": first.severity,
                "severity_label": Severity(first.severity).label,
            },
        )  # fmt: skip
    )


def escalate_due(now: datetime | None = None) -> list[int]:
    """Unacknowledged incidents move up one level (L1 → L4) when their delay has passed."""
    from portal.models import EscalationLevel

    now = now or timezone.now()
    levels = {lvl.level: lvl for lvl in EscalationLevel.objects.all()}
    escalated = []
    for incident in Incident.objects.select_related("agent").filter(
        status=IncidentStatus.OPEN, next_escalation_at__lte=now
    ):
        new_level = min(incident.escalation_level + 1, 4)
        following = levels.get(new_level + 1)
        next_at = (
            now
            + timedelta(
                minutes=following.delay_minutes if following else settings.ESCALATION_DELAY_MINUTES
            )
            if new_level < 4
            else None
        )
        with transaction.atomic():
            won = Incident.objects.filter(
                pk=incident.pk,
                status=IncidentStatus.OPEN,
                escalation_level=incident.escalation_level,
            ).update(escalation_level=new_level, next_escalation_at=next_at)
            if not won:
                continue
            incident.escalation_level = new_level
            name = levels[new_level].name if new_level in levels else f"L{new_level}"
            _event(incident, "ESCALATED", f"escalated to L{new_level} ({name})")
            record(
                AuditEventType.INCIDENT_ESCALATED,
                actor=Actor.system("escalation"),
                subject=incident,
                details={"level": new_level},
            )
            notify(
                NotificationKind.INCIDENT_ESCALATED,
                title=f"[L{new_level} {name}] {incident.agent.name}: {incident.title}",
                body=f"Incident #{incident.pk} is not acknowledged; escalated to L{new_level}.",
                subject=incident,
                severity="critical",
                escalation_level=new_level,
                url=_admin_url(incident),
            )
            _announce(incident, f"escalated to L{new_level}")
        escalated.append(incident.pk)
    return escalated
