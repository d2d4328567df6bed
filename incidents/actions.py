"""Every write to incident state. The API, admin, jobs and the agent path call these.

Status moves are compare-and-swap updates; audit rows go in the same
transaction; live events, notifications and jobs go out on commit.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from incidents import decider, rules, storms
from incidents.choices import (
    ATTEMPT_CANCELLABLE,
    ATTEMPT_TRANSITIONS,
    INCIDENT_OPEN,
    INCIDENT_TRANSITIONS,
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
from incidents.models import (
    Agent,
    AgentCommand,
    AutoPatchAttempt,
    Decision,
    DetectionRule,
    HeartbeatSample,
    Incident,
    IncidentEvent,
    OpsPolicy,
    approval_ttl,
)
from incidents.signing import SEAL_PURPOSE, Signed, StaleRequest, check_order
from portal import approvals
from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.errors import RequestRefused
from portal.lib.bulk import insert_rows
from portal.lib.secretbox import seal
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.live import LiveEvent, publish
from portal.notify import notify, notify_many

logger = logging.getLogger(__name__)

SYSTEM = Actor.system("incidents")
STAGING_GRACE = 60  # seconds past STAGING_TIMEOUT before a STAGING attempt counts as lost
REQUEUE_AFTER = 30  # seconds a runnable PENDING attempt may wait before its job is checked
SEVERITY_LEVEL = {Severity.LOW: "info", Severity.MEDIUM: "warning", Severity.HIGH: "critical",
                  Severity.CRITICAL: "critical"}  # fmt: skip


class IncidentError(RequestRefused):
    """A refused incident request."""


def _job(func_path: str, *args: Any, job_id: str, queue: str = "default", **options: Any) -> None:
    import django_rq

    transaction.on_commit(
        lambda: django_rq.get_queue(queue).enqueue(
            func_path, *args, job_id=job_id, result_ttl=3600, **options
        )
    )


# --- agents --------------------------------------------------------------------------


def create_agent(*, name: str, by: Actor | Any = "system:cli", **fields: Any) -> tuple[Agent, str]:
    """Register an agent; returns it and its secret, which is shown once and stored sealed."""
    from django.core.exceptions import ValidationError

    try:
        refuse_unstorable({"name": name, **fields})
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    secret = secrets.token_urlsafe(32)
    agent = Agent(name=name, secret_sealed=seal(secret, purpose=SEAL_PURPOSE), **fields)
    try:
        agent.full_clean()
    except ValidationError as exc:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        raise IncidentError("invalid", problems) from None
    with transaction.atomic():
        agent.save()
        record(
            AuditEventType.AGENT_CREATED,
            actor=by,
            subject=agent,
            details={"name": name, "kind": agent.kind, "environment": agent.environment},
        )
    return agent, secret


def rotate_agent_secret(agent: Agent, *, by: Actor | Any) -> str:
    """A new secret, shown once. It also clears the replay high-water mark: nothing signed
    with the old secret passes any more, and an agent whose clock ran ahead can start over."""
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(
            secret_sealed=seal(secret, purpose=SEAL_PURPOSE), last_signed_us=None, last_nonce=""
        )
        record(AuditEventType.AGENT_SECRET_ROTATED, actor=by, subject=agent, details={})
    return secret


# --- incidents -----------------------------------------------------------------------


def _event(incident: Incident, kind: str, message: str, **data: Any) -> None:
    IncidentEvent.objects.create(
        incident=incident, at=timezone.now(), kind=kind, message=message[:500], data=data
    )


def _announce(incident: Incident, summary: str, *, dashboard: bool = True) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.INCIDENT,
            subject_type="incidents.incident",
            subject_id=str(incident.pk),
            status=incident.status,
            summary=summary[:300],
            data={
                "agent": incident.agent.name,
                "severity": incident.severity,
                "severity_label": Severity(incident.severity).label,
                "cause": incident.cause,
                "title": incident.title,
            },
        ),
        dashboard=dashboard,
    )


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
    telemetry: dict,
    detected_at,
    now=None,
) -> tuple[Incident, bool]:
    """One open incident per agent and cause: a repeat updates it. Returns (incident, created).

    ``now`` (default: the clock) is when it opens or repeats; tests pass their own."""
    with transaction.atomic():
        return _open_or_update(
            agent, cause=cause, rule_id=rule_id, severity=severity, title=title,
            telemetry=telemetry, detected_at=detected_at, now=now,
        )  # fmt: skip


def _open_or_update(agent, *, cause, rule_id, severity, title, telemetry, detected_at, now=None):
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
            severity=SEVERITY_LEVEL[severity],
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


def acknowledge_incident(incident: Incident, *, by) -> Incident:
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


def resolve_incident(incident: Incident, *, by, reason: str, auto: bool = False) -> bool:
    """Resolve (manually, or automatically when the condition cleared). False if already so."""
    try:
        refuse_unstorable(reason or "", "reason")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    reason = " ".join((reason or "").split())[:300]
    if not auto:
        if not by.has_perm("portal.propose_action") and not by.has_perm("portal.approve_action"):
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
        label = "auto-resolved" if auto else f"resolved by {by.get_username()}"
        _event(incident, "RESOLVED", f"{label}: {reason}", auto=auto)
        record(
            AuditEventType.INCIDENT_RESOLVED,
            actor=SYSTEM if auto else by,
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


# --- heartbeats ----------------------------------------------------------------------


def ingest_heartbeat(
    agent: Agent,
    *,
    version: str,
    environment: str,
    telemetry: dict,
    signed_us: int,
    nonce: str,
) -> list[dict]:
    """Record one heartbeat, evaluate the rules, and return the agent's pending commands.

    The hot path is one UPDATE of the agent row plus one INSERT of the sample;
    anything more happens only when something changed. The UPDATE is also the replay
    check: it applies only if ``signed_us`` is later than the agent's high-water mark
    (see ``incidents.signing``), else ``IncidentError("stale")`` and nothing is written.
    """
    now = timezone.now()
    alert_after = now + timedelta(seconds=agent.expected_period + agent.grace)
    with transaction.atomic():
        won = (
            Agent.objects.filter(pk=agent.pk)
            .filter(Q(last_signed_us__lt=signed_us) | Q(last_signed_us__isnull=True))
            .update(
                last_seen=now,
                last_telemetry=telemetry,
                version=version,
                environment=environment or agent.environment,
                alert_after=alert_after,
                missing=False,
                last_signed_us=signed_us,
                last_nonce=nonce,
            )
        )
        if not won:
            _refuse_stale(agent, signed_us, nonce)
        HeartbeatSample.objects.create(
            agent=agent, received=now, version=version, telemetry=telemetry
        )
        agent.version, agent.last_seen, agent.missing = version, now, False
        if environment:
            agent.environment = environment

        active = rules.active_rules()
        violations = rules.evaluate(telemetry, active)
        broken = {v.cause for v in violations}
        for violation in violations:
            open_or_update_incident(
                agent,
                cause=violation.cause,
                rule_id=violation.rule_id,
                severity=rules.severity_for(violation.level, agent.environment),
                title=violation.title,
                telemetry=telemetry,
                detected_at=now,
            )
        # A patch waiting for this version completes first, so the resolution says why.
        _check_health(agent, version, broken_causes=broken)
        # Clear what this heartbeat shows healthy, and a missed heartbeat since it is here:
        # always, not only when the row said "missing" (the sweep may have flagged it
        # between the signature check's read and this heartbeat's UPDATE).
        clearable = (rules.covered_causes(telemetry, active) - broken) | {"heartbeat"}
        if clearable:
            for incident in Incident.objects.filter(
                agent=agent, cause__in=clearable, status__in=INCIDENT_OPEN
            ):
                resolve_incident(incident, by=None, reason="condition cleared", auto=True)
        return _deliver_commands(agent, now)


def _refuse_stale(agent: Agent, signed_us: int, nonce: str) -> None:
    """The compare-and-swap lost: say why (replay, out of order, or the agent is gone)."""
    mark = Agent.objects.filter(pk=agent.pk).values("last_signed_us", "last_nonce").first()
    if mark is None:
        raise IncidentError("not_found", f"agent {agent.name} no longer exists")
    try:
        check_order(Signed(agent, signed_us, nonce), mark["last_signed_us"], mark["last_nonce"])
    except StaleRequest as exc:
        raise IncidentError("stale", str(exc)) from None
    # Only reachable if the mark moved back between the UPDATE and this read (it never does).
    raise IncidentError("stale", "heartbeat not applied (concurrent heartbeat); send it again")


def _deliver_commands(agent: Agent, now) -> list[dict]:
    # Two overlapping heartbeats never both get a command: each takes only rows it locked.
    pending = list(
        AgentCommand.objects.select_for_update(skip_locked=True)
        .filter(agent=agent, status=CommandStatus.PENDING)
        .values("id", "kind", "payload")
    )
    if pending:
        AgentCommand.objects.filter(
            pk__in=[c["id"] for c in pending], status=CommandStatus.PENDING
        ).update(status=CommandStatus.DELIVERED, delivered_at=now)
    return pending


def _check_health(agent: Agent, version: str, *, broken_causes: set[str]) -> None:
    """A heartbeat on the target version, without the incident's cause, completes the patch."""
    in_flight = AutoPatchAttempt.objects.filter(
        agent=agent,
        status__in=[AttemptStatus.APPLYING, AttemptStatus.HEALTH_CHECK],
        target_version=version,
    )
    if not in_flight.exists():  # the common case: one cheap indexed query, no joins
        return
    for attempt in AutoPatchAttempt.objects.select_related("incident", "decision").filter(
        agent=agent,
        status__in=[AttemptStatus.APPLYING, AttemptStatus.HEALTH_CHECK],
        target_version=version,
    ):
        if attempt.incident.cause in broken_causes:
            continue  # new version, same problem: the deadline will roll it back
        if attempt.status == AttemptStatus.APPLYING:
            _move_attempt(attempt, AttemptStatus.HEALTH_CHECK, "new version reported")
        if _move_attempt(
            attempt, AttemptStatus.SUCCEEDED, f"healthy heartbeat on {version}",
            finished_at=timezone.now(),
        ):  # fmt: skip
            _decision_outcome(attempt.decision, Outcome.SUCCESS, f"{version} healthy")
            resolve_incident(
                attempt.incident, by=None, reason=f"patched to {version}, healthy", auto=True
            )


