"""The on-call console in a browser: approving and rejecting from the dashboard's inbox,
the charts, and the main pages loading nothing from any other host (screenshots of each
saved under var/screenshots/ for review).

Real: Chromium, daphne (HTTP + websockets), the RQ worker, PostgreSQL, Redis, sshd and
the target's wrappers; the end commands on the target (podman, systemctl) are the
recording stand-ins of ``pra.devtarget`` (no systemd or podman here).
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from backups import actions as backups
from backups.choices import RunStatus
from backups.models import BackupRun
from incidents import actions as incidents
from pra.models import PRAAction
from tests.e2e.conftest import in_thread
from tests.factories import propose
from tests.portal import dashboard_world as world
from tests.pra.helpers import register
from tests.stack import BASE_DIR

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIVE_TIMEOUT = 20_000
SCREENSHOTS = BASE_DIR / "var" / "screenshots"


def _record(page: Page) -> list[str]:
    """Every URL the page asks for (documents, scripts, styles, images, fetches, sockets)."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.on("websocket", lambda ws: seen.append(ws.url))
    return seen


def _only_the_portal(seen: list[str], base_url: str) -> None:
    portal = urlsplit(base_url).netloc
    elsewhere = sorted({url for url in seen if urlsplit(url).netloc != portal})
    assert seen and not elsewhere, elsewhere


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _item(page: Page, action: PRAAction):
    return page.locator(f"#inbox-pra-{action.pk}")


def test_inbox_approves_and_rejects_medium_and_high(
    stack, open_page, operator, approver, approver2, settings
):
    """MEDIUM: one click; HIGH: 0/2, the typed host name, 1/2, the second approver; a
    rejection is refused without a reason and taken with one. Every click posts the
    action page's own form and comes back to the dashboard (``next``), which says what
    happened."""
    stack.target.add_container("web")
    stack.target.add_container("cache")
    other = in_thread(register, stack.target, settings, name="dns-2")
    medium = in_thread(propose, operator, stack.host, "restart_container", {"name": "web"})
    to_reject = in_thread(propose, operator, stack.host, "restart_container", {"name": "cache"})
    high = in_thread(propose, operator, stack.host, "reboot_system")
    high_rejected = in_thread(propose, operator, other, "reboot_system")

    page = open_page(approver)
    seen = _record(page)
    page.goto("/")
    expect(page.locator("#live-status")).to_contain_text("connected")
    expect(_item(page, high).locator("[data-tally]")).to_have_text("0/2")
    _shot(page, "dashboard")

    # MEDIUM: approve in one click; back on the dashboard, which says so; the action runs.
    with page.expect_navigation():
        _item(page, medium).locator("#approve-button").click()
    assert page.url == f"{stack.base_url}/"
    expect(page.locator(".messagelist")).to_contain_text("Approved")
    expect(_item(page, medium)).to_have_count(0)
    page.goto(f"/admin/pra/praaction/{medium.pk}/change/")
    expect(page.locator("#pra-status")).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT)
    _shot(page, "action")

    # HIGH, first signature: the host's name must be typed.
    page.goto("/")
    item = _item(page, high)
    item.locator("input[name=confirmation]").fill("dns-1")
    with page.expect_navigation():
        item.locator("#approve-button").click()
    assert page.url == f"{stack.base_url}/"
    expect(page.locator(".messagelist")).to_contain_text("Signed (1/2)")
    expect(_item(page, high)).to_contain_text("you signed")

    # Rejecting: the browser refuses an empty reason (nothing is posted), then a real one.
    item = _item(page, to_reject)
    item.locator("#reject-button").click()
    assert page.url == f"{stack.base_url}/"
    assert PRAAction.objects.get(pk=to_reject.pk).status == "PROPOSED"
    item.locator("input[name=reason]").fill("cache is warming up, not now")
    with page.expect_navigation():
        item.locator("#reject-button").click()
    expect(page.locator(".messagelist")).to_contain_text("Rejected")
    expect(_item(page, to_reject)).to_have_count(0)
    item = _item(page, high_rejected)
    item.locator("input[name=reason]").fill("no reboot during the sale")
    with page.expect_navigation():
        item.locator("#reject-button").click()
    expect(page.locator(".messagelist")).to_contain_text("Rejected")
    assert page.url == f"{stack.base_url}/"

    # HIGH, second approver: sees 1/2 and who signed, types the name, approves.
    second = open_page(approver2)
    seen += _record(second)
    second.goto("/")
    item = _item(second, high)
    expect(item.locator("[data-tally]")).to_have_text("1/2")
    expect(item).to_contain_text("signed: anna-approver")
    item.locator("input[name=confirmation]").fill("dns-1")
    with second.expect_navigation():
        item.locator("#approve-button").click()
    expect(second.locator(".messagelist")).to_contain_text("Approved")
    expect(second.locator("#approvals-none")).to_be_visible()
    second.goto(f"/admin/pra/praaction/{high.pk}/change/")
    expect(second.locator("#pra-status")).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT)

    statuses = dict(PRAAction.objects.values_list("pk", "status"))
    assert statuses == {medium.pk: "COMPLETED", to_reject.pk: "REJECTED", high.pk: "COMPLETED",
                        high_rejected.pk: "REJECTED"}  # fmt: skip
    calls = stack.target.calls()
    assert ["podman", "restart", "web"] in calls and ["podman", "restart", "cache"] not in calls
    assert calls.count(["systemctl", "reboot"]) == 1
    _only_the_portal(seen, stack.base_url)


