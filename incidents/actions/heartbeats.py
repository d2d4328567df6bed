"""Heartbeats: ingestion, replay refusal, command delivery, health, the missed-heartbeat sweep."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Field, Q
from django.utils import timezone

from incidents import rules
from incidents.actions.autopatch import _move_attempt
from incidents.actions.common import IncidentError, _decision_outcome
from incidents.actions.lifecycle import open_incidents, open_or_update_incident, resolve_incident
from incidents.choices import (
    INCIDENT_OPEN,
    AttemptStatus,
    CommandStatus,
    Outcome,
    RuleKind,
    Severity,
)
from incidents.models import (
    Agent,
    AgentCommand,
    AutoPatchAttempt,
    DetectionRule,
    HeartbeatSample,
    Incident,
)
from incidents.signing import Signed, StaleRequest, check_order


def ingest_heartbeat(
    agent: Agent,
    *,
    version: str,
    environment: str,
    telemetry: dict[str, Any],
    signed_us: int,
    nonce: str,
) -> list[dict[str, Any]]:
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


def _deliver_commands(agent: Agent, now: datetime) -> list[dict[str, Any]]:
    # Two overlapping heartbeats never both get a command: each takes only rows it locked.
    pending: list[dict[str, Any]] = [
        dict(row)
        for row in AgentCommand.objects.select_for_update(skip_locked=True)
        .filter(agent=agent, status=CommandStatus.PENDING)
        .values("id", "kind", "payload")
    ]
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


def mark_missing_agents(now: datetime | None = None, batch: int | None = None) -> list[int]:
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
                detected_at=lambda a: a.alert_after or now,
                now=now,
            )
        flagged.extend(a.pk for a in agents)
        if len(agents) < batch:
            return flagged


_SWEEP_FIELDS = ("name", "kind", "environment", "host_id", "tags", "last_seen",
                 "last_telemetry", "alert_after")  # fmt: skip


def _column(field: object) -> str:
    if not isinstance(field, Field) or field.column is None:
        raise ValueError(f"{field} has no column")
    return field.column


def _flag_overdue(now: datetime, batch: int) -> list[Agent]:
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
        connection.ops.quote_name(_column(meta.get_field(name))) for name in ("id", *_SWEEP_FIELDS)
    )
    table = connection.ops.quote_name(meta.db_table)
    # The subquery's WHERE is the index's condition, spelled as Django spells it.
    sql = (
        f"UPDATE {table} SET missing = true WHERE id IN ("  # noqa: S608 - names from the model
        f"SELECT id FROM {table} WHERE alert_after < %s AND (NOT missing AND enabled) "
        f"LIMIT %s FOR UPDATE SKIP LOCKED) AND NOT missing RETURNING {columns}"
    )
    return list(Agent.objects.raw(sql, [now, batch]))


def prune_samples(now: datetime | None = None) -> int:
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.HEARTBEAT_RETENTION_HOURS)
    deleted, _ = HeartbeatSample.objects.filter(received__lt=cutoff).delete()
    return deleted