def mark_missing_agents(now=None, batch: int | None = None) -> list[int]:
    """The sweep: agents past ``alert_after`` get a missed-heartbeat incident. Returns agent ids.

    One transaction per ``batch`` agents, a fixed number of statements each whatever its
    size: the overdue agents are locked and flagged (``SKIP LOCKED``: an agent whose
    heartbeat is being written right now is left to that heartbeat), then
    ``open_incidents`` opens or updates their incidents in bulk.
    """
    now = now or timezone.now()
    batch = batch or settings.INCIDENT_SWEEP_BATCH
    rule = DetectionRule.objects.filter(kind=RuleKind.MISSED_HEARTBEAT, enabled=True).first()
    if rule is None:
        return []
    flagged: list[int] = []
    while True:
        with transaction.atomic():
            agents = _flag_overdue(now, batch)
            if not agents:
                return flagged
            open_incidents(
                agents,
                cause="heartbeat",
                rule_id=rule.pk,
                severity=int(Severity.HIGH),
                title=lambda a: f"no heartbeat since {a.last_seen or 'registration'}",
                telemetry=lambda a: a.last_telemetry,
                detected_at=lambda a: a.alert_after,
                now=now,
            )
        flagged.extend(a.pk for a in agents)
        if len(agents) < batch:
            return flagged