def test_charts_incident_and_backup_run_pages_load_only_from_the_portal(
    stack, open_page, operator, viewer
):
    """The charts draw real rows; the incident page warns that nobody was notified; the
    backup run page's bar moves with live progress, estimated from the previous run."""
    in_thread(world.history, operator, days=5, tag="e2e")
    agent, _ = in_thread(incidents.create_agent, name="web-1", kind="service")
    incident, _ = in_thread(
        incidents.open_or_update_incident, agent, cause="errors", rule_id=None, severity=4,
        title="error rate above 5 % on web-1", telemetry={}, detected_at=timezone.now(),
    )  # fmt: skip
    source, runs = in_thread(world.backup_source, "shop-cache", runs=1)  # 30,000 bytes before
    start = timezone.now() - timedelta(seconds=2)
    run = BackupRun.objects.create(
        source=source, trigger="manual", status=RunStatus.RUNNING, created=start,
        status_changed_at=start, started_at=start, progress_bytes=6_000,
    )  # fmt: skip

    page = open_page(viewer)
    seen = _record(page)
    page.goto("/charts/")
    for key in ("incidents-per-day", "mttd-per-day", "time-to-approval", "backup-size"):
        expect(page.locator(f"#chart-{key} svg .nodata")).to_have_count(0)
        assert page.locator(f"#chart-{key} svg rect, #chart-{key} svg circle").count() >= 3, key
    _shot(page, "charts")

    page.goto(f"/admin/incidents/incident/{incident.pk}/change/")
    expect(page.locator("#incident")).to_have_attribute("data-live", "connected")
    expect(page.locator("#no-notification-warning")).to_contain_text("Nobody was notified")
    expect(page.locator("#admin-live")).to_have_attribute("data-state", "connected")
    _shot(page, "incident")

    page.goto(f"/admin/backups/backuprun/{run.pk}/change/")
    expect(page.locator("#backup-run")).to_have_attribute("data-live", "connected")
    expect(page.locator("#backup-run")).to_have_attribute("data-synced", re.compile(r"^\d+$"))
    expect(page.locator("#run-percent")).to_have_text("20 %")
    page.evaluate("window.__marker = 1")
    in_thread(backups.report_progress, run, 22_500)
    expect(page.locator("#run-percent")).to_have_text("75 %", timeout=LIVE_TIMEOUT)
    expect(page.locator("#run-eta")).to_contain_text("left")
    assert page.evaluate("window.__marker") == 1, "the page reloaded"
    _shot(page, "backup-run")
    page.goto("/")
    _shot(page, "dashboard-viewer")
    _only_the_portal(seen, stack.base_url)
