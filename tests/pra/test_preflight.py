"""Pre-flight: a failed dry run blocks approval; a pending one ends within a bound.

Real PostgreSQL, Redis, RQ worker (burst, in-process) and the loopback sshd with its
generated wrappers; the end commands (systemctl, podman, ...) are recording stand-ins
because this machine has no systemd.
"""

from datetime import timedelta

import django_rq
import pytest
from django.utils import timezone

from portal.approvals import tally
from portal.lib.redis import get_redis
from pra import actions
from pra.actions import ActionError
from pra.choices import ActionStatus
from pra.models import PRAAction, PreflightStatus
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.helpers import register, restarts

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPjW5bLh0oZ0T7Rj4Z2s2cYyF0m9YVQ3b8cC0vQ2dXkq"


def _hide(target, program):
    """Take a stand-in off the target's PATH (the dry run then says it is not found)."""
    path = target.standins_dir / program
    path.rename(path.with_suffix(".hidden"))
    return lambda: path.with_suffix(".hidden").rename(path)


def test_a_host_key_mismatch_blocks_approval(operator, approver, target_host, shared_ssh_target):
    actions.update_host(target_host, by="system:test", host_key=OTHER_KEY)
    action = propose(operator, target_host, "restart_caddy")
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.FAILED
    with pytest.raises(ActionError, match="cannot be approved: its pre-flight failed") as exc:
        actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    assert exc.value.code == "preflight"
    assert "host key" in exc.value.message.lower()
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED
    assert tally(action).count == 0  # no signature was recorded
    assert shared_ssh_target.calls() == []


def test_a_failed_dry_run_blocks_approval_until_the_rerun_passes(
    operator, approver, ssh_target, settings, client
):
    host = register(ssh_target, settings)
    ssh_target.add_container("web-1", state="exited")
    restore = _hide(ssh_target, "podman")
    action = propose(operator, host, "restart_container", {"name": "web-1"})
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.FAILED
    assert "not found" in action.preflight_output

    client.force_login(approver)
    page = client.get(f"/admin/pra/praaction/{action.pk}/change/").content.decode()
    assert "Approval is blocked" in page
    assert 'id="approve-form"' not in page
    assert 'id="preflight-form"' in page
    answer = client.post(
        f"/admin/pra/praaction/{action.pk}/approve/", {"fingerprint": action.approval_fingerprint()}
    )
    assert answer.status_code == 302
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED

    restore()  # the target is fixed; someone asks for the pre-flight again
    assert client.post(f"/admin/pra/praaction/{action.pk}/preflight/").status_code == 302
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.PENDING
    with pytest.raises(ActionError, match="still running"):
        actions.rerun_preflight(action, by=approver)
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.OK
    actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    # The second pre-flight's read-only check, then the restart (then the probe looks).
    assert ssh_target.calls()[:2] == [
        ["podman", "container", "exists", "web-1"],
        ["podman", "restart", "web-1"],
    ]


def test_proposing_it_again_reruns_a_failed_pre_flight(operator, ssh_target, settings):
    host = register(ssh_target, settings)
    ssh_target.add_container("web-1", state="exited")
    restore = _hide(ssh_target, "podman")
    first = propose(operator, host, "restart_container", {"name": "web-1"})
    run_jobs()
    first.refresh_from_db()
    assert first.preflight_status == PreflightStatus.FAILED
    restore()
    again = actions.submit_proposal(
        action="restart_container", host=host, params={"name": "web-1"},
        rationale="the web-1 container exited and the shop answers 502 since then", by=operator,
    )  # fmt: skip
    assert (again.action.pk, again.created) == (first.pk, False)
    assert "pre-flight had failed and is being run again" in again.message
    run_jobs()
    first.refresh_from_db()
    assert first.preflight_status == PreflightStatus.OK


def test_an_approval_given_while_pending_is_voided_when_the_pre_flight_fails(
    operator, approver, target_host, shared_ssh_target
):
    actions.update_host(target_host, by="system:test", host_key=OTHER_KEY)
    action = propose(operator, target_host, "restart_caddy")
    actions.approve_action(action, by=approver)  # the pre-flight has not run yet
    action.refresh_from_db()
    assert (action.status, action.preflight_status) == (
        ActionStatus.APPROVED,
        PreflightStatus.PENDING,
    )
    run_jobs()  # pre-flight first (FIFO), then the execution job
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert action.void_reason.startswith("approval voided: pre-flight failed: ")
    assert action.started_at is None  # nothing was sent
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 0
    assert actions.reconcile_approved() == []


def test_a_pending_pre_flight_is_requeued_once_then_ends_failed_after_the_timeout(
    operator, approver, target_host, settings
):
    settings.PRA_PREFLIGHT_TIMEOUT = 60
    action = propose(operator, target_host, "restart_caddy")
    get_redis().flushdb()  # the pre-flight job is lost
    assert actions.reconcile_preflights() == {"failed": [], "requeued": [action.pk]}
    assert actions.reconcile_preflights() == {"failed": [], "requeued": []}
    assert django_rq.get_queue("pra").job_ids == [actions.preflight_job_id(action.pk)]

    get_redis().flushdb()  # lost again, and now it is too late: it ends FAILED
    later = timezone.now() + timedelta(seconds=61)
    assert actions.reconcile_preflights(now=later) == {"failed": [action.pk], "requeued": []}
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.FAILED
    assert action.preflight_output == (
        "pre-flight did not finish within 60 s (host hung or job lost)"
    )
    with pytest.raises(ActionError, match="pre-flight failed"):
        actions.approve_action(action, by=approver)


def test_a_result_for_an_older_host_revision_is_dropped(operator, target_host):
    action = propose(operator, target_host, "restart_caddy")
    actions.update_host(target_host, by="system:test", port=2222)
    actions.record_preflight(action.pk, ok=True, output="DRY-RUN OK", host_revision=1)
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.PENDING
    actions.record_preflight(action.pk, ok=False, output="refused", host_revision=2)
    assert PRAAction.objects.get(pk=action.pk).preflight_status == PreflightStatus.FAILED