_SWEEP_FIELDS = ("name", "kind", "environment", "host_id", "tags", "last_seen",
                 "last_telemetry", "alert_after")  # fmt: skip


def _flag_overdue(now, batch: int) -> list[Agent]:
    """Lock up to ``batch`` overdue agents, flag them missing, return them (in the caller's
    transaction). The partial index ``agent_overdue_idx`` answers the scan (no ORDER BY);
    ``SKIP LOCKED`` leaves an agent whose heartbeat is being written to that heartbeat, and
    the lock re-checks each row, so one whose heartbeat committed meanwhile is not taken.
    On PostgreSQL this is one ``UPDATE … RETURNING``."""
    if connection.vendor != "postgresql":
        agents = list(
            Agent.objects.select_for_update(skip_locked=True)
            .filter(alert_after__lt=now, missing=False, enabled=True)
            .order_by()
            .only(*_SWEEP_FIELDS)[:batch]
        )
        Agent.objects.filter(pk__in=[a.pk for a in agents]).update(missing=True)
        return agents
    meta = Agent._meta
    columns = ", ".join(
        connection.ops.quote_name(meta.get_field(name).column) for name in ("id", *_SWEEP_FIELDS)
    )
    table = connection.ops.quote_name(meta.db_table)
    # The subquery's WHERE is the index's condition, spelled as Django spells it.
    sql = (
        f"UPDATE {table} SET missing = true WHERE id IN ("  # noqa: S608 - names from the model
        f"SELECT id FROM {table} WHERE alert_after < %s AND (NOT missing AND enabled) "
        f"LIMIT %s FOR UPDATE SKIP LOCKED) AND NOT missing RETURNING {columns}"
    )
    return list(Agent.objects.raw(sql, [now, batch]))


