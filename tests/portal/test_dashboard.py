"""The dashboard as an inbox: what waits for the person looking, under the object pages'
own rules and endpoints, at a fixed query cost. Real PostgreSQL; the hosts are never
contacted (proposals on offline hosts; nothing is enqueued: the test's transaction
never commits)."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from backups.models import BackupRun, BackupSource, RestoreRequest
from incidents import actions as incidents
from incidents.models import Incident
from portal.admin_approvals import ApprovalAdminMixin
from portal.dashboard import collect_approvals
from pra import actions as pra
from pra.models import PRAAction, PreflightStatus
from tests.conftest import make_user
from tests.factories import offline_host, propose
from tests.portal import dashboard_world as world

pytestmark = pytest.mark.django_db

# Whatever the number of rows: 29 here with every kind of row present (3 are the
# content types, read once per process; 3 are the maintenance panel's windows, freezes
# and waiting actions).
MAX_QUERIES = 30


def _items(html: str) -> dict[str, str]:
    """Inbox items by key ("pra-12"), as HTML."""
    found = {}
    for match in re.finditer(r'<li class="inbox-item" id="inbox-([\w-]+)".*?</li>', html, re.S):
        found[match[1]] = match[0]
    return found


def _forms(item_html: str) -> dict[str, str]:
    """form id -> action URL within one inbox item."""
    return {
        m[2]: unescape(m[1])
        for m in re.finditer(r'<form method="post" action="([^"]+)" id="([\w-]+)"', item_html)
    }


def test_the_dashboard_costs_the_same_queries_at_any_size(
    client, operator, approver, django_assert_max_num_queries
):
    client.force_login(approver)
    world.build(2, operator=operator, tag="small")
    with django_assert_max_num_queries(MAX_QUERIES):
        small = client.get("/")
    assert small.status_code == 200
    world.build(16, operator=operator, tag="big")
    with django_assert_max_num_queries(MAX_QUERIES):
        big = client.get("/")
    html = big.content.decode()
    # Everything is there: every kind of request, incidents, backup problems.
    keys = _items(html)
    assert sum(k.startswith("pra-") for k in keys) > 20
    assert sum(k.startswith("patch-") for k in keys) >= 16
    assert sum(k.startswith("restore-") for k in keys) >= 16
    assert html.count("<li data-incident-id=") == 15  # the panel lists the 15 most severe
    assert "last run FAILED: Server unreachable" in html
    # Bigger world, same bound: no query per row.
    assert len(html) > 2 * len(small.content)


def test_inbox_offers_exactly_what_the_object_pages_offer(
    rf: RequestFactory, operator, approver, approver2, viewer, admin_user
):
    host = offline_host("dns-1")
    medium = propose(operator, host, "restart_container", {"name": "web"})
    high = propose(operator, offline_host("dns-2"), "reboot_system")
    pra.approve_action(high, by=approver, confirmation="dns-2", fingerprint=None)
    blocked = propose(operator, offline_host("dns-3"), "restart_caddy")
    PRAAction.objects.filter(pk=blocked.pk).update(preflight_status=PreflightStatus.FAILED)
    own = propose(admin_user, offline_host("dns-4"), "restart_caddy")
    source, runs = world.backup_source("cache")
    overwrite = world.restore_request(runs[0], operator, overwrite=True)
    scratch = world.restore_request(runs[0], approver, overwrite=False)

    action_admin = admin.site._registry[PRAAction]
    restore_admin = admin.site._registry[RestoreRequest]
    assert isinstance(action_admin, ApprovalAdminMixin)
    assert isinstance(restore_admin, ApprovalAdminMixin)
    checked = 0
    for user in (operator, approver, approver2, viewer, admin_user):
        request = rf.get("/")
        request.user = user
        inbox = collect_approvals(request)
        items = {i.key: i for i in inbox["mine"] + inbox["others"]}
        for obj in (medium, high, blocked, own):
            obj = PRAAction.objects.select_related("host").get(pk=obj.pk)
            page = action_admin.approval_context(request, obj)
            page_can_sign = page["can_sign"] and obj.preflight_status != PreflightStatus.FAILED
            item = items[f"pra-{obj.pk}"]
            assert (item.can_sign, item.can_reject) == (page_can_sign, page["can_reject"]), (
                user.username, obj.pk)  # fmt: skip
            assert (item.count, item.required) == (page["tally"].count, page["tally"].required)
            assert item.signers == page["tally"].approvers
            assert item.form["approve_url"] == page["approve_url"]
            assert item.form["reject_url"] == page["reject_url"]
            assert item.form["fingerprint"] == page["fingerprint"]
            checked += 1
        for obj in (overwrite, scratch):
            obj = RestoreRequest.objects.select_related("artifact__run__source").get(pk=obj.pk)
            page = restore_admin.approval_context(request, obj)
            item = items[f"restore-{obj.pk}"]
            assert (item.can_sign, item.can_reject) == (page["can_sign"], page["can_reject"])
            assert (item.count, item.required) == (page["tally"].count, page["tally"].required)
            assert (item.form["approve_url"], item.form["reject_url"]) == (
                page["approve_url"], page["reject_url"])  # fmt: skip
            checked += 1
    assert checked == 5 * 6
    request = rf.get("/")
    request.user = admin_user
    others = {i.key: i for i in collect_approvals(request)["others"]}
    assert others[f"pra-{own.pk}"].why_not.startswith("you asked for it")
    # The cases the comparison covered, spelled out for one approver:
    request = rf.get("/")
    request.user = approver
    mine = {i.key: i for i in collect_approvals(request)["mine"]}
    others = {i.key: i for i in collect_approvals(request)["others"]}
    assert f"pra-{medium.pk}" in mine and f"restore-{overwrite.pk}" in mine
    assert others[f"pra-{high.pk}"].why_not == "you signed"
    assert others[f"pra-{blocked.pk}"].why_not.startswith("pre-flight failed")
    assert f"pra-{own.pk}" in mine
    assert others[f"restore-{scratch.pk}"].why_not.startswith("you asked for it")


def test_approving_from_the_inbox_posts_the_object_pages_forms(
    client, operator, approver, approver2
):
    """HIGH: 0/2, the typed host name, then 1/2 for the second approver; MEDIUM: one click.
    The forms post to the action page's endpoints, which redirect back to that page."""
    high = propose(operator, offline_host("dns-9"), "reboot_system")
    medium = propose(operator, offline_host("dns-8"), "restart_container", {"name": "web"})

    client.force_login(approver)
    item = _items(client.get("/").content.decode())[f"pra-{high.pk}"]
    assert "data-tally>0/2<" in item and 'name="confirmation"' in item
    forms = _forms(item)
    assert forms == {
        "approve-form": reverse("admin:pra_praaction_approve", args=[high.pk]),
        "reject-form": reverse("admin:pra_praaction_reject", args=[high.pk]),
    }
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', item)[1]
    wrong = client.post(forms["approve-form"], {"fingerprint": fingerprint, "confirmation": "x"})
    assert wrong.status_code == 302 and wrong["Location"].endswith(f"/{high.pk}/change/")
    assert not high.__class__.objects.get(pk=high.pk).approved_at
    client.post(forms["approve-form"], {"fingerprint": fingerprint, "confirmation": "dns-9"})

    client.force_login(approver2)
    html = client.get("/").content.decode()
    item = _items(html)[f"pra-{high.pk}"]
    assert "data-tally>1/2<" in item and "signed: anna-approver" in item
    client.post(_forms(item)["approve-form"], {"fingerprint": fingerprint, "confirmation": "dns-9"})
    high.refresh_from_db()
    assert high.status == "APPROVED"

    item = _items(html)[f"pra-{medium.pk}"]
    assert 'name="confirmation"' not in item
    # Rejecting needs a reason: refused without one, the action stays PROPOSED.
    client.post(_forms(item)["reject-form"], {"reason": ""})
    medium.refresh_from_db()
    assert medium.status == "PROPOSED"
    client.post(_forms(item)["reject-form"], {"reason": "not during the sale"})
    medium.refresh_from_db()
    assert medium.status == "REJECTED"
    after = client.get("/").content.decode()
    assert f'id="inbox-pra-{medium.pk}"' not in after
    assert f'id="inbox-pra-{high.pk}"' not in after


