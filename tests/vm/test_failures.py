"""Failure paths on a real host: each ends classified, with the host's own words.

Real: systemd's and sudo's messages, unbound's journal, a guest losing power under a
running command (QEMU quits; the guest gets no shutdown).
"""

from __future__ import annotations

import contextlib

import pytest

from pra import actions
from pra.models import PRAAction
from tests.stack import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BROKEN = "/etc/unbound/unbound.conf.d/zz-broken.conf"


@contextlib.contextmanager
def _broken_unbound(vm):
    vm.write_file(BROKEN, "server:\n    this-is-not-an-option: yes\n")
    try:
        yield
    finally:
        vm.root(f"rm -f {BROKEN}; systemctl reset-failed unbound; systemctl restart unbound")


def test_restart_unbound_with_a_broken_config_fails_with_systemds_message(
    portal, installed, operator
):
    vm = installed.vm
    with _broken_unbound(vm):
        action = portal.run("restart_unbound", "vm-1")
        assert action.status == "FAILED"
        assert action.failure_cause == "COMMAND_ERROR"
        assert action.exit_code == 1
        assert "Job for unbound.service failed" in action.stderr
        # analyze_errors shows unbound's own complaint from the journal.
        run = actions.run_diagnostic(
            "vm-1", "analyze_errors", {"unit": "unbound", "minutes": 10}, by=operator
        )
        assert run.exit_code == 0, run.output
        assert "this-is-not-an-option" in run.output
        health = actions.run_diagnostic("vm-1", "service_health", {"unit": "unbound"}, by=operator)
        # failed, or activating again: unbound.service restarts on failure
        assert health.output.startswith("UNHEALTHY: not active ("), health.output
        assert "error line(s)" in health.output


def test_a_unit_that_does_not_exist_fails_the_preflight(portal, installed, operator):
    vm = installed.vm
    # Stopped first: a running unit whose file is removed stays loaded (and active).
    vm.root(
        "systemctl stop caddy && mv /lib/systemd/system/caddy.service /root/caddy.service.away"
        " && systemctl daemon-reload"
    )
    try:
        proposed = portal.propose("restart_caddy", "vm-1")
        checked = portal.wait_preflight(proposed["id"])
        assert checked.preflight_status == "FAILED"
        assert "caddy.service" in checked.preflight_output
        status = actions.run_diagnostic("vm-1", "service_status", {"unit": "caddy"}, by=operator)
        assert status.exit_code != 0, status.output
        assert "LoadState=not-found" in status.output
    finally:
        vm.root(
            "mv /root/caddy.service.away /lib/systemd/system/caddy.service && "
            "systemctl daemon-reload && systemctl restart caddy"
        )


def test_a_missing_sudoers_drop_in_is_a_classified_sudo_failure(portal, installed):
    vm = installed.vm
    proposed = portal.propose("restart_unbound", "vm-1")
    assert portal.wait_preflight(proposed["id"]).preflight_status == "OK"
    vm.root("mv /etc/sudoers.d/pra /root/sudoers-pra.away")
    try:
        portal.approve(proposed, "vm-1")
        action = portal.wait_final(proposed["id"], 120)
        assert action.status == "FAILED"
        assert action.failure_cause == "SUDO", (action.stdout, action.stderr)
        assert "sudo:" in action.stderr
    finally:
        vm.root("mv /root/sudoers-pra.away /etc/sudoers.d/pra")


def test_power_lost_during_a_command_is_classified_not_stuck(portal, installed):
    """A unit whose start hangs keeps restart_unbound running; the plug is pulled then."""
    vm = installed.vm
    vm.root(
        "mkdir -p /run/systemd/system/unbound.service.d && printf '[Service]\\n"
        "ExecStartPre=/bin/sleep 600\\n' >/run/systemd/system/unbound.service.d/slow.conf && "
        "systemctl daemon-reload"
    )
    proposed = portal.propose("restart_unbound", "vm-1")
    assert portal.wait_preflight(proposed["id"]).preflight_status == "OK"
    # pra-run's log keeps the earlier tests' runs: this run is the next "started" line.
    count = "grep -c 'action=restart_unbound .* mode=run exit=started' /var/log/pra-run.log"
    started_before = int(vm.root(count, check=False)[1].strip() or 0)
    portal.approve(proposed, "vm-1")
    try:
        wait_for(
            lambda: int(vm.root(count, check=False)[1].strip() or 0) > started_before,
            60,
            "restart_unbound to be running on the guest",
        )
        assert PRAAction.objects.get(pk=proposed["id"]).status == "EXECUTING"
        vm.poweroff()
        action = portal.wait_final(proposed["id"], 90)
        assert action.status == "FAILED"
        assert action.failure_cause == "UNREACHABLE"
        assert "connection lost" in action.failure_detail
    finally:
        if not vm.running():
            vm.start(fresh=False)  # the same disk: /run is gone, the drop-in with it
        else:
            vm.root("rm -rf /run/systemd/system/unbound.service.d; systemctl daemon-reload")