def open_incidents(
    agents: list[Agent],
    *,
    cause: str,
    rule_id: int | None,
    severity: int,
    title,
    telemetry,
    detected_at,
    now=None,
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
            varying = {
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
        opened, more = [], []
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
        severity=SEVERITY_LEVEL[severity],
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


def _admin_url_of():
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


# A batch job decides one incident after the other: it stops in time and leaves the rest
# to a follow-up job (each may wait DECIDER_TIMEOUT on the decision service).
DECIDE_BATCH_TIMEOUT = 600
DECIDE_BATCH_BUDGET = 300


def decide_many(incident_ids: list[int], budget: float = DECIDE_BATCH_BUDGET) -> dict[str, int]:
    """Decide each incident of a batch (``act_on_incident``), skipping those decided already,
    so running a batch twice (a retry, a follow-up) never decides one twice. Past
    ``budget`` seconds the rest goes to a follow-up job."""
    import time

    started = time.monotonic()
    decided_already = set(
        Decision.objects.filter(incident_id__in=incident_ids).values_list("incident_id", flat=True)
    )
    done = skipped = 0
    for position, incident_id in enumerate(incident_ids):
        if time.monotonic() - started > budget:
            rest = incident_ids[position:]
            with transaction.atomic():
                _job("incidents.jobs.decide_many", rest,
                     job_id=f"incident-decide-batch-{rest[0]}-{rest[-1]}",
                     job_timeout=DECIDE_BATCH_TIMEOUT)  # fmt: skip
            return {"decided": done, "skipped": skipped, "deferred": len(rest)}
        if incident_id in decided_already:
            skipped += 1
            continue
        if act_on_incident(incident_id) is not None:
            done += 1
        else:
            skipped += 1
    return {"decided": done, "skipped": skipped, "deferred": 0}


def prune_samples(now=None) -> int:
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.HEARTBEAT_RETENTION_HOURS)
    deleted, _ = HeartbeatSample.objects.filter(received__lt=cutoff).delete()
    return deleted


# --- escalation ----------------------------------------------------------------------


def escalate_due(now=None) -> list[int]:
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


# --- decisions and auto-patches ------------------------------------------------------------


def _decision_outcome(decision: Decision, outcome: str, detail: str) -> None:
    Decision.objects.filter(pk=decision.pk, outcome=Outcome.PENDING).update(
        outcome=outcome, outcome_detail=detail[:300]
    )


def record_decision(incident: Incident, choice: decider.Choice) -> Decision:
    decision = Decision.objects.create(
        incident=incident,
        source=choice.source,
        action=choice.action,
        patch_version=choice.patch_version,
        confidence=choice.confidence,
        explanation=choice.explanation[:2000],
        fallback_reason=choice.fallback_reason[:200],
    )
    via = choice.source.lower() + (f" ({choice.fallback_reason})" if choice.fallback_reason else "")
    _event(
        incident,
        "DECISION",
        f"{choice.action} via {via}: {choice.explanation}",
        decision=decision.pk,
        confidence=choice.confidence,
    )
    record(
        AuditEventType.DECISION_MADE,
        actor=Actor.system("decider"),
        subject=incident,
        details={
            "decision": decision.pk,
            "source": choice.source,
            "action": choice.action,
            "patch_version": choice.patch_version,
            "confidence": choice.confidence,
            "fallback_reason": choice.fallback_reason,
        },
    )
    return decision


def policy_verdict(policy: OpsPolicy, agent: Agent, severity: int) -> tuple[str, str]:
    """("auto" | "approval" | "refused", why) for an automatic patch of ``agent``."""
    if not policy.auto_remediation_enabled:
        return "refused", "auto-remediation is switched off (kill switch)"
    if not policy.whitelist.filter(pk=agent.pk).exists():
        return "refused", f"{agent.name} is not on the auto-remediation whitelist"
    if policy.canary_percent < 100 and agent.pk % 100 >= policy.canary_percent:
        return "refused", f"{agent.name} is outside the {policy.canary_percent}% canary"
    if severity >= policy.multisig_min_severity:
        return "approval", f"severity {Severity(severity).label} needs signatures"
    if severity > policy.max_auto_severity:
        return "refused", (
            f"severity {Severity(severity).label} is above the automatic maximum "
            f"({Severity(policy.max_auto_severity).label})"
        )
    return "auto", "within policy"


def act_on_incident(incident_id: int) -> Decision | None:
    """Decide (service or heuristics) and act within policy. Called by a job.

    The decision is always recorded: if carrying it out fails in a way nobody planned
    for, that part is rolled back alone (a savepoint), the decision says so and the
    incident stays with people (escalation goes on), instead of the job crashing and
    taking the decision with it.
    """
    incident = Incident.objects.select_related("agent", "rule").filter(pk=incident_id).first()
    if incident is None or incident.status not in INCIDENT_OPEN:
        return None
    try:
        choice = decider.decide(incident)
    except Exception as exc:  # noqa: BLE001 - a bug in the heuristics must not lose the incident
        logger.exception("deciding incident %s failed", incident_id)
        choice = decider.Choice(
            source=DecisionSource.HEURISTIC,
            action=DecisionAction.ESCALATE,
            patch_version="",
            confidence=0.0,
            explanation="No decision could be made; a person decides.",
            fallback_reason=f"decision error: {exc.__class__.__name__}",
        )
    with transaction.atomic():
        decision = record_decision(incident, choice)
        try:
            with transaction.atomic():
                _carry_out(incident, decision, choice)
        except Exception as exc:  # noqa: BLE001 - recorded and shown, see the docstring
            logger.exception("carrying out decision %s failed", decision.pk)
            why = (
                f"escalated: carrying out {choice.action} failed unexpectedly "
                f"({exc.__class__.__name__}); a person decides"
            )
            _decision_outcome(decision, Outcome.SKIPPED, why)
            _event(incident, "DECISION", why, decision=decision.pk)
            _announce(incident, why)
    return decision


def _carry_out(incident: Incident, decision: Decision, choice: decider.Choice) -> None:
    if choice.action == DecisionAction.PATCH and choice.patch_version:
        _start_patch(incident, decision)
    elif choice.action == DecisionAction.REMEDIATE:
        _propose_remediation(incident, decision)
    else:
        _decision_outcome(decision, Outcome.SKIPPED, "escalated to people")


def _start_patch(incident: Incident, decision: Decision) -> AutoPatchAttempt | None:
    agent = incident.agent
    verdict, why = policy_verdict(OpsPolicy.current(), agent, incident.severity)
    if verdict == "refused":
        _decision_outcome(decision, Outcome.SKIPPED, f"policy: {why}")
        _event(incident, "POLICY", f"no automatic patch: {why}")
        return None
    now = timezone.now()
    attempt = AutoPatchAttempt.objects.create(
        incident=incident,
        agent=agent,
        decision=decision,
        from_version=agent.version,
        target_version=decision.patch_version,
        severity=incident.severity,
        needs_approval=verdict == "approval",
        created=now,
        status_changed_at=now,
    )
    _move_incident(incident, IncidentStatus.MITIGATING)
    _event(incident, "ATTEMPT", f"auto-patch {agent.version} → {attempt.target_version} ({why})",
           attempt=attempt.pk)  # fmt: skip
    record(
        AuditEventType.AUTOPATCH_CHANGED,
        actor=SYSTEM,
        subject=attempt,
        details={"status": attempt.status, "target": attempt.target_version, "why": why},
    )
    if attempt.needs_approval:
        notify(
            NotificationKind.PATCH_AWAITING_APPROVAL,
            title=f"Patch {agent.name} → {attempt.target_version} needs approval",
            body=(
                f"Incident #{incident.pk}: {incident.title}. {decision.explanation} "
                f"Expires at {attempt.approval_expires_at:%Y-%m-%d %H:%M:%S %Z} unless approved."
            ),
            subject=attempt,
            severity="warning",
            url=_admin_url(incident),
        )
    else:
        _enqueue_attempt(attempt.pk)
    return attempt


NO_HOST = "decider asked for a host remediation but the agent has no host"


def _propose_remediation(incident: Incident, decision: Decision) -> None:
    from pra.actions import ActionError, Proposer, propose_action

    agent = incident.agent
    if agent.host_id is None:
        # A decision service may ask for this whatever the agent is: an escalation, recorded.
        _decision_outcome(decision, Outcome.SKIPPED, f"escalated: {NO_HOST}")
        _event(incident, "REMEDIATION", f"no remediation proposed: {NO_HOST}; a person decides")
        return
    action = (
        f"restart_{incident.cause.split(':', 1)[1]}"
        if incident.cause.startswith("service:")
        else "rotate_logs"
    )
    try:
        with transaction.atomic():
            pra_action = propose_action(
                action=action,
                host=agent.host,
                params={},
                rationale=(
                    f"Incident #{incident.pk} on {agent.name}: {incident.title}. "
                    f"Decision: {decision.explanation}"
                ),
                by=Proposer.rule(incident.cause),
            )
    except ActionError as exc:
        _decision_outcome(decision, Outcome.SKIPPED, f"remediation refused: {exc.message}")
        _event(incident, "REMEDIATION", f"could not propose {action}: {exc.message}")
        return
    Incident.objects.filter(pk=incident.pk).update(remediation=pra_action)
    _move_incident(incident, IncidentStatus.MITIGATING)
    _event(incident, "REMEDIATION", f"proposed {action} on {agent.host} (#{pra_action.pk})",
           action=pra_action.pk)  # fmt: skip


def _attempt_job_id(attempt_id: int) -> str:
    return f"autopatch-{attempt_id}"


def _enqueue_attempt(attempt_id: int) -> None:
    # Staging runs inside the job: give it the staging timeout and some room.
    _job(
        "incidents.jobs.run_attempt",
        attempt_id,
        job_id=_attempt_job_id(attempt_id),
        job_timeout=settings.STAGING_TIMEOUT + STAGING_GRACE,
    )


def _move_attempt(
    attempt: AutoPatchAttempt,
    new: str,
    detail: str,
    *,
    actor: Actor | Any = SYSTEM,
    audit: dict | None = None,
    **fields: Any,
) -> bool:
    allowed = [s for s, targets in ATTEMPT_TRANSITIONS.items() if new in targets]
    with transaction.atomic():
        won = AutoPatchAttempt.objects.filter(pk=attempt.pk, status__in=allowed).update(
            status=new, status_changed_at=timezone.now(), detail=detail[:300], **fields
        )
        if not won:
            return False
        attempt.refresh_from_db()
        _event(
            attempt.incident, "ATTEMPT", f"auto-patch {new.lower()}: {detail}", attempt=attempt.pk
        )
        record(
            AuditEventType.AUTOPATCH_CHANGED,
            actor=actor,
            subject=attempt,
            details={"status": new, "detail": detail[:300], **(audit or {})},
        )
        _announce(attempt.incident, f"auto-patch {new.lower()}")
    return True


def _end_attempt(
    attempt: AutoPatchAttempt,
    new: str,
    detail: str,
    *,
    outcome: str = Outcome.SKIPPED,
    actor: Actor | Any = SYSTEM,
    audit: dict | None = None,
    **fields: Any,
) -> bool:
    """A terminal move that did not fix the incident: the decision gets its outcome and
    the incident goes back to people (OPEN, or ACKNOWLEDGED if someone had it), so
    escalation resumes instead of the incident sitting in MITIGATING."""
    with transaction.atomic():
        if not _move_attempt(
            attempt, new, detail, actor=actor, audit=audit, finished_at=timezone.now(), **fields
        ):
            return False
        _decision_outcome(attempt.decision, outcome, detail)
        _back_to_people(attempt.incident, f"auto-patch {new.lower()}: {detail}")
    return True


def _back_to_people(incident: Incident, why: str) -> None:
    incident.refresh_from_db()
    if incident.status != IncidentStatus.MITIGATING:
        return
    target = IncidentStatus.ACKNOWLEDGED if incident.acknowledged_at else IncidentStatus.OPEN
    if _move_incident(incident, target):
        _event(incident, "HANDED_BACK", f"{target.lower()} again, a person decides: {why}")
        _announce(incident, f"{target.lower()} again: {why}")


def hand_back_failed_remediations() -> list[int]:
    """MITIGATING incidents whose host remediation ended without fixing anything
    (rejected, expired, voided, failed, or ran but did not verify) go back to people,
    so escalation resumes instead of the incident waiting forever. Returns their ids."""
    from pra.choices import ActionStatus, Verification

    ended = Q(remediation__status__in=[
        ActionStatus.REJECTED, ActionStatus.EXPIRED, ActionStatus.VOIDED, ActionStatus.FAILED,
    ]) | Q(remediation__status=ActionStatus.COMPLETED,
           remediation__verification=Verification.NOT_VERIFIED)  # fmt: skip
    handed: list[int] = []
    stuck = Incident.objects.filter(ended, status=IncidentStatus.MITIGATING)
    for incident in stuck.select_related("remediation"):
        action = incident.remediation
        why = f"remediation #{action.pk} ({action.action}) ended {action.status}"
        if action.status == ActionStatus.COMPLETED:
            why = f"remediation #{action.pk} ({action.action}) ran but did not verify"
        with transaction.atomic():
            _back_to_people(incident, why)
        handed.append(incident.pk)
    return handed


def approve_attempt(attempt: AutoPatchAttempt, *, by, confirmation: str = "", fingerprint=None):
    """A human signature on a patch that policy put behind multi-signature."""
    with transaction.atomic():
        locked = (
            AutoPatchAttempt.objects.select_for_update().select_related("agent").get(pk=attempt.pk)
        )
        if locked.status != AttemptStatus.PENDING or not locked.needs_approval:
            raise IncidentError("state", f"Attempt #{locked.pk} is not waiting for approval.")
        try:
            tally = approvals.sign(locked, by, fingerprint=fingerprint, confirmation=confirmation)
        except approvals.ApprovalError as exc:
            raise IncidentError(exc.code, exc.message) from None
        if tally.complete:
            _event(locked.incident, "APPROVED", f"patch approved by {', '.join(tally.approvers)}")
            _enqueue_attempt(locked.pk)
    return tally


def reject_attempt(attempt: AutoPatchAttempt | int, *, by, reason: str) -> AutoPatchAttempt:
    """An approver refuses a patch waiting for signatures: it ends REJECTED with the reason,
    the decision is marked not carried out and the incident goes back to people."""
    attempt_id = attempt.pk if isinstance(attempt, AutoPatchAttempt) else attempt
    if (
        by is None
        or not by.is_authenticated
        or not by.is_active
        or not by.has_perm(approvals.APPROVE_PERMISSION)
    ):
        raise IncidentError("permission", "Only approvers reject patches.")
    try:
        refuse_unstorable(reason or "", "reason")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    reason = " ".join((reason or "").split())[:250]
    if len(reason) < 5:
        raise IncidentError("reason", "A rejection needs a reason (at least 5 characters).")
    with transaction.atomic():
        locked = (
            AutoPatchAttempt.objects.select_for_update()
            .select_related("agent", "incident", "decision")
            .filter(pk=attempt_id)
            .first()
        )
        if locked is None:
            raise IncidentError("not_found", f"No auto-patch attempt #{attempt_id}.")
        if locked.status != AttemptStatus.PENDING or not locked.needs_approval:
            raise IncidentError(
                "state", f"Attempt #{locked.pk} is {locked.status}, not waiting for approval."
            )
        _end_attempt(
            locked,
            AttemptStatus.REJECTED,
            f"rejected by {by.get_username()}: {reason}",
            actor=by,
            audit={"reason": reason},
        )
    return locked


def run_attempt(attempt_id: int) -> str:
    """Staging smoke test, then apply (an update command to the agent). Called by a job."""
    from incidents import staging

    attempt = AutoPatchAttempt.objects.select_related("agent", "incident").get(pk=attempt_id)
    if attempt.needs_approval and not approvals.tally(attempt).complete:
        return "waiting-for-approval"
    if not OpsPolicy.current().auto_remediation_enabled:
        _end_attempt(attempt, AttemptStatus.CANCELLED, "kill switch is off")
        return "cancelled"
    if not _move_attempt(attempt, AttemptStatus.STAGING, "staging smoke test"):
        return "not-pending"
    ok, detail = staging.smoke_test(attempt)
    # Only while still STAGING: the sweep may have ended it (worker presumed lost).
    AutoPatchAttempt.objects.filter(pk=attempt.pk, status=AttemptStatus.STAGING).update(
        staging_result=detail[:300]
    )
    if not ok:
        _end_attempt(
            attempt, AttemptStatus.FAILED, f"staging failed: {detail}", outcome=Outcome.FAILURE
        )
        return "staging-failed"
    with transaction.atomic():
        # The sweep may have ended it while staging ran long: hold the row, then look.
        still = AutoPatchAttempt.objects.select_for_update().filter(
            pk=attempt.pk, status=AttemptStatus.STAGING
        )
        if not list(still.values_list("pk", flat=True)):
            return "ended-during-staging"
        # The kill switch may have been turned off during staging: re-check under the lock.
        if (
            not OpsPolicy.objects.select_for_update()
            .get(pk=OpsPolicy.current().pk)
            .auto_remediation_enabled
        ):
            _end_attempt(attempt, AttemptStatus.CANCELLED, "kill switch turned off during staging")
            return "cancelled"
        command = send_command(
            attempt.agent,
            CommandKind.UPDATE,
            {"version": attempt.target_version, "attempt": attempt.pk},
            by=SYSTEM,
        )
        deadline = timezone.now() + timedelta(seconds=settings.AUTOPATCH_HEALTH_WINDOW)
        if not _move_attempt(
            attempt, AttemptStatus.APPLYING, f"update to {attempt.target_version} sent",
            update_command=command, deadline=deadline,
        ):  # fmt: skip
            raise IncidentError("state", "attempt changed during staging")
    return "applying"


def roll_back(attempt: AutoPatchAttempt, reason: str) -> bool:
    """Send a rollback to the previous version and end the attempt ROLLED_BACK."""
    with transaction.atomic():
        command = send_command(
            attempt.agent,
            CommandKind.ROLLBACK,
            {"version": attempt.from_version, "attempt": attempt.pk},
            by=SYSTEM,
        )
        if not _end_attempt(
            attempt, AttemptStatus.ROLLED_BACK, reason, outcome=Outcome.FAILURE,
            rollback_command=command,
        ):  # fmt: skip
            transaction.set_rollback(True)
            return False
        notify(
            NotificationKind.AUTOPATCH_ROLLED_BACK,
            title=f"Rolled back {attempt.agent.name} to {attempt.from_version or 'previous'}",
            body=f"Auto-patch to {attempt.target_version} failed: {reason}",
            subject=attempt,
            severity="critical",
            url=_admin_url(attempt.incident),
        )
    return True


def expire_attempts(now=None) -> list[int]:
    """Health checks past their window: roll back."""
    now = now or timezone.now()
    window = timedelta(seconds=settings.AUTOPATCH_HEALTH_WINDOW)
    rolled = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        Q(deadline__lt=now) | Q(deadline__isnull=True, status_changed_at__lt=now - window),
        status__in=[AttemptStatus.APPLYING, AttemptStatus.HEALTH_CHECK],
    ):
        if roll_back(
            attempt,
            f"no healthy heartbeat on {attempt.target_version} within "
            f"{settings.AUTOPATCH_HEALTH_WINDOW}s",
        ):
            rolled.append(attempt.pk)
    return rolled