def test_a_viewer_sees_what_waits_without_any_form(client, operator, viewer):
    action = propose(operator, offline_host("dns-1"), "restart_caddy")
    client.force_login(viewer)
    html = client.get("/").content.decode()
    item = _items(html)[f"pra-{action.pk}"]
    assert "<form" not in item and "needs the approver role" in item
    assert "approving needs the approver role" in html


def test_patches_waiting_for_signatures_are_in_the_inbox(client, approver):
    agent, _ = incidents.create_agent(name="shop-plugin", kind="plugin", available_version="2")
    attempt = world.patch_attempt(agent)
    client.force_login(approver)
    item = _items(client.get("/").content.decode())[f"patch-{attempt.pk}"]
    act = "admin:incidents_incident_act"
    assert _forms(item) == {
        "approve-form": reverse(act, args=[attempt.incident_id, "approve-patch"]),
        "reject-form": reverse(act, args=[attempt.incident_id, "reject-patch"]),
    }
    assert f'name="attempt" value="{attempt.pk}"' in item and "Type <strong>shop-plugin" in item


def _incident_row(client, incident) -> str:
    html = client.get("/").content.decode()
    found = re.search(rf'<li data-incident-id="{incident.pk}".*?</li>', html, re.S)
    assert found is not None, f"no row for incident #{incident.pk} on the dashboard"
    return found[0]


