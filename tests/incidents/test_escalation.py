"""Unacknowledged incidents escalate L1 → L4 after each level's delay (time controlled by
passing ``now``); each level's channels are notified through a real HTTP receiver."""

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import actions
from portal.models import EscalationLevel, Notification, NotificationChannel
from tests.incidents.helpers import JSONService
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver():
    service = JSONService({"ok": True})
    yield service
    service.stop()


@pytest.fixture
def levels(receiver):
    channel = NotificationChannel.objects.create(
        name="l2-webhook", kind="WEBHOOK", url=receiver.url, kinds=["INCIDENT_ESCALATED"]
    )
    for level, name in ((1, "operator"), (2, "technical"), (3, "development"), (4, "architect")):
        row, _ = EscalationLevel.objects.update_or_create(
            level=level, defaults={"name": name, "delay_minutes": 10}
        )
        if level == 2:
            row.channels.add(channel)
    return channel


def _incident(agent):
    incident, _ = actions.open_or_update_incident(
        agent, cause="cpu", rule_id=None, severity=3, title="cpu at 95", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    return incident


def test_it_escalates_after_the_delay_and_notifies_the_level(agent_and_secret, levels, receiver):
    agent, _ = agent_and_secret
    incident = _incident(agent)
    assert incident.escalation_level == 1
    assert actions.escalate_due(now=timezone.now() + timedelta(minutes=9)) == []
    assert actions.escalate_due(now=timezone.now() + timedelta(minutes=11)) == [incident.pk]
    incident.refresh_from_db()
    assert incident.escalation_level == 2
    note = Notification.objects.get(kind="INCIDENT_ESCALATED")
    assert note.channel == levels and note.escalation_level == 2
    run_jobs()
    assert receiver.requests and receiver.requests[0]["kind"] == "INCIDENT_ESCALATED"
    assert "L2" in receiver.requests[0]["title"]


def test_it_climbs_to_l4_and_stops(agent_and_secret, levels):
    agent, _ = agent_and_secret
    incident = _incident(agent)
    now = timezone.now()
    for expected in (2, 3, 4):
        now += timedelta(minutes=11)
        actions.escalate_due(now=now)
        incident.refresh_from_db()
        assert incident.escalation_level == expected
    assert incident.next_escalation_at is None
    assert actions.escalate_due(now=now + timedelta(days=1)) == []


def test_acknowledged_incidents_do_not_escalate(agent_and_secret, levels, operator):
    agent, _ = agent_and_secret
    incident = _incident(agent)
    actions.acknowledge_incident(incident, by=operator)
    assert actions.escalate_due(now=timezone.now() + timedelta(hours=2)) == []
    incident.refresh_from_db()
    assert incident.escalation_level == 1