def expire_pending_attempts(now=None) -> list[int]:
    """PENDING attempts older than ``AUTOPATCH_APPROVAL_TTL`` end EXPIRED, with the reason."""
    now = now or timezone.now()
    ttl = approval_ttl()
    expired = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        status=AttemptStatus.PENDING, created__lte=now - timedelta(seconds=ttl)
    ):
        tally = approvals.tally(attempt) if attempt.needs_approval else None
        if tally is not None and not tally.complete:
            why = f"not approved within {ttl}s ({tally.count}/{tally.required} signatures)"
        else:
            why = f"approved but not started within {ttl}s (no worker ran it)"
        if _end_attempt(attempt, AttemptStatus.EXPIRED, why):
            expired.append(attempt.pk)
    return expired


def fail_stuck_staging(now=None) -> list[int]:
    """STAGING longer than the staging timeout (plus a grace) means the worker died there."""
    now = now or timezone.now()
    limit = settings.STAGING_TIMEOUT + STAGING_GRACE
    failed = []
    for attempt in AutoPatchAttempt.objects.select_related("agent", "incident", "decision").filter(
        status=AttemptStatus.STAGING, status_changed_at__lt=now - timedelta(seconds=limit)
    ):
        if _end_attempt(
            attempt,
            AttemptStatus.FAILED,
            f"staging did not finish within {limit}s (worker lost?); nothing was sent",
            outcome=Outcome.FAILURE,
        ):
            failed.append(attempt.pk)
    return failed


