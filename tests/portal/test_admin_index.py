"""The admin for ops people: entries grouped and named for them, a compact header with the
live indicator and logout, and a visible warning when an incident reached nobody."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from incidents import actions as incidents
from portal.choices import ChannelKind
from portal.models import NotificationChannel

pytestmark = pytest.mark.django_db


def test_the_index_groups_entries_by_what_people_do(client, approver, admin_user):
    client.force_login(approver)
    page = client.get(reverse("admin:index")).content.decode()
    for group in ("Respond", "Backups", "Hosts and agents", "Rules and alerting"):
        assert f'<span class="section">{group}</span>' in page, group
    assert page.index("Incidents") < page.index("Backup sources") < page.index("Hosts")
    assert "Django-RQ" not in page and "Api tokens" not in page
    assert reverse("queue_status") in page
    assert reverse("admin:django_rq_dashboard_changelist") not in page

    client.force_login(admin_user)
    page = client.get(reverse("admin:index")).content.decode()
    assert "Django-RQ" not in page and "Personal API tokens" in page
    assert "Queue internals" in page and reverse("admin:django_rq_dashboard_changelist") in page


def test_every_admin_page_has_the_compact_header(client, viewer):
    client.force_login(viewer)
    page = client.get(reverse("admin:incidents_incident_changelist")).content.decode()
    assert 'id="admin-live"' in page and 'id="portal-nav"' in page
    assert f'<form id="logout-form" method="post" action="{reverse("admin:logout")}">' in page
    assert "<title>" in page and "| Ops Portal</title>" in page
    client.logout()
    login = client.get(reverse("admin:login")).content.decode()
    assert "Ops Portal" in login and 'id="admin-live"' not in login


def test_an_incident_nobody_was_told_about_says_so(client, viewer, admin_user):
    agent, _ = incidents.create_agent(name="web-1", kind="service")
    incident, _ = incidents.open_or_update_incident(
        agent, cause="errors", rule_id=None, severity=3, title="errors", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    url = reverse("admin:incidents_incident_change", args=[incident.pk])
    client.force_login(viewer)
    page = client.get(url).content.decode()
    assert 'id="no-notification-warning"' in page and "Nobody was notified (escalation L1)" in page
    assert "An administrator can add notification channels." in page
    client.force_login(admin_user)
    assert (
        reverse("admin:portal_notificationchannel_changelist") in client.get(url).content.decode()
    )

    NotificationChannel.objects.create(name="ops", kind=ChannelKind.WEBHOOK, url="http://h.test/")
    other, _ = incidents.open_or_update_incident(
        agent, cause="latency", rule_id=None, severity=3, title="slow", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    page = client.get(reverse("admin:incidents_incident_change", args=[other.pk])).content.decode()
    assert "no-notification-warning" not in page and "notification-failed-warning" not in page
