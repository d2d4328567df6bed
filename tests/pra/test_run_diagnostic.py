"""Read-only diagnostics through pra-diag on the real loopback sshd (stand-in systemctl,
journalctl and podman, because this machine has no systemd)."""

import socket
from contextlib import closing

import pytest

from portal.choices import AuditEventType
from portal.models import AuditEvent
from pra import actions
from pra.diagnostics import DIAGNOSTICS
from pra.models import DiagnosticRun
from tests.pra.factories import OFFLINE_HOST_KEY, propose

pytestmark = pytest.mark.django_db


def test_service_status_and_health_reflect_the_target(operator, target_host, shared_ssh_target):
    shared_ssh_target.set_unit("unbound", "inactive")
    status = actions.run_diagnostic(target_host, "service_status", {"unit": "unbound"}, by=operator)
    assert status.output.splitlines()[0] == "inactive" and status.exit_code != 0
    assert "ActiveState=inactive" in status.output  # then systemctl show's properties
    health = actions.run_diagnostic(target_host, "service_health", {"unit": "unbound"}, by=operator)
    assert "UNHEALTHY" in health.output
    shared_ssh_target.set_unit("unbound", "active")
    health = actions.run_diagnostic(target_host, "service_health", {"unit": "unbound"}, by=operator)
    assert health.output.startswith("HEALTHY")


def test_logs_errors_system_memory_and_connectivity(operator, target_host, shared_ssh_target):
    shared_ssh_target.add_journal("unbound", "started", "error: SERVFAIL upstream", error=True)
    logs = actions.run_diagnostic(
        target_host, "service_logs", {"unit": "unbound", "lines": 5}, by=operator
    )
    assert "SERVFAIL" in logs.output
    errors = actions.run_diagnostic(target_host, "analyze_errors", {"unit": "unbound"}, by=operator)
    assert "SERVFAIL" in errors.output
    assert "MemTotal" in actions.run_diagnostic(target_host, "memory_info", by=operator).output
    assert actions.run_diagnostic(target_host, "system_info", by=operator).exit_code == 0
    reach = actions.run_diagnostic(
        target_host,
        "test_connectivity",
        {"target": "127.0.0.1", "port": shared_ssh_target.port},
        by=operator,
    )
    assert reach.output.startswith("OK")
    # A registered host whose SSH port nothing listens on: allowed, and it fails.
    offline = actions.add_host(
        name="gone-1", address="127.0.0.1", port=_closed_port(), host_key=OFFLINE_HOST_KEY
    )
    closed = actions.run_diagnostic(
        target_host, "test_connectivity", {"target": "gone-1", "port": offline.port}, by=operator
    )
    assert closed.command == f"connectivity 127.0.0.1 {offline.port}"  # the name as its address
    assert closed.output.startswith("FAIL")


def _closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("target", "port", "why"),
    [
        ("127.0.0.1", 5432, "port 5432 is not allowed for 127.0.0.1"),  # the portal's database
        ("127.0.0.1", 6379, "port 6379 is not allowed"),
        ("10.0.0.1", 22, "10.0.0.1 is not a registered host's name or address"),
        ("localhost", 443, "localhost is not a registered host's name or address"),
    ],
)
def test_connectivity_reaches_only_registered_hosts_on_allowed_ports(
    operator, target_host, shared_ssh_target, target, port, why
):
    with pytest.raises(actions.ActionError, match=why):
        actions.run_diagnostic(
            target_host, "test_connectivity", {"target": target, "port": port}, by=operator
        )
    assert not DiagnosticRun.objects.exists()
    assert shared_ssh_target.calls() == []
    refused = AuditEvent.objects.get(event_type=AuditEventType.DIAGNOSTIC_RUN)
    assert refused.actor == operator.username
    assert why in refused.details["refused"]
    assert refused.details["command"] == f"connectivity {target} {port}"


def test_the_admin_chooses_the_connectivity_ports(operator, target_host, settings):
    settings.PRA_CONNECTIVITY_PORTS = (8443,)
    allowed = ", ".join(str(p) for p in sorted({8443, target_host.port}))
    with pytest.raises(actions.ActionError, match=rf"\(allowed: {allowed}\)"):
        actions.run_diagnostic(
            target_host, "test_connectivity", {"target": "dns-1", "port": 443}, by=operator
        )
    run = actions.run_diagnostic(
        target_host, "test_connectivity", {"target": "dns-1", "port": 8443}, by=operator
    )
    assert run.command == "connectivity 127.0.0.1 8443"
    assert AuditEvent.objects.filter(event_type=AuditEventType.DIAGNOSTIC_RUN).count() == 2


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("service_status", {"unit": "unbound; reboot"}, "characters"),
        ("service_logs", {"unit": "unbound", "lines": 10**6}, "between"),
        ("service_logs", {"unit": "unbound", "lines": "ten"}, "integer"),
        ("service_status", {}, "needs parameter unit"),
        ("rm_rf", {}, "unknown diagnostic"),
        ("system_info", {"x": 1}, "takes no parameter"),
    ],
)
def test_bad_diagnostics_are_refused_and_store_nothing(
    operator, target_host, shared_ssh_target, name, params, message
):
    with pytest.raises(actions.ActionError, match=message):
        actions.run_diagnostic(target_host, name, params, by=operator)
    assert not DiagnosticRun.objects.exists()
    assert shared_ssh_target.calls() == []


def test_viewers_cannot_run_diagnostics(viewer, target_host):
    with pytest.raises(actions.ActionError) as exc:
        actions.run_diagnostic(target_host, "system_info", by=viewer)
    assert exc.value.code == "permission"


def test_a_diagnosis_is_attached_to_a_proposal_as_evidence(
    operator, target_host, shared_ssh_target
):
    run = actions.run_diagnostic(target_host, "service_status", {"unit": "unbound"}, by=operator)
    action = propose(operator, target_host, "restart_unbound", evidence_ids=[run.pk])
    assert list(action.evidence.all()) == [run]
    with pytest.raises(actions.ActionError, match="evidence_ids"):
        propose(operator, target_host, "restart_caddy", evidence_ids=[run.pk])  # already used


def test_the_host_page_runs_a_diagnostic(client, operator, target_host):
    client.force_login(operator)
    page = client.get(f"/admin/pra/host/{target_host.pk}/change/").content.decode()
    for name in DIAGNOSTICS:
        assert f'value="{name}"' in page
    response = client.post(
        f"/admin/pra/host/{target_host.pk}/diagnose/",
        {"name": "service_status", "params": '{"unit": "unbound"}'},
    )
    run = DiagnosticRun.objects.get()
    assert response.status_code == 302 and response.url.endswith(f"/diagnosticrun/{run.pk}/change/")
    assert run.requested_by == operator.username


def test_the_api_runs_a_diagnostic(client, operator, target_host):
    client.force_login(operator)
    response = client.post(
        f"/api/pra/hosts/{target_host.name}/diagnostics",
        data={"name": "memory_info"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert "MemTotal" in response.json()["output"]
