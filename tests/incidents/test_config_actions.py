"""Incident configuration goes through audited actions: the ops policy (and its kill switch),
agents, detection rules (form and list editing) and grouping rules; one audit event each,
whether the change comes from the admin or from code."""

import pytest
from django.utils import timezone

from incidents import actions
from incidents.choices import AttemptStatus
from incidents.models import Agent, AutoPatchAttempt, Decision, DetectionRule, OpsPolicy
from portal.choices import AuditEventType
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


def events(kind: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=kind).order_by("id"))


def policy_form(**fields):
    policy = OpsPolicy.current()
    return {
        "auto_remediation_enabled": "on" if policy.auto_remediation_enabled else "",
        "whitelist": [a.pk for a in policy.whitelist.all()],
        "max_auto_severity": policy.max_auto_severity,
        "multisig_min_severity": policy.multisig_min_severity,
        "canary_percent": policy.canary_percent,
    } | fields


@pytest.fixture
def pending_attempt(agent_and_secret):
    agent, _ = agent_and_secret
    incident, _ = actions.open_or_update_incident(
        agent, cause="webhooks", rule_id=None, severity=2, title="webhooks failing",
        telemetry={}, detected_at=timezone.now(),
    )  # fmt: skip
    decision = Decision.objects.create(
        incident=incident, source="HEURISTIC", action="PATCH", patch_version="1.1.0"
    )
    return AutoPatchAttempt.objects.create(
        incident=incident, agent=agent, decision=decision, from_version="1.0.0",
        target_version="1.1.0", severity=2, status=AttemptStatus.PENDING,
        created=timezone.now(), status_changed_at=timezone.now(),
    )  # fmt: skip


def test_the_kill_switch_in_the_admin_writes_one_policy_event(client, admin_user, pending_attempt):
    client.force_login(admin_user)
    response = client.post(
        "/admin/incidents/opspolicy/1/change/",
        policy_form(auto_remediation_enabled="", canary_percent=50),
    )
    assert response.status_code == 302, response.content.decode()[-1500:]
    [event] = events(AuditEventType.POLICY_CHANGED)
    assert event.actor == admin_user.username
    assert event.details["changes"]["auto_remediation_enabled"] == {"old": True, "new": False}
    assert event.details["changes"]["canary_percent"] == {"old": 100, "new": 50}
    assert event.details["cancelled"] == [pending_attempt.pk]
    pending_attempt.refresh_from_db()
    assert pending_attempt.status == AttemptStatus.CANCELLED
    policy = OpsPolicy.current()
    assert (policy.auto_remediation_enabled, policy.canary_percent) == (False, 50)


def test_set_kill_switch_twice_writes_one_event(admin_user):
    assert actions.set_kill_switch(False, by=admin_user) == []
    assert actions.set_kill_switch(False, by=admin_user) == []  # no change, no event
    assert len(events(AuditEventType.POLICY_CHANGED)) == 1
    assert not OpsPolicy.current().auto_remediation_enabled


def test_the_whitelist_is_changed_and_audited_with_the_rest(client, admin_user, agent_and_secret):
    agent, _ = agent_and_secret
    client.force_login(admin_user)
    response = client.post(
        "/admin/incidents/opspolicy/1/change/", policy_form(whitelist=[agent.pk])
    )
    assert response.status_code == 302
    assert list(OpsPolicy.current().whitelist.all()) == [agent]
    [event] = events(AuditEventType.POLICY_CHANGED)
    assert event.details["changes"] == {"whitelist": {"old": [], "new": [agent.name]}}


def test_a_bad_policy_is_refused_and_changes_nothing(client, admin_user, operator):
    with pytest.raises(actions.IncidentError, match="canary_percent"):
        actions.update_policy(by=admin_user, canary_percent=150)
    with pytest.raises(actions.IncidentError) as refused:
        actions.update_policy(by=operator, canary_percent=10)
    assert refused.value.code == "permission"
    with pytest.raises(actions.IncidentError, match="no editable field"):
        actions.update_policy(by=admin_user, updated=None)
    client.force_login(admin_user)
    response = client.post("/admin/incidents/opspolicy/1/change/", policy_form(canary_percent=150))
    assert response.status_code == 200
    assert "less than or equal to 100" in response.content.decode()
    assert OpsPolicy.current().canary_percent == 100
    assert events(AuditEventType.POLICY_CHANGED) == []


