"""Storm pages: grouping rules edited by the admin role only (validated, audited, the cache
dropped), the storm page with its members, acknowledge and resolve from it."""

import pytest
from django.utils import timezone

from incidents import actions, storms
from incidents.choices import IncidentStatus
from incidents.models import GroupingRule, IncidentGroup
from portal.models import AuditEvent
from tests.incidents.helpers import overdue_agents

pytestmark = pytest.mark.django_db


def rule_form(**fields):
    return {
        "name": "paris", "enabled": "on", "position": "10", "cause": "heartbeat",
        "group_by": "tag", "tag": "dc-paris", "min_agents": "5", "min_percent": "",
        "window_seconds": "300", "wait_seconds": "0", "description": "",
    } | fields  # fmt: skip


def test_only_the_admin_role_edits_grouping_rules(client, admin_user, operator):
    client.force_login(operator)
    assert client.get("/admin/incidents/groupingrule/").status_code == 200  # may look
    assert client.post("/admin/incidents/groupingrule/add/", rule_form()).status_code == 403
    assert not GroupingRule.objects.filter(name="paris").exists()
    client.force_login(admin_user)
    storms.active_rules()  # cached before the change
    response = client.post("/admin/incidents/groupingrule/add/", rule_form())
    assert response.status_code == 302
    rule = GroupingRule.objects.get(name="paris")
    assert rule in storms.active_rules()  # the cache was dropped
    event = AuditEvent.objects.get(event_type="POLICY_CHANGED", subject_id=str(rule.pk))
    assert event.details["grouping_rule"] == "paris" and event.details["tag"] == "dc-paris"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tag": ""}, "Name the tag"),
        ({"group_by": "fleet"}, "Only rules grouping by tag"),
        ({"min_agents": ""}, "Set a number of agents, a percentage, or both"),
        ({"cause": "heart beat"}, "a prefix ending in"),
        ({"min_percent": "101"}, "less than or equal to 100"),
        ({"min_agents": "1"}, "greater than or equal to 2"),
    ],
)
def test_a_bad_rule_is_refused_with_the_reason(client, admin_user, fields, message):
    client.force_login(admin_user)
    response = client.post("/admin/incidents/groupingrule/add/", rule_form(**fields))
    assert response.status_code == 200 and message in response.content.decode()
    assert not GroupingRule.objects.filter(name="paris").exists()


@pytest.fixture
def storm(db):
    GroupingRule.objects.filter(name="fleet-storm").update(min_agents=5)
    storms.forget_cached_rules()
    now = timezone.now()
    overdue_agents(6, now=now, prefix="dc-east")
    actions.mark_missing_agents(now=now)
    return IncidentGroup.objects.get()


def test_the_storm_page_lists_members_and_a_member_links_to_it(client, viewer, storm):
    client.force_login(viewer)
    page = client.get(f"/admin/incidents/incidentgroup/{storm.pk}/change/").content.decode()
    assert "Storm #" in page and "dc-east-00005" in page and "6</strong> still down" in page
    assert 'id="storm-ack-button"' not in page  # viewers only look
    member = storm.members.first()
    page = client.get(f"/admin/incidents/incident/{member.pk}/change/").content.decode()
    assert 'id="inc-storm"' in page and f"/admin/incidents/incidentgroup/{storm.pk}/" in page
    assert "data-sync" in page and "PortalLive.connect" in page


def test_operators_acknowledge_and_resolve_a_storm_viewers_cannot(client, viewer, operator, storm):
    act = f"/admin/incidents/incidentgroup/{storm.pk}/act/"
    client.force_login(viewer)
    client.post(act + "acknowledge/")
    storm.refresh_from_db()
    assert storm.status == IncidentStatus.OPEN
    client.force_login(operator)
    assert client.post(act + "bogus/").status_code == 403
    client.post(act + "acknowledge/")
    storm.refresh_from_db()
    assert storm.status == IncidentStatus.ACKNOWLEDGED
    client.post(act + "resolve/", {"reason": "uplink restored"})
    storm.refresh_from_db()
    assert storm.status == IncidentStatus.RESOLVED
    assert set(storm.members.values_list("status", flat=True)) == {IncidentStatus.RESOLVED}
