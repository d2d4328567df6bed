"""Read-only diagnostics through pra-diag on the real loopback sshd (stand-in systemctl,
journalctl and podman, because this machine has no systemd)."""

import pytest

from pra import actions
from pra.diagnostics import DIAGNOSTICS
from pra.models import DiagnosticRun
from tests.pra.factories import propose

pytestmark = pytest.mark.django_db


def test_service_status_and_health_reflect_the_target(operator, target_host, shared_ssh_target):
    shared_ssh_target.set_unit("unbound", "inactive")
    status = actions.run_diagnostic(target_host, "service_status", {"unit": "unbound"}, by=operator)
    assert status.output.strip() == "inactive" and status.exit_code != 0
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
    closed = actions.run_diagnostic(
        target_host, "test_connectivity", {"target": "127.0.0.1", "port": 1}, by=operator
    )
    assert closed.output.startswith("FAIL")


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
        propose(operator, target_host, "restart_unbound", evidence_ids=[run.pk])  # already used


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