def agent_form(agent: Agent, **fields):
    return {
        "name": agent.name, "kind": agent.kind, "owner": agent.owner,
        "environment": agent.environment, "host": "", "expected_period": agent.expected_period,
        "grace": agent.grace, "available_version": agent.available_version, "tags": agent.tags,
        "depends_on": "", "enabled": "on" if agent.enabled else "",
    } | fields  # fmt: skip


def test_an_agent_edit_in_the_admin_writes_one_agent_event(client, admin_user, agent_and_secret):
    agent, _ = agent_and_secret
    client.force_login(admin_user)
    response = client.post(
        f"/admin/incidents/agent/{agent.pk}/change/",
        agent_form(agent, owner="team-shop", grace=30),
    )
    assert response.status_code == 302, response.content.decode()[-1500:]
    [event] = events(AuditEventType.AGENT_UPDATED)
    assert event.actor == admin_user.username
    assert event.details["changes"] == {
        "owner": {"old": agent.owner, "new": "team-shop"},
        "grace": {"old": agent.grace, "new": 30},
    }
    agent.refresh_from_db()
    assert (agent.owner, agent.grace) == ("team-shop", 30)
    actions.update_agent(agent, by=admin_user, owner="team-shop")  # unchanged: no event
    assert len(events(AuditEventType.AGENT_UPDATED)) == 1


def test_an_agent_the_action_refuses_shows_why_and_changes_nothing(
    client, admin_user, agent_and_secret
):
    """The form validates what it shows; the action validates the whole row. A stored
    value outside the form (the reported version) that no longer passes is refused on
    the page, with the reason, and the page's other changes roll back."""
    agent, _ = agent_and_secret
    Agent.objects.filter(pk=agent.pk).update(version="not a version!")
    client.force_login(admin_user)
    url = f"/admin/incidents/agent/{agent.pk}/change/"
    response = client.post(url, agent_form(agent, owner="someone"), follow=True)
    page = response.content.decode()
    assert response.status_code == 200
    assert "Not saved: version:" in page
    assert "Traceback" not in page
    agent.refresh_from_db()
    assert agent.owner != "someone"
    assert events(AuditEventType.AGENT_UPDATED) == []


def test_list_editing_detection_rules_writes_one_event_per_changed_rule(client, admin_user):
    rules = list(DetectionRule.objects.order_by("key")[:2])
    assert len(rules) == 2, "the data migration ships default rules"
    data = {
        "form-TOTAL_FORMS": "2", "form-INITIAL_FORMS": "2", "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000", "_save": "Save",
    }  # fmt: skip
    for i, rule in enumerate(rules):
        data |= {
            f"form-{i}-id": rule.pk,
            f"form-{i}-warning": "" if rule.warning is None else rule.warning,
            f"form-{i}-critical": "" if rule.critical is None else rule.critical,
            f"form-{i}-enabled": "on" if rule.enabled else "",
        }
    data["form-0-critical"] = 0.75  # only the first rule changes
    client.force_login(admin_user)
    response = client.post("/admin/incidents/detectionrule/", data)
    assert response.status_code == 302, response.content.decode()[-1500:]
    [event] = events(AuditEventType.DETECTION_RULE_CHANGED)
    assert event.subject_id == str(rules[0].pk)
    assert event.details["changes"] == {"critical": {"old": rules[0].critical, "new": 0.75}}
    rules[0].refresh_from_db()
    assert rules[0].critical == 0.75


def test_adding_a_detection_rule_in_the_admin_writes_one_event(client, admin_user):
    client.force_login(admin_user)
    response = client.post(
        "/admin/incidents/detectionrule/add/",
        {"key": "disk-inodes", "kind": "METRIC_THRESHOLD", "metric": "disk_percent", "warning": 80,
         "critical": 95, "enabled": "on", "description": ""},
    )  # fmt: skip
    assert response.status_code == 302, response.context["adminform"].form.errors
    rule = DetectionRule.objects.get(key="disk-inodes")
    [event] = events(AuditEventType.DETECTION_RULE_CHANGED)
    assert (event.subject_id, event.details["change"]) == (str(rule.pk), "created")
    assert event.details["critical"] == 95


def test_a_grouping_rule_update_writes_one_policy_event(admin_user):
    rule = actions.create_grouping_rule(
        by=admin_user, name="paris", cause="heartbeat", group_by="tag", tag="dc-paris",
        min_agents=5,
    )  # fmt: skip
    actions.update_grouping_rule(rule, by=admin_user, min_agents=7)
    actions.update_grouping_rule(rule, by=admin_user, min_agents=7)
    created, updated = events(AuditEventType.POLICY_CHANGED)
    assert created.details["created"] is True
    assert updated.details["changes"] == {"min_agents": {"old": 5, "new": 7}}
