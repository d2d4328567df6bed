"""Incident storms: grouping rules, the parent incident's pages, digests and escalation,
members recovering, and dependency suppression. Time is passed in (``now``) everywhere;
PostgreSQL and a real Redis, webhook channels whose rows are counted (nothing is sent)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import actions, storms
from incidents.choices import IncidentStatus, Severity
from incidents.models import Agent, Decision, GroupingRule, Incident, IncidentGroup
from portal.choices import NotificationKind
from portal.models import AuditEvent, Notification, NotificationChannel
from tests.incidents.helpers import beat, overdue_agents, payload
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pager(db):
    return NotificationChannel.objects.create(
        name="pager", kind="WEBHOOK", url="http://127.0.0.1:9/"
    )


def only_rule(**fields) -> GroupingRule:
    """This rule alone (the seeded fleet rule off), fresh in the cache."""
    GroupingRule.objects.update(enabled=False)
    rule = GroupingRule.objects.create(name=fields.pop("name", "test-rule"), **fields)
    rule.full_clean()
    storms.forget_cached_rules()
    return rule


def pages(kind=NotificationKind.INCIDENT_OPENED, **filters):
    return Notification.objects.filter(kind=kind, **filters)


def group_pages(group, kind=NotificationKind.INCIDENT_OPENED):
    return pages(kind, subject_type="incidents.incidentgroup", subject_id=str(group.pk))


def own_pages():
    return pages(subject_type="incidents.incident")


def test_a_storm_past_n_agents_pages_once_and_its_members_not_at_all(pager):
    only_rule(min_agents=20)
    now = timezone.now()
    agents = overdue_agents(60, now=now)
    actions.mark_missing_agents(now=now, batch=25)
    group = IncidentGroup.objects.get()
    members = Incident.objects.filter(group=group)
    assert members.count() == 60 == group.members_total
    assert group.status == IncidentStatus.OPEN and group.key == "fleet"
    assert group.cause == "heartbeat" and group.severity == Severity.HIGH
    assert group.first_seen == min(a.alert_after for a in agents)
    assert group.next_escalation_at is not None
    assert group_pages(group).count() == 1 and not own_pages().exists()
    # Members: no page, no escalation of their own, no decision queued; the timeline says why.
    assert not members.filter(paged_at__isnull=False).exists()
    assert not members.filter(next_escalation_at__isnull=False).exists()
    assert [e.kind for e in members.first().events.all()] == ["DETECTED", "GROUPED"]
    run_jobs()
    assert not Decision.objects.exists()
    # The batches' audit events say which agents went into which storm.
    grouped = [
        pk
        for event in AuditEvent.objects.filter(event_type="INCIDENT_OPENED")
        for pk in event.details.get("grouped", {}).get(str(group.pk), [])
    ]
    assert sorted(grouped) == sorted(a.pk for a in agents)


def test_below_the_threshold_each_incident_pages_as_before(pager):
    only_rule(min_agents=20)
    now = timezone.now()
    overdue_agents(19, now=now)
    actions.mark_missing_agents(now=now)
    assert not IncidentGroup.objects.exists()
    assert own_pages().count() == 19


def test_earlier_incidents_within_the_window_join_the_storm_when_it_forms(pager):
    only_rule(min_agents=20, window_seconds=300)
    t0 = timezone.now()
    early = overdue_agents(5, now=t0, prefix="early")
    actions.mark_missing_agents(now=t0)
    assert own_pages().count() == 5 and not IncidentGroup.objects.exists()
    t1 = t0 + timedelta(seconds=60)
    overdue_agents(15, now=t1, prefix="late")
    actions.mark_missing_agents(now=t1)
    group = IncidentGroup.objects.get()
    assert group.members_total == 20
    joined = Incident.objects.filter(agent__in=early)
    assert set(joined.values_list("group", flat=True)) == {group.pk}
    # They paged already; from now on the storm escalates for them.
    assert not joined.filter(next_escalation_at__isnull=False).exists()
    assert "GROUPED" in joined.first().events.values_list("kind", flat=True)
    assert own_pages().count() == 5 and group_pages(group).count() == 1


def test_incidents_older_than_the_window_do_not_count(pager):
    only_rule(min_agents=20, window_seconds=300)
    t0 = timezone.now()
    overdue_agents(15, now=t0, prefix="old")
    actions.mark_missing_agents(now=t0)
    t1 = t0 + timedelta(seconds=400)
    overdue_agents(10, now=t1, prefix="new")
    actions.mark_missing_agents(now=t1)
    assert not IncidentGroup.objects.exists()
    assert own_pages().count() == 25


def test_a_percentage_of_an_environment_forms_a_storm_of_that_environment_only(pager):
    only_rule(group_by="environment", min_agents=None, min_percent=50)
    now = timezone.now()
    overdue_agents(5, now=now, prefix="edge-down", environment="edge")
    overdue_agents(5, now=now + timedelta(days=1), prefix="edge-ok", environment="edge")
    overdue_agents(5, now=now, prefix="prod-down", environment="production")
    overdue_agents(95, now=now + timedelta(days=1), prefix="prod-ok", environment="production")
    actions.mark_missing_agents(now=now)
    group = IncidentGroup.objects.get()
    assert group.key == "environment=edge" and group.members_total == 5
    assert own_pages().count() == 5  # production: 5 % of its agents, each pages
    assert set(
        Incident.objects.filter(group__isnull=True).values_list("agent__environment", flat=True)
    ) == {"production"}


def test_a_tag_rule_groups_the_agents_carrying_the_tag(pager):
    only_rule(group_by="tag", tag="dc-paris", min_agents=3)
    now = timezone.now()
    overdue_agents(3, now=now, prefix="paris", tags="dc-paris rack-1")
    overdue_agents(3, now=now, prefix="lyon", tags="dc-lyon")
    actions.mark_missing_agents(now=now)
    group = IncidentGroup.objects.get()
    assert group.key == "tag=dc-paris"
    assert set(group.members.values_list("agent__name", flat=True)) == {
        "paris-00000", "paris-00001", "paris-00002",
    }  # fmt: skip
    assert own_pages().count() == 3


def test_a_host_rule_groups_per_host():
    from tests.factories import offline_host

    only_rule(group_by="host", min_agents=3)
    one, two = offline_host("host-one"), offline_host("host-two")
    now = timezone.now()
    overdue_agents(4, now=now, prefix="on-one", host=one)
    overdue_agents(2, now=now, prefix="on-two", host=two)
    actions.mark_missing_agents(now=now)
    assert list(IncidentGroup.objects.values_list("key", "members_total")) == [
        (f"host={one.pk}", 4)
    ]


def test_digests_go_out_at_most_every_interval_while_the_storm_changes(pager, settings):
    settings.INCIDENT_DIGEST_INTERVAL = 300
    only_rule(min_agents=10)
    t0 = timezone.now()
    overdue_agents(10, now=t0, prefix="first")
    actions.mark_missing_agents(now=t0)
    group = IncidentGroup.objects.get()
    group.notified_at = t0
    group.save(update_fields=["notified_at"])
    overdue_agents(7, now=t0 + timedelta(seconds=30), prefix="second")
    actions.mark_missing_agents(now=t0 + timedelta(seconds=30))
    storms.sweep(t0 + timedelta(seconds=100))
    assert not group_pages(group, NotificationKind.INCIDENT_DIGEST).exists()
    assert not own_pages().exists()  # joiners of an open storm never page
    first = Incident.objects.filter(group=group).order_by("pk").first()
    actions.resolve_incident(first, by=None, reason="condition cleared", auto=True)
    assert storms.sweep(t0 + timedelta(seconds=301))["digests"] == [group.pk]
    [digest] = group_pages(group, NotificationKind.INCIDENT_DIGEST)
    assert "7 more agents, 1 recovered; 16 of 17 still down" in digest.body
    # Nothing changed since: no digest.
    assert storms.sweep(t0 + timedelta(seconds=700))["digests"] == []
    assert group_pages(group).count() == 1  # and the storm's first page only once


def test_escalation_runs_on_the_storm_not_on_its_members(pager):
    only_rule(min_agents=5)
    t0 = timezone.now()
    overdue_agents(5, now=t0)
    actions.mark_missing_agents(now=t0)
    group = IncidentGroup.objects.get()
    later = group.next_escalation_at + timedelta(seconds=1)
    assert actions.escalate_due(now=later) == []
    assert storms.sweep(later)["storms_escalated"] == [group.pk]
    group.refresh_from_db()
    assert group.escalation_level == 2
    assert group_pages(group, NotificationKind.INCIDENT_ESCALATED).count() == 1


def test_acknowledging_the_storm_stops_its_escalation(pager, operator, viewer):
    only_rule(min_agents=5)
    t0 = timezone.now()
    overdue_agents(5, now=t0)
    actions.mark_missing_agents(now=t0)
    group = IncidentGroup.objects.get()
    with pytest.raises(actions.IncidentError):
        storms.acknowledge_group(group, by=viewer)
    storms.acknowledge_group(group, by=operator)
    group.refresh_from_db()
    assert group.status == IncidentStatus.ACKNOWLEDGED and group.next_escalation_at is None
    assert storms.sweep(t0 + timedelta(hours=2))["storms_escalated"] == []


def test_members_recover_on_their_own_and_the_storm_resolves_with_the_last(client, pager):
    only_rule(min_agents=3)
    agents = [actions.create_agent(name=f"svc-{i}") for i in range(3)]
    for agent, secret in agents:
        beat(client, agent.name, secret)
    later = Agent.objects.order_by("-alert_after").first().alert_after + timedelta(seconds=1)
    actions.mark_missing_agents(now=later)
    group = IncidentGroup.objects.get()
    assert group.members_total == 3
    for agent, secret in agents[:2]:
        beat(client, agent.name, secret)
    group.refresh_from_db()
    assert group.status == IncidentStatus.OPEN and group.recovered_since_notice == 2
    assert not pages(NotificationKind.INCIDENT_RESOLVED).exists()  # members say nothing
    agent, secret = agents[2]
    beat(client, agent.name, secret)
    group.refresh_from_db()
    assert group.status == IncidentStatus.RESOLVED and group.auto_resolved
    assert not Incident.objects.filter(status__in=["OPEN", "ACKNOWLEDGED"]).exists()
    assert [n.subject_type for n in pages(NotificationKind.INCIDENT_RESOLVED)] == [
        "incidents.incidentgroup"
    ]


def test_resolving_the_storm_by_hand_resolves_its_open_members(pager, operator):
    only_rule(min_agents=5)
    now = timezone.now()
    overdue_agents(6, now=now)
    actions.mark_missing_agents(now=now)
    group = IncidentGroup.objects.get()
    with pytest.raises(actions.IncidentError, match="Say how"):
        storms.resolve_group(group, by=operator, reason="")
    assert storms.resolve_group(group, by=operator, reason="core switch replaced")
    assert set(group.members.values_list("status", flat=True)) == {IncidentStatus.RESOLVED}
    assert "core switch replaced" in group.members.first().resolution
    assert not storms.resolve_group(group, by=operator, reason="core switch replaced")


def test_a_held_page_goes_out_after_the_wait_unless_a_storm_takes_it_in(pager):
    only_rule(min_agents=10, wait_seconds=60)
    t0 = timezone.now()
    overdue_agents(4, now=t0, prefix="held")
    actions.mark_missing_agents(now=t0)
    assert not own_pages().exists()
    held = Incident.objects.get(agent__name="held-00000")
    assert held.page_due_at == t0 + timedelta(seconds=60)
    assert [e.kind for e in held.events.all()] == ["DETECTED", "HELD"]
    assert storms.sweep(t0 + timedelta(seconds=30))["held_or_released"] == []
    released = storms.sweep(t0 + timedelta(seconds=61))["held_or_released"]
    assert len(released) == 4 and own_pages().count() == 4
    held.refresh_from_db()
    assert held.paged_at is not None and held.next_escalation_at is not None
    run_jobs()
    assert Decision.objects.count() == 4


def test_held_pages_are_taken_in_by_a_storm_forming_within_the_wait(pager):
    only_rule(min_agents=10, wait_seconds=60)
    t0 = timezone.now()
    overdue_agents(4, now=t0, prefix="held")
    actions.mark_missing_agents(now=t0)
    overdue_agents(6, now=t0 + timedelta(seconds=30), prefix="more")
    actions.mark_missing_agents(now=t0 + timedelta(seconds=30))
    group = IncidentGroup.objects.get()
    assert group.members_total == 10
    assert storms.sweep(t0 + timedelta(seconds=61))["held_or_released"] == []
    assert not own_pages().exists() and group_pages(group).count() == 1


# --- dependency suppression ------------------------------------------------------------


def test_services_of_a_host_that_is_down_page_nobody_of_their_own(client, pager, no_storms):
    from tests.factories import offline_host

    host = offline_host("db-host")
    now = timezone.now()
    [host_agent] = overdue_agents(1, now=now, prefix="db-host", kind="host", host=host)
    overdue_agents(3, now=now, prefix="db-svc", kind="service", host=host)
    actions.mark_missing_agents(now=now)
    assert list(own_pages().values_list("subject_id", flat=True)) == [
        str(Incident.objects.get(agent=host_agent).pk)
    ]
    service = Incident.objects.get(agent__name="db-svc-00000")
    assert service.suppressed_by_id == host_agent.pk
    assert service.suppression == "host agent db-host-00000 is down"
    assert service.paged_at is None and service.next_escalation_at is None
    assert "SUPPRESSED" in service.events.values_list("kind", flat=True)


def test_an_agent_whose_upstream_is_down_is_suppressed_and_pages_once_it_is_back(
    client, pager, admin_user, no_storms
):
    upstream, up_secret = actions.create_agent(name="postgres-main")
    app, app_secret = actions.create_agent(name="shop-app")
    app.depends_on.add(upstream)
    beat(client, upstream.name, up_secret)
    upstream.refresh_from_db()
    later = upstream.alert_after + timedelta(seconds=1)
    actions.mark_missing_agents(now=later)
    # The app still beats, and reports errors because its database is gone.
    beat(client, app.name, app_secret, payload(errors_last_24h=500))
    incident = Incident.objects.get(agent=app)
    assert incident.suppression == "upstream agent postgres-main is down"
    assert not own_pages().filter(subject_id=str(incident.pk)).exists()
    # The incident page shows it.
    client.force_login(admin_user)
    page = client.get(f"/admin/incidents/incident/{incident.pk}/change/").content.decode()
    assert "Suppressed" in page and "upstream agent postgres-main is down" in page
    # Upstream back, the app still failing: now it pages, once.
    beat(client, upstream.name, up_secret)
    released = storms.sweep(timezone.now())["held_or_released"]
    assert released == [incident.pk]
    assert own_pages().filter(subject_id=str(incident.pk)).count() == 1
    assert storms.sweep(timezone.now())["held_or_released"] == []
    incident.refresh_from_db()
    assert incident.paged_at is not None and incident.next_escalation_at is not None


def test_suppression_can_be_switched_off(pager, settings, no_storms):
    settings.INCIDENT_SUPPRESS_DEPENDENTS = False
    upstream, _ = actions.create_agent(name="upstream")
    app, _ = actions.create_agent(name="app")
    app.depends_on.add(upstream)
    Agent.objects.filter(pk=upstream.pk).update(missing=True)
    incident, _ = actions.open_or_update_incident(
        app, cause="cpu", rule_id=None, severity=2, title="cpu high", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    assert incident.suppression == "" and own_pages().count() == 1


# --- a storm of a few hundred, the sweep every 30 s --------------------------------------


def test_a_few_hundred_agents_going_silent_at_once_page_once(pager):
    """300 agents stop at t0; their deadlines fall over the next period (120 s) + grace, so
    the sweep (every 30 s) finds them over several runs: one page, then digests."""
    only_rule(min_agents=20, window_seconds=600)
    t0 = timezone.now()
    agents = overdue_agents(300, now=t0)
    for i, agent in enumerate(agents):
        agent.alert_after = t0 + timedelta(seconds=60 + (i * 120) / 300)
    Agent.objects.bulk_update(agents, ["alert_after"])
    tick = t0
    while Agent.objects.filter(missing=False).exists():
        tick += timedelta(seconds=30)
        actions.mark_missing_agents(now=tick)
        storms.sweep(tick)
    tick += timedelta(seconds=600)
    storms.sweep(tick)
    group = IncidentGroup.objects.get()
    assert group.members_total == 300
    assert group_pages(group).count() == 1
    assert not own_pages().exists()
    assert group_pages(group, NotificationKind.INCIDENT_DIGEST).count() <= 2


def test_member_recoveries_reach_the_storm_page_not_every_dashboard(pager):
    """Live events over the real channel layer (channels-redis): a member recovering is
    sent to its own page and the storm's page; dashboards hear the storm, not members."""
    import asyncio

    from channels.layers import get_channel_layer

    from portal.live import DASHBOARD_GROUP, subject_group

    only_rule(min_agents=3)
    now = timezone.now()
    overdue_agents(4, now=now)
    actions.mark_missing_agents(now=now)
    group = IncidentGroup.objects.get()
    member = group.members.order_by("pk").first()

    async def listen():
        layer = get_channel_layer()
        channels = {}
        for name in (DASHBOARD_GROUP, subject_group("incidents.incidentgroup", group.pk)):
            channels[name] = await layer.new_channel()
            await layer.group_add(name, channels[name])
        await asyncio.to_thread(
            actions.resolve_incident, member, by=None, reason="condition cleared", auto=True
        )
        got = {}
        for name, channel in channels.items():
            try:
                got[name] = await asyncio.wait_for(layer.receive(channel), 3)
            except TimeoutError:
                got[name] = None
        return got

    got = asyncio.run(listen())
    storm_page = got[subject_group("incidents.incidentgroup", group.pk)]
    assert storm_page is not None and storm_page["event"]["summary"] == "a member recovered"
    assert got[DASHBOARD_GROUP] is None
