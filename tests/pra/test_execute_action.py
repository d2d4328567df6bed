"""Full flows against a real sshd on loopback, with the generated pra-exec/pra-run/pra-diag
and a real RQ worker. The commands at the very end (systemctl, podman, ...) are recording
stand-ins because this machine has no systemd."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.models import AuditEvent
from pra import actions, transport
from pra.choices import ActionStatus, FailureCause, Verification
from pra.models import PRAAction, PreflightStatus
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.helpers import register, restarts

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPjW5bLh0oZ0T7Rj4Z2s2cYyF0m9YVQ3b8cC0vQ2dXkq"


def _trail(action):
    return list(
        AuditEvent.objects.filter(subject_type="pra.praaction", subject_id=str(action.pk))
        .order_by("id")
        .values_list("event_type", flat=True)
    )


def test_low_auto_approved_flow_runs_once_and_verifies(operator, target_host, shared_ssh_target):
    shared_ssh_target.set_unit("unbound", "inactive")
    action = propose(operator, target_host, "restart_unbound", auto_approve=True)
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.OK
    assert "DRY-RUN OK" in action.preflight_output
    assert action.status == ActionStatus.COMPLETED, action.failure_detail
    assert action.exit_code == 0
    assert action.verification == Verification.VERIFIED
    assert shared_ssh_target.unit_state("unbound") == "active"
    assert restarts(shared_ssh_target, "systemctl", "restart", "unbound") == 1
    assert _trail(action) == [
        "PRA_PROPOSED",
        "PRA_PREFLIGHT",
        "PRA_APPROVED",
        "PRA_EXECUTING",
        "PRA_EXECUTED",
        "PRA_VERIFIED",
    ]


def test_medium_flow_needs_a_human_then_runs(operator, approver, target_host, shared_ssh_target):
    shared_ssh_target.add_container("web-1", "exited")
    action = propose(operator, target_host, "restart_container", {"name": "web-1"})
    run_jobs()  # pre-flight only: nothing may run before approval
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED
    assert restarts(shared_ssh_target, "podman", "restart") == 0
    actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    assert action.verification == Verification.VERIFIED
    assert shared_ssh_target.calls().count(["podman", "restart", "web-1"]) == 1


def test_high_flow_with_two_approvers(
    operator, approver, approver2, target_host, shared_ssh_target
):
    action = propose(operator, target_host, "reboot_system")
    actions.approve_action(action, by=approver, confirmation="dns-1")
    run_jobs()
    assert restarts(shared_ssh_target, "systemctl", "reboot") == 0
    actions.approve_action(action, by=approver2, confirmation="dns-1")
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    assert restarts(shared_ssh_target, "systemctl", "reboot") == 1


def test_an_expired_approval_cannot_run(operator, approver, target_host, shared_ssh_target):
    action = propose(operator, target_host, "restart_caddy")
    actions.approve_action(action, by=approver)
    # Six minutes pass before a worker picks the job up.
    PRAAction.objects.filter(pk=action.pk).update(expires_at=timezone.now() - timedelta(seconds=60))
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.EXPIRED
    assert restarts(shared_ssh_target, "systemctl", "restart") == 0
    with pytest.raises(actions.ActionError, match="EXPIRED"):
        actions.request_execution(action, by=operator)


def test_command_error_is_classified_and_output_kept(
    operator, approver, target_host, shared_ssh_target
):
    shared_ssh_target.add_container("web-9")  # it exists (pre-flight OK), the restart fails
    shared_ssh_target.fail_command("podman", 125, "Error: no container with name web-9")
    action = propose(operator, target_host, "restart_container", {"name": "web-9"})
    actions.approve_action(action, by=approver)
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.COMMAND_ERROR
    assert action.exit_code == 125
    assert "no container with name web-9" in action.stderr
    assert action.verification == Verification.PENDING  # nothing to verify after a failure


def test_host_key_mismatch_at_preflight_voids_the_approval(
    operator, approver, target_host, shared_ssh_target
):
    """Approved while the pre-flight runs; the pre-flight meets another host key: the
    approval is voided before anything can run, and nothing reaches the target."""
    actions.pin_host_key(target_host, OTHER_KEY, by="system:test")
    action = propose(operator, target_host, "restart_caddy")
    actions.approve_action(action, by=approver)
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.FAILED
    assert "host key mismatch" in action.preflight_output
    assert action.status == ActionStatus.VOIDED
    assert "pre-flight failed" in action.void_reason
    assert shared_ssh_target.calls() == []


def test_host_key_mismatch_at_execution_refuses_to_connect(
    operator, approver, target_host, shared_ssh_target, settings
):
    """No pre-flight (PRA_PREFLIGHT off): the execution itself meets the wrong key."""
    settings.PRA_PREFLIGHT = False
    actions.pin_host_key(target_host, OTHER_KEY, by="system:test")
    action = propose(operator, target_host, "restart_caddy")
    actions.approve_action(action, by=approver)
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.HOST_KEY_MISMATCH
    assert "expected SHA256:" in action.failure_detail
    assert action.connect_attempts == 1  # never retried
    assert shared_ssh_target.calls() == []


def test_unreachable_host_is_retried_then_fails(operator, approver, shared_ssh_target, settings):
    settings.PRA_PREFLIGHT = False  # the execution's own retries are under test
    host = register(shared_ssh_target, settings)
    host.port = 1  # nothing listens there
    host.save(update_fields=["port"])
    action = propose(operator, host, "restart_caddy")
    actions.approve_action(action, by=approver)
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.UNREACHABLE
    assert action.connect_attempts == settings.PRA_CONNECT_ATTEMPTS


def test_not_verified_when_the_probe_disagrees(
    operator, approver, target_host, shared_ssh_target, monkeypatch
):
    """The restart succeeds, but the container has died again when the probe looks."""
    shared_ssh_target.add_container("web-2", "exited")
    action = propose(operator, target_host, "restart_container", {"name": "web-2"})
    actions.approve_action(action, by=approver)
    real_probe = transport.run_diag

    def probe_after_crash(host, argv, **kwargs):
        shared_ssh_target.add_container("web-2", "exited")  # the crash, on the real target
        return real_probe(host, argv, **kwargs)

    monkeypatch.setattr(transport, "run_diag", probe_after_crash)
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    assert action.verification == Verification.NOT_VERIFIED
    assert "exited" in action.verification_output
    assert "PRA_NOT_VERIFIED" in _trail(action)


def test_wrapper_denial_is_classified_as_denied(target_host):
    """A command outside the whitelist, sent raw, is refused by pra-exec itself."""
    result = transport.run_exec(target_host, "restart_container x;id", command_timeout=10)
    assert result.exit_code == actions.DENIED_EXIT
    assert actions.classify(result) == FailureCause.DENIED


def test_output_is_bounded_and_truncation_marked(target_host, shared_ssh_target, settings):
    settings.PRA_MAX_OUTPUT = 1024
    shared_ssh_target.add_journal("unbound", *[f"line {i} " + "x" * 60 for i in range(200)])
    result = transport.run_diag(target_host, ["logs", "unbound", "200"])
    assert result.stdout_truncated
    assert result.stdout.endswith("truncated by the portal …]\n")
    assert len(result.stdout.encode()) < 1024 + 100
