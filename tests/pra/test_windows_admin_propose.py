"""Windows and emergencies outside the REST proposal: the admin's propose form takes an
emergency with its typed reason, the catalog listing says which entries need a window,
and the API's maintenance outlook names a host's next window and the freezes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from portal import approvals
from portal.models import AuditEvent
from portal.tokens import create_token
from pra import windows
from pra.api import catalog_out
from pra.catalog import CATALOG
from pra.models import PRAAction
from tests.pra.factories import RATIONALE, offline_host

pytestmark = pytest.mark.django_db

EMERGENCY = "the certificate expired an hour ago and every client is refused right now"
ADD = "/admin/pra/praaction/add/"


@pytest.fixture
def host():
    return offline_host()


def _form(host, **fields) -> dict:
    return {"action": "restart_container", "host": host.pk, "params": '{"name": "web-1"}',
            "rationale": RATIONALE, **fields}  # fmt: skip


# --- the admin's propose form ------------------------------------------------------------


def test_the_propose_form_offers_an_emergency_with_its_reason(client, operator):
    client.force_login(operator)
    page = client.get(ADD).content.decode()
    assert 'name="emergency"' in page and 'name="emergency_reason"' in page
    assert "cannot wait for the next maintenance window or the end of the freeze" in page
    assert "one more signature" in page


def test_an_emergency_proposed_in_the_admin_needs_one_more_signature(client, operator, host):
    client.force_login(operator)
    response = client.post(
        ADD, _form(host, emergency="on", emergency_reason=f"  {EMERGENCY}  "), follow=True
    )
    assert response.status_code == 200
    created = PRAAction.objects.get()
    assert (created.emergency, created.emergency_reason) == (True, EMERGENCY)
    assert created.proposed_by == operator
    ordinary = approvals.rule_for(created.impact).required_approvals
    assert approvals.required_signatures(created) == ordinary + 1
    assert "EMERGENCY" in response.content.decode()
    proposed = AuditEvent.objects.get(event_type="PRA_PROPOSED", subject_id=str(created.pk))
    assert proposed.details["emergency"] == EMERGENCY


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"emergency": "on"}, "An emergency needs a typed reason"),
        ({"emergency": "on", "emergency_reason": "urgent!!"}, "An emergency needs a typed reason"),
        (
            {"emergency": "on", "emergency_reason": "fix fix fix fix fix fix fix fix fix"},
            "An emergency needs a typed reason",
        ),  # fmt: skip
        ({"emergency": "on", "emergency_reason": "x " * 1001}, "at most 2000 characters"),
        ({"emergency_reason": EMERGENCY}, "emergency_reason is only for emergency actions"),
        (
            {"emergency": "on", "emergency_reason": EMERGENCY, "auto_approve_requested": "on"},
            "Emergency actions are never auto-approved",
        ),  # fmt: skip
    ],
)
def test_a_bad_emergency_is_a_form_error_and_creates_nothing(
    client, operator, host, fields, message
):
    client.force_login(operator)
    response = client.post(ADD, _form(host, **fields))
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page.replace("&#x27;", "'")
    assert "errornote" in page or "errorlist" in page
    assert not PRAAction.objects.exists()
    assert not AuditEvent.objects.filter(event_type="PRA_PROPOSED").exists()


def test_an_ordinary_admin_proposal_is_still_no_emergency(client, operator, host):
    client.force_login(operator)
    assert client.post(ADD, _form(host)).status_code == 302
    created = PRAAction.objects.get()
    assert (created.emergency, created.emergency_reason) == (False, "")


# --- the catalog listing -------------------------------------------------------------------


def test_the_catalog_says_which_entries_require_a_window(client, monkeypatch, settings, viewer):
    assert not any(entry["requires_window"] for entry in catalog_out())
    monkeypatch.setitem(
        CATALOG, "restart_caddy", replace(CATALOG["restart_caddy"], requires_window=True)
    )
    _, raw = create_token(viewer, "tests")
    listed = client.get("/api/pra/catalog", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert listed.status_code == 200
    needs = {e["name"] for e in listed.json() if e["requires_window"]}
    assert needs == {"restart_caddy"}

    settings.PRA_WINDOW_IMPACTS = ("HIGH",)  # an impact level can require one too
    high = {name for name, spec in CATALOG.items() if spec.impact == "HIGH"}
    assert high
    assert {e["name"] for e in catalog_out() if e["requires_window"]} == high | {"restart_caddy"}


# --- the API's maintenance outlook ----------------------------------------------------------


def test_the_outlook_names_the_next_window_and_the_freezes(client, viewer, admin_user, host):
    now = timezone.now()
    opens = (now + timedelta(hours=1)).replace(second=0, microsecond=0)
    windows.save_window(None, by=admin_user, name="sunday-night", weekday=opens.weekday(),
                        start_time=opens.time(), duration_minutes=120)  # fmt: skip
    windows.save_window(None, by=admin_user, name="other-tag-only", host_tag="db",
                        weekday=opens.weekday(), start_time=opens.time(),
                        duration_minutes=60)  # fmt: skip
    windows.save_freeze(None, by=admin_user, reason="quarter close freeze",
                        starts_at=now - timedelta(minutes=1),
                        ends_at=now + timedelta(minutes=30))  # fmt: skip
    windows.save_freeze(None, by=admin_user, reason="year-end change freeze",
                        starts_at=now + timedelta(days=3),
                        ends_at=now + timedelta(days=4))  # fmt: skip
    _, raw = create_token(viewer, "tests")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    out = client.get(f"/api/pra/hosts/{host.name}/maintenance-outlook", **auth)
    assert out.status_code == 200, out.content
    body = out.json()
    assert body["host"] == "dns-1" and body["windows"] == ["sunday-night"]
    assert body["window"]["window"] == "sunday-night" and body["window"]["open_now"] is False
    assert body["window"]["label"] == f"{opens:%a %H:%M} UTC ({opens:%Y-%m-%d})"
    assert body["freeze"]["reason"] == "quarter close freeze" and body["freeze"]["active"]
    assert [(f["reason"], f["active"]) for f in body["upcoming_freezes"]] == [
        ("quarter close freeze", True),
        ("year-end change freeze", False),
    ]
    summary = body["summary"]
    assert "A change freeze is on until" in summary and "quarter close freeze" in summary
    assert "only emergency actions run" in summary
    assert "The next maintenance window for dns-1 is sunday-night" in summary
    assert "Upcoming change freeze(s): year-end change freeze" in summary

    missing = client.get("/api/pra/hosts/nope/maintenance-outlook", **auth)
    assert missing.status_code == 404 and "unknown host 'nope'" in missing.json()["message"]


def test_the_outlook_says_when_no_window_applies(client, viewer, host):
    _, raw = create_token(viewer, "tests")
    body = client.get(
        f"/api/pra/hosts/{host.name}/maintenance-outlook", HTTP_AUTHORIZATION=f"Bearer {raw}"
    ).json()
    assert (body["window"], body["freeze"], body["upcoming_freezes"]) == (None, None, [])
    assert "No change freeze is on now." in body["summary"]
    assert "No maintenance window applies to dns-1." in body["summary"]
