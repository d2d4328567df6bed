"""The host page in a real browser: its buttons do what they say and nothing else.

Real: Chromium, daphne, PostgreSQL, the loopback sshd target with pra-diag (the
diagnostics run for real; only the end commands such as systemctl are stand-ins,
as everywhere in tests/e2e). The diagnostics forms used to be nested inside the
host's change form, so a diagnostics button (or a plain Save) renamed the host
"service_status".
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from portal.models import AuditEvent
from pra.models import DiagnosticRun, Host

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _host_row(host: Host) -> tuple:
    host.refresh_from_db()
    return (host.name, host.address, host.port, host.ssh_user, host.host_key, host.revision)


@pytest.mark.parametrize("persona", ["admin_user", "operator"])
def test_diagnostics_buttons_run_a_diagnostic_and_never_touch_the_host(
    stack, open_page, request, persona
):
    user = request.getfixturevalue(persona)
    host = stack.host
    before = _host_row(host)
    page = open_page(user)
    page.goto(f"/admin/pra/host/{host.pk}/change/")
    form = page.locator("#diagnostics form").filter(
        has=page.get_by_role("button", name="service_status", exact=True)
    )
    button = form.get_by_role("button")
    expect(button).to_be_visible()
    form.locator("input[name=params]").fill('{"unit": "unbound"}')
    with page.expect_navigation():
        button.click()
    assert "/admin/pra/diagnosticrun/" in page.url, page.url
    run = DiagnosticRun.objects.get()
    assert run.host_id == host.pk and run.command.startswith("status")
    assert _host_row(host) == before, "a diagnostics button changed the host"


def test_a_plain_save_without_changes_changes_nothing(stack, open_page, admin_user):
    host = stack.host
    before = _host_row(host)
    audit_before = AuditEvent.objects.filter(subject_type="pra.host").count()
    page = open_page(admin_user)
    page.goto(f"/admin/pra/host/{host.pk}/change/")
    with page.expect_navigation():
        page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_be_visible()
    assert _host_row(host) == before
    assert Host.objects.count() == 1
    assert not DiagnosticRun.objects.exists()
    assert AuditEvent.objects.filter(subject_type="pra.host").count() == audit_before
