"""The admin is the main UI: proposing, approving with buttons, read-only results."""

import pytest

from pra.choices import ActionStatus
from pra.models import PRAAction
from tests.conftest import ANON
from tests.pra.factories import RATIONALE, offline_host, propose

pytestmark = pytest.mark.django_db


@pytest.fixture
def host():
    return offline_host()


@pytest.fixture
def action(operator, host):
    return propose(operator, host, "reboot_system")


def test_approver_sees_buttons_and_approves_with_confirmation(client, approver, approver2, action):
    client.force_login(approver)
    page = client.get(f"/admin/pra/praaction/{action.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="approve-button"' in html and 'id="reject-button"' in html
    assert "Type <strong>dns-1</strong> to confirm" in html
    url = f"/admin/pra/praaction/{action.pk}/approve/"
    missing = client.post(url, {"fingerprint": action.approval_fingerprint()}, follow=True)
    assert "Type the target&#x27;s name (dns-1)" in missing.content.decode()
    client.post(url, {"fingerprint": action.approval_fingerprint(), "confirmation": "dns-1"})
    client.force_login(approver2)
    client.post(url, {"fingerprint": action.approval_fingerprint(), "confirmation": "dns-1"})
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED


def test_buttons_are_hidden_from_those_who_may_not_sign(client, operator, viewer, action):
    for person in (operator, viewer):  # the proposer, and a read-only user
        client.force_login(person)
        html = client.get(f"/admin/pra/praaction/{action.pk}/change/").content.decode()
        assert 'id="approve-button"' not in html
        assert 'id="reject-button"' not in html
        assert 'name="status"' not in html  # status is never editable


def test_approve_and_reject_urls_refuse_get_and_non_approvers(client, viewer, approver, action):
    client.force_login(approver)
    assert client.get(f"/admin/pra/praaction/{action.pk}/approve/").status_code == 405
    client.force_login(viewer)
    assert client.post(f"/admin/pra/praaction/{action.pk}/approve/").status_code == 403
    assert (
        client.post(
            f"/admin/pra/praaction/{action.pk}/reject/", {"reason": "nope nope"}
        ).status_code
        == 403
    )
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED


def test_reject_from_the_admin_needs_a_reason(client, approver, action):
    client.force_login(approver)
    url = f"/admin/pra/praaction/{action.pk}/reject/"
    page = client.post(url, {"reason": ""}, follow=True)
    assert "needs a reason" in page.content.decode()
    client.post(url, {"reason": "maintenance window is tomorrow"})
    action.refresh_from_db()
    assert action.status == ActionStatus.REJECTED


def test_operator_proposes_through_the_admin_form(client, operator, host):
    client.force_login(operator)
    response = client.post(
        "/admin/pra/praaction/add/",
        {
            "action": "restart_container",
            "host": host.pk,
            "params": '{"name": "web-1"}',
            "rationale": RATIONALE,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    created = PRAAction.objects.get()
    assert created.params == {"name": "web-1"} and created.proposed_by == operator


def test_proposing_an_open_action_again_in_the_admin_shows_the_open_one(
    client, operator, operator2, host
):
    first = propose(operator, host, "restart_container", {"name": "web-1"})
    client.force_login(operator2)
    response = client.post(
        "/admin/pra/praaction/add/",
        {"action": "restart_container", "host": host.pk, "params": '{"name": "web-1"}',
         "rationale": RATIONALE},
        follow=True,
    )  # fmt: skip
    assert response.redirect_chain[-1][0] == f"/admin/pra/praaction/{first.pk}/change/"
    page = response.content.decode()
    assert f"Not proposed again: action #{first.pk} (restart_container web-1 on dns-1)" in page
    assert "was added successfully" not in page
    assert PRAAction.objects.count() == 1


def test_bad_admin_proposal_shows_the_error_and_creates_nothing(client, operator, host):
    client.force_login(operator)
    response = client.post(
        "/admin/pra/praaction/add/",
        {
            "action": "restart_container",
            "host": host.pk,
            "params": '{"name": "x; rm -rf /"}',
            "rationale": RATIONALE,
        },
    )
    assert response.status_code == 200
    assert "characters outside" in response.content.decode()
    assert not PRAAction.objects.exists()


def test_waiting_for_my_approval_lists_only_what_i_can_sign(client, operator, approver, host):
    from django.contrib.auth.models import Group

    from pra.actions import approve_action

    approver.groups.add(Group.objects.get(name="operator"))
    mine = propose(approver, host, "restart_caddy")
    signed = propose(operator, host, "reboot_system")
    approve_action(signed, by=approver, confirmation="dns-1")
    waiting = propose(operator, host, "restart_unbound")
    client.force_login(approver)
    page = client.get("/admin/pra/praaction/?awaiting=me").content.decode()
    assert f"/admin/pra/praaction/{waiting.pk}/change/" in page
    assert f"/admin/pra/praaction/{mine.pk}/change/" not in page
    assert f"/admin/pra/praaction/{signed.pk}/change/" not in page


def test_ai_proposals_are_marked_in_the_list(client, viewer, operator, host):
    from pra.actions import Proposer

    propose(Proposer.ai(operator), host, "restart_caddy")
    client.force_login(viewer)
    page = client.get("/admin/pra/praaction/").content.decode()
    assert f"AI:{operator.username}" in page and "AI-proposed" in page


# Extends the foundation's permission matrix with the remediation pages.
PRA_MATRIX = [
    ("/admin/pra/praaction/", {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200}),
    ("/admin/pra/praaction/add/", {"operator": 200, "admin_user": 200}),
    ("/admin/pra/host/", {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200}),
    ("/api/pra/actions", {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200}),
]


@pytest.mark.parametrize("persona", ["viewer", "operator", "approver", "admin_user", ANON])
@pytest.mark.parametrize(("url", "expected"), PRA_MATRIX, ids=[m[0] for m in PRA_MATRIX])
def test_remediation_permission_matrix(client, request, persona, url, expected):
    if persona != ANON:
        client.force_login(request.getfixturevalue(persona))
    status = client.get(url).status_code
    default = (
        401 if url.startswith("/api/") and persona == ANON else 302 if persona == ANON else 403
    )
    assert status == expected.get(persona, default), (persona, url)


def test_a_failed_action_says_its_verification_did_not_run(client, operator, approver, host):
    from pra import actions
    from pra.choices import FailureCause

    failed = propose(operator, host, "restart_caddy")
    actions.approve_action(failed, by=approver)
    actions.claim_action(failed.pk, job_id="job-1")
    actions.finish_execution(failed.pk, cause=FailureCause.UNREACHABLE, detail="no route")
    waiting = propose(operator, host, "restart_unbound")
    client.force_login(operator)
    page = client.get(f"/admin/pra/praaction/{failed.pk}/change/").content.decode()
    assert 'title="Not run (execution failed)">not run</span>' in page
    assert "Not checked yet" not in page
    listing = client.get("/admin/pra/praaction/").content.decode()
    assert listing.count('title="Not run (execution failed)">not run</span>') == 1
    assert listing.count(">not run</span>") == 2  # the waiting one has not run either
    api = client.get(f"/api/pra/actions/{failed.pk}").json()
    assert api["verification_label"] == "Not run (execution failed)"
    assert client.get(f"/api/pra/actions/{waiting.pk}").json()["verification_label"] == (
        "Not checked yet"
    )
