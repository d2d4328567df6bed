"""Incident pages: filters, timeline, manual actions with the right roles, policy admin."""

import pytest
from django.utils import timezone

from incidents import actions
from incidents.choices import AttemptStatus, IncidentStatus
from incidents.models import AgentCommand, AutoPatchAttempt, Decision, OpsPolicy
from tests.conftest import ANON

pytestmark = pytest.mark.django_db


@pytest.fixture
def incident(agent_and_secret):
    agent, _ = agent_and_secret
    incident, _ = actions.open_or_update_incident(
        agent, cause="webhooks", rule_id=None, severity=3, title="webhooks failing",
        telemetry={"webhook_fail_rate": 0.3}, detected_at=timezone.now(),
    )  # fmt: skip
    return incident


def _act(client, incident, verb, **data):
    return client.post(f"/admin/incidents/incident/{incident.pk}/act/{verb}/", data)


def test_operator_acknowledges_and_resolves_an_approver_sends_commands(
    client, operator, approver, incident
):
    client.force_login(operator)
    page = client.get(f"/admin/incidents/incident/{incident.pk}/change/").content.decode()
    assert 'id="ack-button"' in page and "webhooks failing" in page
    _act(client, incident, "acknowledge")
    # A manual update bypasses the auto-patch policy: operators may not send one.
    assert _act(client, incident, "command", kind="update", version="2.0.0").status_code == 403
    client.force_login(approver)
    _act(client, incident, "command", kind="update", version="2.0.0")
    client.force_login(operator)
    _act(client, incident, "resolve", reason="rolled the plugin forward")
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED
    command = AgentCommand.objects.get()
    assert (command.kind, command.payload, command.requested_by) == (
        "update", {"version": "2.0.0"}, approver.username,
    )  # fmt: skip


def test_bad_manual_input_changes_nothing(client, approver, incident):
    client.force_login(approver)
    response = _act(client, incident, "command", kind="update", version="2.0; reboot")
    assert response.status_code == 302
    assert not AgentCommand.objects.exists()
    page = client.get(f"/admin/incidents/incident/{incident.pk}/change/", follow=True)
    assert "Enter a valid value" in page.content.decode()
    _act(client, incident, "resolve", reason="")
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.OPEN


def test_viewers_cannot_act(client, viewer, incident):
    client.force_login(viewer)
    page = client.get(f"/admin/incidents/incident/{incident.pk}/change/").content.decode()
    assert 'id="ack-button"' not in page
    assert _act(client, incident, "command", kind="update", version="2.0.0").status_code == 403
    _act(client, incident, "acknowledge")
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.OPEN
    assert client.get("/admin/incidents/incident/?severity__exact=3").status_code == 200


def test_approvers_approve_a_waiting_patch_from_the_incident_page(
    client, approver, approver2, incident
):
    decision = Decision.objects.create(
        incident=incident, source="HEURISTIC", action="PATCH", patch_version="1.1.0"
    )
    now = timezone.now()
    attempt = AutoPatchAttempt.objects.create(
        incident=incident, agent=incident.agent, decision=decision, from_version="1.0.0",
        target_version="1.1.0", severity=4, needs_approval=True, created=now,
        status_changed_at=now,
    )  # fmt: skip
    for person in (approver, approver2):
        client.force_login(person)
        page = client.get(f"/admin/incidents/incident/{incident.pk}/change/").content.decode()
        assert 'id="approve-patch-button"' in page
        _act(
            client, incident, "approve-patch", attempt=attempt.pk,
            fingerprint=attempt.approval_fingerprint(), confirmation=incident.agent.name,
        )  # fmt: skip
    from portal.approvals import tally

    assert tally(attempt).complete
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING  # the job picks it up on commit


def test_only_admins_change_the_policy(client, operator, admin_user):
    client.force_login(operator)
    assert client.get("/admin/incidents/opspolicy/1/change/").status_code == 200  # view only
    response = client.post(
        "/admin/incidents/opspolicy/1/change/",
        {"auto_remediation_enabled": "", "max_auto_severity": 1, "multisig_min_severity": 3,
         "canary_percent": 100},
    )  # fmt: skip
    assert response.status_code == 403
    assert OpsPolicy.current().auto_remediation_enabled


INCIDENT_MATRIX = [
    (
        "/admin/incidents/incident/",
        {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200},
    ),
    (
        "/admin/incidents/agent/",
        {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200},
    ),
    ("/admin/incidents/detectionrule/add/", {"admin_user": 200}),
    ("/admin/portal/notificationchannel/add/", {"admin_user": 200}),
]


@pytest.mark.parametrize("persona", ["viewer", "operator", "approver", "admin_user", ANON])
@pytest.mark.parametrize(("url", "expected"), INCIDENT_MATRIX, ids=[m[0] for m in INCIDENT_MATRIX])
def test_incidents_permission_matrix(client, request, persona, url, expected):
    if persona != ANON:
        client.force_login(request.getfixturevalue(persona))
    status = client.get(url).status_code
    assert status == expected.get(persona, 302 if persona == ANON else 403), (persona, url)


def test_dashboard_shows_open_incidents_by_severity_and_kpis(client, viewer, incident):
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'id="panel-incidents"' in page and "webhooks failing" in page
    assert 'data-severity="3"' in page
    assert "Auto-patch success" in page
    metrics = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'portal_incidents_open{severity="high"} 1.0' in metrics
    assert "portal_autoheal_success_rate_pct" in metrics
