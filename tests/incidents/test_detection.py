"""Rules evaluated on ingest; one open incident per agent and cause; auto-resolution;
the missed-heartbeat sweep."""

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import actions
from incidents.choices import IncidentStatus, Severity
from incidents.models import Agent, DetectionRule, Incident
from tests.incidents.helpers import beat, payload

pytestmark = pytest.mark.django_db


def test_a_threshold_opens_one_incident_and_repeats_update_it(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret, payload(metrics={"cpu_pct": 85}))
    beat(client, agent.name, secret, payload(metrics={"cpu_pct": 86}))
    incident = Incident.objects.get()
    assert incident.cause == "cpu"
    assert incident.severity == Severity.MEDIUM  # warning level
    assert incident.occurrences == 2
    assert incident.status == IncidentStatus.OPEN
    # Critical raises the severity of the same incident (production → CRITICAL).
    beat(client, agent.name, secret, payload(metrics={"cpu_pct": 95}))
    incident.refresh_from_db()
    assert Incident.objects.count() == 1
    assert incident.severity == Severity.CRITICAL
    assert list(incident.events.values_list("kind", flat=True)) == ["DETECTED", "SEVERITY"]


def test_incident_auto_resolves_when_the_condition_clears(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.3))
    incident = Incident.objects.get()
    assert incident.cause == "webhooks"
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.0))
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.auto_resolved and incident.resolution == "condition cleared"
    assert incident.mttr is not None
    # A new occurrence later is a new incident.
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.3))
    assert Incident.objects.filter(status=IncidentStatus.OPEN).count() == 1
    assert Incident.objects.count() == 2


def test_a_metric_not_reported_does_not_resolve_its_incident(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret, payload(metrics={"disk_pct": 80}))
    beat(client, agent.name, secret, payload(metrics={"cpu_pct": 10}))
    assert Incident.objects.get().status == IncidentStatus.OPEN


def test_thresholds_are_data(client, agent_and_secret):
    agent, secret = agent_and_secret
    DetectionRule.objects.filter(key="cpu").update(warning=50)
    beat(client, agent.name, secret, payload(metrics={"cpu_pct": 60}))
    assert Incident.objects.get().cause == "cpu"
    DetectionRule.objects.filter(key="memory").update(enabled=False)
    from incidents.rules import forget_cached_rules

    forget_cached_rules()
    beat(client, agent.name, secret, payload(metrics={"mem_pct": 99}))
    assert not Incident.objects.filter(cause="memory").exists()


def test_a_service_down_is_its_own_incident(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret, payload(services={"unbound": "inactive", "caddy": "active"}))
    incident = Incident.objects.get()
    assert incident.cause == "service:unbound"
    beat(client, agent.name, secret, payload(services={"unbound": "active"}))
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED


def test_missed_heartbeat_opens_then_auto_resolves(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret)
    agent.refresh_from_db()
    assert actions.mark_missing_agents(now=timezone.now()) == []  # not overdue yet
    later = agent.alert_after + timedelta(seconds=1)
    assert actions.mark_missing_agents(now=later) == [agent.pk]
    assert actions.mark_missing_agents(now=later) == []  # flagged once
    incident = Incident.objects.get(cause="heartbeat")
    assert incident.severity == Severity.HIGH
    assert incident.detected_at == agent.alert_after  # MTTD measured from when it was due
    beat(client, agent.name, secret)
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED and incident.auto_resolved
    assert not Agent.objects.get(pk=agent.pk).missing


def test_sweep_ignores_agents_that_never_reported_and_disabled_ones(agent_and_secret):
    agent, _ = agent_and_secret
    assert actions.mark_missing_agents(now=timezone.now() + timedelta(days=1)) == []
    Agent.objects.filter(pk=agent.pk).update(alert_after=timezone.now(), enabled=False)
    assert actions.mark_missing_agents(now=timezone.now() + timedelta(days=1)) == []


def test_incident_opening_is_announced_live_and_audited(client, agent_and_secret):
    from portal.models import AuditEvent

    agent, secret = agent_and_secret
    beat(client, agent.name, secret, payload(errors_last_24h=500))
    incident = Incident.objects.get()
    assert incident.cause == "errors"
    assert AuditEvent.objects.filter(
        event_type="INCIDENT_OPENED", subject_id=str(incident.pk)
    ).exists()


def test_acknowledge_and_manual_resolve(agent_and_secret, operator, viewer):
    agent, _ = agent_and_secret
    incident, _ = actions.open_or_update_incident(
        agent, cause="cpu", rule_id=None, severity=2, title="cpu high", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    with pytest.raises(actions.IncidentError):
        actions.acknowledge_incident(incident, by=viewer)
    actions.acknowledge_incident(incident, by=operator)
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.ACKNOWLEDGED and incident.next_escalation_at is None
    with pytest.raises(actions.IncidentError, match="Say how"):
        actions.resolve_incident(incident, by=operator, reason="")
    assert actions.resolve_incident(incident, by=operator, reason="restarted the upstream")
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED and not incident.auto_resolved