def requeue_ready_attempts(now=None) -> list[int]:
    """PENDING attempts free to run whose job is gone (Redis flushed, worker lost) go back on
    the queue. Running twice is harmless: the PENDING → STAGING move lets one job through."""
    now = now or timezone.now()
    requeued = []
    for attempt in AutoPatchAttempt.objects.select_related("agent").filter(
        status=AttemptStatus.PENDING, status_changed_at__lt=now - timedelta(seconds=REQUEUE_AFTER)
    ):
        if attempt.needs_approval and not approvals.tally(attempt).complete:
            continue
        if _job_alive(_attempt_job_id(attempt.pk)):
            continue
        with transaction.atomic():
            _enqueue_attempt(attempt.pk)
            record(
                AuditEventType.AUTOPATCH_CHANGED,
                actor=Actor.system("reconciler"),
                subject=attempt,
                details={"status": attempt.status, "requeued": True},
            )
        requeued.append(attempt.pk)
    return requeued


def _job_alive(job_id: str) -> bool:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from portal.lib.redis import get_redis

    try:
        status = Job.fetch(job_id, connection=get_redis()).get_status()
    except NoSuchJobError:
        return False
    return status in {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def sweep_attempts(now=None) -> dict[str, list[int]]:
    """Every non-terminal attempt state has a bounded exit; this is the sweep that enforces it."""
    now = now or timezone.now()
    return {
        "rolled_back": expire_attempts(now),
        "expired": expire_pending_attempts(now),
        "stuck_staging": fail_stuck_staging(now),
        "requeued": requeue_ready_attempts(now),
    }


def set_kill_switch(enabled: bool, *, by) -> list[int]:
    """Turn auto-remediation on or off; off cancels attempts not yet APPLYING."""
    with transaction.atomic():
        policy = OpsPolicy.objects.select_for_update().get(pk=OpsPolicy.current().pk)
        policy.auto_remediation_enabled = enabled
        policy.save(update_fields=["auto_remediation_enabled", "updated"])
        record(
            AuditEventType.POLICY_CHANGED, actor=by, subject=policy, details={"enabled": enabled}
        )
        return [] if enabled else cancel_pending_attempts("kill switch turned off")


def cancel_pending_attempts(reason: str) -> list[int]:
    cancelled = []
    for attempt in AutoPatchAttempt.objects.select_related("incident", "agent", "decision").filter(
        status__in=ATTEMPT_CANCELLABLE
    ):
        if _end_attempt(attempt, AttemptStatus.CANCELLED, reason):
            cancelled.append(attempt.pk)
    return cancelled


# --- agent commands -----------------------------------------------------------------------


def send_command(agent: Agent, kind: str, payload: dict, *, by) -> AgentCommand:
    """Queue a command for the agent; it is delivered in its next heartbeat response."""
    if kind not in CommandKind.values:
        raise IncidentError("invalid", f"unknown command {kind!r}")
    actor = Actor.of(by)
    with transaction.atomic():
        command = AgentCommand.objects.create(
            agent=agent, kind=kind, payload=payload, requested_by=actor.label
        )
        record(
            AuditEventType.AGENT_COMMAND_SENT,
            actor=actor,
            subject=command,
            details={"agent": agent.name, "kind": kind, "payload": payload},
        )
    return command


def finish_command(command_id: int, agent: Agent, *, ok: bool, output: str) -> AgentCommand:
    """The agent reports a delivered command done (ack) or failed."""
    new = CommandStatus.ACKED if ok else CommandStatus.FAILED
    try:
        refuse_unstorable(output, "output")
    except UnstorableText as exc:
        raise IncidentError("invalid", str(exc)) from None
    with transaction.atomic():
        won = AgentCommand.objects.filter(
            pk=command_id,
            agent=agent,
            status__in=[CommandStatus.DELIVERED, CommandStatus.PENDING],
        ).update(status=new, finished_at=timezone.now(), output=output[:8000])
        command = AgentCommand.objects.filter(pk=command_id, agent=agent).first()
        if command is None:
            raise IncidentError("not_found", f"no command #{command_id} for this agent")
        if not won:
            raise IncidentError("state", f"command #{command_id} is already {command.status}")
        record(
            AuditEventType.AGENT_COMMAND_DONE,
            actor=f"agent:{agent.name}",
            subject=command,
            details={"ok": ok, "output": output[:500]},
        )
        attempt = AutoPatchAttempt.objects.filter(update_command=command).first()
        if attempt is not None:
            if ok:
                _move_attempt(attempt, AttemptStatus.HEALTH_CHECK, "agent applied the update")
            else:
                roll_back(attempt, f"update failed on the agent: {output[:200]}")
    return command
