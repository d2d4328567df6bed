"""Host-level causes propose a remediation (PRA) linked to the incident; the incident page
shows the chain. The PRA action itself is covered by tests/pra (real sshd)."""

import pytest

from incidents import actions
from incidents.choices import IncidentStatus
from incidents.models import Incident
from pra.choices import ActionStatus
from pra.models import PRAAction, Source
from tests.factories import offline_host
from tests.incidents.helpers import beat, payload
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_service_down_on_a_host_proposes_a_linked_remediation(client, approver):
    host = offline_host("dns-1")
    agent, secret = actions.create_agent(name="dns-1-agent", kind="host", host=host)
    beat(client, agent.name, secret, payload(services={"unbound": "inactive"}))
    run_jobs()  # decide (and the pre-flight, which fails: the host is offline)
    incident = Incident.objects.get(cause="service:unbound")
    assert incident.status == IncidentStatus.MITIGATING
    action = PRAAction.objects.get()
    assert incident.remediation == action
    assert (action.action, action.host, action.source) == ("restart_unbound", host, Source.RULE)
    assert action.status == ActionStatus.PROPOSED  # people approve it, as any other
    assert action.proposer_label == "rule:service:unbound"
    assert f"Incident #{incident.pk}" in action.rationale
    client.force_login(approver)
    page = client.get(f"/admin/incidents/incident/{incident.pk}/change/").content.decode()
    assert f"/admin/pra/praaction/{action.pk}/change/" in page
    assert "REMEDIATION" in page and "DECISION" in page and "DETECTED" in page
    assert 'id="remediation-trail"' in page and "PRA_PROPOSED" in page


def test_without_a_host_or_catalog_action_it_escalates(client):
    agent, secret = actions.create_agent(name="app-agent", kind="service")
    beat(client, agent.name, secret, payload(services={"worker": "failed"}))
    run_jobs()
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.OPEN
    assert not PRAAction.objects.exists()
    assert incident.decisions.get().action == "ESCALATE"


def test_a_rejected_remediation_hands_the_incident_back(client, approver):
    """The linked action is rejected: the sweep moves the incident from MITIGATING back to
    OPEN (escalation resumes) and says why on its timeline; a second sweep does nothing."""
    from pra import actions as pra_actions

    host = offline_host("dns-1")
    agent, secret = actions.create_agent(name="dns-1-agent", kind="host", host=host)
    beat(client, agent.name, secret, payload(services={"unbound": "inactive"}))
    run_jobs()
    incident = Incident.objects.get(cause="service:unbound")
    assert incident.status == IncidentStatus.MITIGATING
    assert actions.hand_back_failed_remediations() == []  # still PROPOSED: people decide
    pra_actions.reject_action(incident.remediation, by=approver, reason="not this one, no")
    assert actions.hand_back_failed_remediations() == [incident.pk]
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.OPEN
    last = incident.events.order_by("-id").first()
    assert last.kind == "HANDED_BACK" and "ended REJECTED" in last.message
    assert actions.hand_back_failed_remediations() == []
