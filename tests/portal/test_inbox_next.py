"""After Approve/Reject from the inbox the person is back on the dashboard; the ``next``
the forms carry is followed only when it is a path on this portal (no open redirect).
The incident page offers the patch Approve button only to whom ``check_signer`` allows."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from incidents import actions as incidents
from portal.admin_approvals import safe_next
from pra.models import PRAAction
from tests.factories import offline_host, propose
from tests.portal import dashboard_world as world

pytestmark = pytest.mark.django_db

HOSTILE = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example",
    "javascript:alert(1)",
    "http:/evil.example",
    "/ok\r\nSet-Cookie: x=1",
    "evil.example",
    "/" + "a" * 3000,
]


def _fingerprint(html: str, key: str) -> str:
    found = re.search(rf'id="inbox-{key}".*?</li>', html, re.S)
    assert found, f"no inbox item {key}"
    item = found[0]
    assert 'name="next" value="/"' in item, "the inbox forms carry next=/"
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', item)
    assert fingerprint, "the inbox item carries its fingerprint"
    return fingerprint[1]


def test_approving_and_rejecting_from_the_inbox_lands_on_the_dashboard(client, operator, approver):
    high = propose(operator, offline_host("dns-9"), "reboot_system")
    medium = propose(operator, offline_host("dns-8"), "restart_container", {"name": "web"})
    client.force_login(approver)
    fingerprint = _fingerprint(client.get("/").content.decode(), f"pra-{high.pk}")
    signed = client.post(
        reverse("admin:pra_praaction_approve", args=[high.pk]),
        {"fingerprint": fingerprint, "confirmation": "dns-9", "next": "/"},
    )
    assert signed.status_code == 302 and signed["Location"] == "/"
    page = client.get("/").content.decode()
    assert "Signed (1/2)." in page, "the message shows on the dashboard"
    rejected = client.post(
        reverse("admin:pra_praaction_reject", args=[medium.pk]),
        {"reason": "not during the sale", "next": "/"},
    )
    assert rejected["Location"] == "/"
    assert PRAAction.objects.get(pk=medium.pk).status == "REJECTED"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_next_is_ignored_for_the_object_page(client, operator, approver, hostile):
    action = propose(operator, offline_host("dns-7"), "restart_container", {"name": "web"})
    client.force_login(approver)
    response = client.post(
        reverse("admin:pra_praaction_reject", args=[action.pk]),
        {"reason": "not during the sale", "next": hostile},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:pra_praaction_change", args=[action.pk])
    assert PRAAction.objects.get(pk=action.pk).status == "REJECTED"  # the action still happened


def test_safe_next_keeps_portal_paths_with_queries(rf):
    good = rf.post("/x", {"next": "/admin/pra/praaction/?status__exact=PROPOSED"})
    assert safe_next(good, "/d") == "/admin/pra/praaction/?status__exact=PROPOSED"
    assert safe_next(rf.post("/x", {}), "/d") == "/d"
    for hostile in HOSTILE:
        assert safe_next(rf.post("/x", {"next": hostile}), "/d") == "/d", hostile


def test_patch_forms_from_the_inbox_return_there_and_refuse_hostile_next(client, approver):
    agent, _ = incidents.create_agent(name="shop-plugin", kind="plugin", available_version="2")
    attempt = world.patch_attempt(agent)
    client.force_login(approver)
    fingerprint = _fingerprint(client.get("/").content.decode(), f"patch-{attempt.pk}")
    act = "admin:incidents_incident_act"
    signed = client.post(
        reverse(act, args=[attempt.incident_id, "approve-patch"]),
        {"attempt": attempt.pk, "fingerprint": fingerprint, "confirmation": "shop-plugin",
         "next": "/"},
    )  # fmt: skip
    assert signed["Location"] == "/"
    hostile = client.post(
        reverse(act, args=[attempt.incident_id, "reject-patch"]),
        {"attempt": attempt.pk, "reason": "not this week", "next": "//evil.example/"},
    )
    assert hostile["Location"] == reverse(
        "admin:incidents_incident_change", args=[attempt.incident_id]
    )


def test_the_patch_approve_button_only_for_who_may_sign(client, approver, approver2, viewer):
    agent, _ = incidents.create_agent(name="shop-plugin", kind="plugin", available_version="2")
    attempt = world.patch_attempt(agent)
    url = reverse("admin:incidents_incident_change", args=[attempt.incident_id])
    client.force_login(approver)
    assert 'id="approve-patch-button"' in client.get(url).content.decode()
    client.post(
        reverse("admin:incidents_incident_act", args=[attempt.incident_id, "approve-patch"]),
        {"attempt": attempt.pk, "fingerprint": attempt.approval_fingerprint(),
         "confirmation": "shop-plugin"},
    )  # fmt: skip
    page = client.get(url).content.decode()
    assert 'id="approve-patch-button"' not in page, "already signed: no second Approve"
    assert "You signed this patch" in page and 'id="reject-patch-button"' in page
    client.force_login(approver2)
    page = client.get(url).content.decode()
    assert 'id="approve-patch-button"' in page and "Signed by anna-approver" in page
    client.force_login(viewer)
    assert 'id="approve-patch-button"' not in client.get(url).content.decode()
