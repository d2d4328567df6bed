"""Diagnostics against real systemd, journald, free, df and podman, and their parsers.

Real: pra-diag on the guest through the diag key; the expected values come from the
guest itself over the harness's root SSH, not from constants.
"""

from __future__ import annotations

import pytest

from pra import actions, transport
from pra.diagnostics import parse_output

pytestmark = pytest.mark.django_db


def _diag(diagnostic: str, by, **params):
    run = actions.run_diagnostic("vm-1", diagnostic, params, by=by)
    assert run.error == "", run.error
    return run, parse_output(diagnostic, run.output)


def test_service_status_of_a_real_unit(vm_host, installed, operator):
    run, parsed = _diag("service_status", operator, unit="unbound")
    assert run.exit_code == 0
    assert parsed["state"] == "active"
    _, pid = installed.vm.root("systemctl show -P MainPID unbound")
    assert parsed["properties"]["MainPID"] == pid.strip()
    assert parsed["properties"]["LoadState"] == "loaded"


def test_service_logs_are_real_journal_lines(vm_host, installed, operator):
    installed.vm.root("systemctl restart unbound")
    run, parsed = _diag("service_logs", operator, unit="unbound", lines=50)
    assert run.exit_code == 0
    assert parsed["count"] > 0
    idents = {entry["ident"] for entry in parsed["entries"]}
    assert idents & {"unbound", "systemd"}, parsed
    assert all(entry["host"] == "pra-vm" for entry in parsed["entries"])


def test_analyze_errors_keeps_only_error_lines_of_the_unit(vm_host, installed, operator):
    # The unit's own stdout, not systemd-cat: journald attributes a systemd-cat line to
    # the unit by the sender's cgroup, looked up when it reads the line, and a sender that
    # has exited by then leaves it without one (a flaky miss). The stream is attributed
    # when it connects; "<3>" is the syslog priority err (SyslogLevelPrefix, on by default).
    installed.vm.root(
        "systemd-run --wait --quiet --unit=pra-vm-errors /bin/sh -c "
        "'echo all fine; echo \"<3>disk on fire\"'"
        # journald writes what it received before journalctl reads (it may lag otherwise)
        "; journalctl --sync"
    )
    run, parsed = _diag("analyze_errors", operator, unit="pra-vm-errors", minutes=5)
    assert run.exit_code == 0
    messages = [entry["message"] for entry in parsed["entries"]]
    assert "disk on fire" in messages
    assert "all fine" not in messages


def test_service_health(vm_host, operator):
    run, parsed = _diag("service_health", operator, unit="caddy")
    assert parsed["healthy"] is True and run.exit_code == 0


def test_container_status_from_podman(vm_host, installed, operator):
    installed.vm.root("systemctl start pra-demo-containers.service")
    run, parsed = _diag("container_status", operator, name="web-1")
    assert run.exit_code == 0
    assert parsed["state"] == "running"
    _, pid = installed.vm.root("podman inspect -f '{{.State.Pid}}' web-1")
    assert parsed["pid"] == pid.strip()
    missing, parsed_missing = _diag("container_status", operator, name="web-9")
    assert missing.exit_code != 0
    assert "web-9" in missing.output


def test_system_memory_and_disk(vm_host, installed, operator):
    vm = installed.vm
    _, info = _diag("system_info", operator)
    assert info["hostname"] == "pra-vm"
    assert info["boot_id"] == vm.boot_id
    assert info["uptime_seconds"] > 0
    _, memory = _diag("memory_info", operator)
    _, total = vm.root("awk '/MemTotal/ {print $2}' /proc/meminfo")
    assert memory["mem"]["total"] == int(total)
    assert 0 < memory["mem_used_percent"] < 100
    _, disk = _diag("disk_usage", operator)
    root = next(fs for fs in disk["filesystems"] if fs["mounted_on"] == "/")
    _, df = vm.root("df -P -k / | tail -1")
    assert root["size_kb"] == int(df.split()[1])
    assert root["filesystem"] == "/dev/vda"


def test_the_reboot_probe_fails_when_the_host_did_not_reboot(vm_host, installed):
    """reboot_system's probe, given the boot id pra-run reported before the command: the
    guest's current boot id means it did not reboot (exit non-zero); another one, that it
    did."""
    _, boot_id = installed.vm.root("cat /proc/sys/kernel/random/boot_id")
    same = transport.run_diag(vm_host, ["rebooted", boot_id.strip()])
    assert same.exit_code != 0, same.stdout + same.stderr
    other = transport.run_diag(vm_host, ["rebooted", "00000000-0000-4000-8000-000000000000"])
    assert other.exit_code == 0, other.stdout + other.stderr
    assert boot_id.strip() in other.stdout