def test_incidents_show_severity_age_and_who_has_them(client, viewer, approver):
    agent, _ = incidents.create_agent(name="web-1", kind="service")
    incident, _ = incidents.open_or_update_incident(
        agent, cause="errors", rule_id=None, severity=4, title="errors " + world.LONG_NAME,
        telemetry={}, detected_at=timezone.now(),
    )  # fmt: skip
    Incident.objects.filter(pk=incident.pk).update(opened_at=timezone.now() - timedelta(minutes=7))
    client.force_login(viewer)
    row = _incident_row(client, incident)
    assert "Critical" in row and "7 min ago" in row and "not acknowledged" in row
    assert f'href="{reverse("admin:incidents_incident_change", args=[incident.pk])}"' in row
    # The long title is clipped (CSS), whole on hover.
    link = f'class="clip grow" href="/admin/incidents/incident/{incident.pk}/change/" title="#'
    assert link in row
    incidents.acknowledge_incident(incident, by=approver)
    row = _incident_row(client, incident)
    assert "acknowledged" in row and "has it: anna-approver" in row
    assert "not acknowledged" not in row


def test_kpis_say_no_data_yet_over_nothing(client, viewer):
    client.force_login(viewer)
    html = client.get("/").content.decode()
    kpis = re.search(r'<p class="muted" id="kpis">.*?</p>', html, re.S)[0]
    assert kpis.count("no data yet") == 4
    assert "100" not in kpis and "0.0 s" not in kpis


def test_long_proposer_names_are_clipped_and_the_page_has_a_logout(client, approver):
    long_user = make_user("o" * 60 + "-operator", "operator")
    action = propose(long_user, offline_host("dns-1"), "restart_caddy")
    client.force_login(approver)
    html = client.get("/").content.decode()
    item = _items(html)[f"pra-{action.pk}"]
    assert f'class="who clip" title="{long_user.username}"' in item
    assert 'action="/admin/logout/" id="logout-form"' in html
    assert 'href="/charts/"' in html


def test_backups_that_need_attention_say_why(client, viewer, settings):
    settings.BACKUP_FRESH_HOURS = 26
    world.backup_source("fresh")
    world.backup_source("failing", failed=True)
    world.backup_source("stale", age_hours=30)
    _, runs = world.backup_source("shrunk")
    BackupRun.objects.filter(pk=runs[0].pk).update(shrink_flag=True)
    never = BackupSource(name="never", kind="redis", dsn="redis://192.0.2.1:6379")
    never.save()
    client.force_login(viewer)
    html = client.get("/").content.decode()
    rows = dict(re.findall(r'<li data-source="([\w-]+)"(.*?)</li>', html, re.S))
    assert 'class="attention"' not in rows["fresh"] and "verified" in rows["fresh"]
    assert "last run FAILED: Server unreachable" in rows["failing"]
    assert "stale: no good backup in 26 h" in rows["stale"]
    assert "much smaller than the last good one" in rows["shrunk"]
    assert "no good backup yet" in rows["never"] or "never backed up" in rows["never"]
    assert all('class="attention"' in rows[name] for name in ("failing", "stale", "shrunk"))
    assert "4 need attention" in html
