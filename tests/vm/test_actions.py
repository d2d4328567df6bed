"""Every catalog action, end to end against a real Debian host with systemd.

Real: the guest (QEMU, systemd, unbound, caddy, podman, systemd-resolved, logrotate),
sudo and the installed wrappers in it, daphne and an RQ worker as processes, the JSON
API, PostgreSQL, Redis. Each test checks the host's state with the harness's own root
SSH (not with the portal's probe), so a probe that says "verified" for nothing fails.
"""

from __future__ import annotations

import urllib.request

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def _show(vm, unit: str) -> dict[str, str]:
    _, out = vm.root(
        f"systemctl show {unit} -p ActiveState -p MainPID -p ActiveEnterTimestampMonotonic "
        "-p InvocationID"
    )
    return dict(line.split("=", 1) for line in out.strip().splitlines())


def _assert_completed(action, verification: str = "VERIFIED") -> None:
    assert action.status == "COMPLETED", (action.failure_cause, action.stdout, action.stderr)
    assert action.exit_code == 0
    assert action.verification == verification, action.verification_output


@pytest.mark.parametrize("unit", ["unbound", "caddy"])
def test_restart_restarts_the_real_unit(portal, installed, unit):
    vm = installed.vm
    before = _show(vm, unit)
    assert before["ActiveState"] == "active"
    action = portal.run(f"restart_{unit}", "vm-1")
    _assert_completed(action)
    after = _show(vm, unit)
    assert after["ActiveState"] == "active"
    assert after["InvocationID"] != before["InvocationID"]
    assert int(after["ActiveEnterTimestampMonotonic"]) > int(
        before["ActiveEnterTimestampMonotonic"]
    )
    assert after["MainPID"] != before["MainPID"]
    assert "restarted" in action.verification_output


def _fetch(vm) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{vm.http_port}/", timeout=10) as response:  # noqa: S310
        return response.read().decode()


def test_reload_caddy_serves_the_new_config_without_a_restart(portal, installed):
    vm = installed.vm
    before = _show(vm, "caddy")
    vm.write_file("/etc/caddy/Caddyfile", ':80 {\n\trespond "pra-vm caddy: reloaded" 200\n}\n')
    try:
        assert "reloaded" not in _fetch(vm)
        action = portal.run("reload_caddy", "vm-1")
        _assert_completed(action)
        assert _fetch(vm) == "pra-vm caddy: reloaded"
        after = _show(vm, "caddy")
        assert after["MainPID"] == before["MainPID"]  # reloaded, not restarted
        assert after["InvocationID"] == before["InvocationID"]
        assert "reloaded" in action.verification_output
    finally:
        vm.write_file("/etc/caddy/Caddyfile", ':80 {\n\trespond "pra-vm caddy: initial" 200\n}\n')
        vm.root("systemctl reload caddy")


def test_flush_dns_cache_flushes_resolved(portal, installed):
    vm = installed.vm
    _, since = vm.root("date +%s")
    action = portal.run("flush_dns_cache", "vm-1")
    _assert_completed(action)
    _, journal = vm.root(
        f"journalctl -u systemd-resolved --since @{since.strip()} --no-pager -o cat"
    )
    assert "Flushed all caches" in journal


def test_rotate_logs_rotates_with_the_real_logrotate(portal, installed):
    vm = installed.vm
    vm.write_file(
        "/etc/logrotate.d/pra-vm-test",
        "/var/log/pra-vm-test.log {\n    rotate 2\n    missingok\n    nocompress\n}\n",
    )
    vm.root("rm -f /var/log/pra-vm-test.log*; echo one line >/var/log/pra-vm-test.log")
    action = portal.run("rotate_logs", "vm-1")
    _assert_completed(action, verification="SKIPPED")
    _, listing = vm.root("cat /var/log/pra-vm-test.log.1; stat -c %s /var/log/pra-vm-test.log")
    assert listing.splitlines()[0] == "one line"


def test_restart_container_restarts_the_podman_container(portal, installed):
    vm = installed.vm
    vm.root("systemctl start pra-demo-containers.service")  # returns once web-1 runs
    fmt = "'{{.State.Status}} {{.State.StartedAt.UnixNano}} {{.State.Pid}}'"
    _, before = vm.root(f"podman inspect -f {fmt} web-1")
    action = portal.run("restart_container", "vm-1", {"name": "web-1"})
    _assert_completed(action)
    _, after = vm.root(f"podman inspect -f {fmt} web-1")
    state, started, pid = after.split()
    assert state == "running"
    assert int(started) > int(before.split()[1])
    assert pid != before.split()[2]


def test_restart_container_preflight_fails_for_a_missing_container(portal, installed):
    proposed = portal.propose("restart_container", "vm-1", {"name": "web-9"})
    checked = portal.wait_preflight(proposed["id"])
    assert checked.preflight_status == "FAILED"
    assert "web-9" in checked.preflight_output


def test_reboot_system_reboots_and_comes_back(portal, installed):
    vm = installed.vm
    old_boot = vm.boot_id
    console_at = len(vm.console)
    action = portal.run("reboot_system", "vm-1", timeout=400)
    _assert_completed(action)
    # The console saw the new boot; the host's own boot id says so too.
    vm.wait_reboot(old_boot_id=old_boot, start_line=console_at, timeout=60)
    _, boot_id = vm.root("cat /proc/sys/kernel/random/boot_id")
    assert boot_id.strip() == vm.boot_id != old_boot
    assert "rebooted" in action.verification_output
    assert old_boot in action.verification_output and vm.boot_id in action.verification_output
