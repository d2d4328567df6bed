"""The approval flow as people see it: headless Chromium against a running portal.

Real: Chromium, daphne (HTTP + websockets), the RQ worker process, PostgreSQL,
Redis, sshd and the target's wrappers (pra-exec, sudo, pra-run, pra-diag). The
end commands on the target (systemctl, ...) are recording stand-ins: this
machine has no systemd.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from pra.choices import ActionStatus
from pra.models import PRAAction
from tests.e2e.conftest import in_thread
from tests.factories import RATIONALE, propose

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIVE_TIMEOUT = 20_000  # ms for a live update to reach the page


def restarts(target, unit: str) -> int:
    return target.calls().count(["systemctl", "restart", unit])


def test_operator_proposes_and_approver_approves_live(stack, open_page, operator, approver):
    """The operator proposes in the admin, the approver approves; the worker runs
    ``restart_unbound`` over real SSH and the action page shows COMPLETED and
    VERIFIED through its websocket, without a reload. systemctl on the target is a
    stand-in that records the call and flips the unit's state file."""
    target = stack.target
    target.set_unit("unbound", "inactive")

    proposing = open_page(operator, login_form=True)
    proposing.goto("/admin/pra/praaction/add/")
    proposing.select_option("select[name=action]", "restart_unbound")
    proposing.select_option("select[name=host]", label=stack.host.name)
    proposing.fill("textarea[name=params]", "{}")
    proposing.fill("textarea[name=rationale]", RATIONALE)
    with proposing.expect_navigation():
        proposing.click("input[name=_save]")
    action = PRAAction.objects.get()
    assert (action.action, action.host_id, action.proposed_by_id, action.status) == (
        "restart_unbound",
        stack.host.pk,
        operator.pk,
        ActionStatus.PROPOSED,
    )

    page = open_page(approver, login_form=True)
    page.goto(f"/admin/pra/praaction/{action.pk}/change/")
    root = page.locator("#pra-action")
    expect(root).to_have_attribute("data-live", "connected")
    expect(page.locator("#pra-status")).to_have_text("PROPOSED")
    # The worker is held until the page after the approval's redirect is connected:
    # the job waits in Redis, so the outcome can only reach this page live.
    with stack.worker_paused():
        with page.expect_navigation():
            page.click("#approve-button")
        assert page.url == f"{stack.base_url}/admin/pra/praaction/{action.pk}/change/"
        expect(root).to_have_attribute("data-live", "connected")
        page.evaluate("window.__marker = 1")
        expect(page.locator("#pra-status")).to_have_text("APPROVED")
        expect(page.locator("#pra-verification")).not_to_have_text("passed")
        assert page.locator("#approve-button").count() == 0

    expect(page.locator("#pra-status")).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT)
    expect(page.locator("#pra-verification")).to_have_text("passed", timeout=LIVE_TIMEOUT)
    expect(page.locator("#pra-exit")).to_have_text("exit code 0")
    assert page.evaluate("window.__marker") == 1, "the page reloaded or navigated"

    action.refresh_from_db()
    assert (action.status, action.verification) == ("COMPLETED", "VERIFIED")
    assert restarts(target, "unbound") == 1
    assert target.unit_state("unbound") == "active"


def test_dashboard_receives_events_live(stack, open_page, operator, viewer):
    """A proposal committed by the test (``propose_action``) reaches a viewer's open
    dashboard without a reload: real Redis channel layer, daphne websocket and browser.
    The worker's pre-flight dry run goes to the real target (no stand-in is called)."""
    page = open_page(viewer)
    page.goto("/")
    expect(page.locator("#live-status")).to_contain_text("connected")
    page.evaluate("window.__marker = 1")
    events = page.locator('#events li[data-kind="pra.action"]')
    assert events.count() == 0

    action = in_thread(propose, operator, stack.host)

    expect(events.first).to_have_attribute(
        "data-subject", f"pra.praaction:{action.pk}", timeout=LIVE_TIMEOUT
    )
    expect(events.first).to_contain_text("PROPOSED")
    assert page.evaluate("window.__marker") == 1, "the dashboard reloaded"


def test_approve_button_hidden_for_proposer_and_viewer(
    stack, open_page, operator, viewer, approver
):
    """Only someone allowed to sign gets the Approve button: not the proposer, not a
    viewer. Real pages from daphne (sessions made in the database); an approver's page
    is the control that the selector is right. Nothing runs on the target's stand-ins."""
    action = in_thread(propose, operator, stack.host)
    path = f"/admin/pra/praaction/{action.pk}/change/"
    for user, buttons in ((operator, 0), (viewer, 0), (approver, 1)):
        page = open_page(user)
        page.goto(path)
        expect(page.locator("#pra-status")).to_have_text("PROPOSED")
        assert page.locator("#approve-button").count() == buttons, user.username


def test_anonymous_is_sent_to_login(stack, open_page):
    """The dashboard sends an anonymous visitor to the login page (real daphne and
    browser; the target is not involved)."""
    page = open_page()
    response = page.goto("/")
    assert response is not None and response.ok
    assert response.request.redirected_from is not None
    assert response.request.redirected_from.url == f"{stack.base_url}/"
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/$"))
    expect(page.locator("input[name=username]")).to_be_visible()
    expect(page.locator("#events")).to_have_count(0)
