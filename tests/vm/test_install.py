"""Installing the portal's target files on a real Debian host, pinning its host key with
``pra_host add`` and checking for drift with ``pra_check_target``."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from portal.lib import ssh
from pra.catalog import catalog_fingerprint
from pra.models import Host
from tests.vm.portal import pin_vm

pytestmark = pytest.mark.django_db


def test_install_sh_installs_the_wrappers_sudoers_and_keys(installed):
    vm = installed.vm
    assert "installed /etc/sudoers.d/pra" in installed.install_output
    _, modes = vm.root(
        "stat -c '%a %U %n' /etc/sudoers.d/pra /usr/local/bin/pra-exec "
        "/usr/local/bin/pra-run /usr/local/bin/pra-diag /home/pra/.ssh/authorized_keys"
    )
    assert modes.split("\n")[:5] == [
        "440 root /etc/sudoers.d/pra",
        "755 root /usr/local/bin/pra-exec",
        "755 root /usr/local/bin/pra-run",
        "755 root /usr/local/bin/pra-diag",
        "600 pra /home/pra/.ssh/authorized_keys",
    ]
    # Real sudo on a real host: pra may run exactly pra-run, and nothing else.
    _, allowed = vm.root("sudo -l -U pra")
    assert "/usr/local/bin/pra-run" in allowed
    code, refused = vm.root("su -s /bin/sh pra -c 'sudo -n /bin/true'", check=False)
    assert code != 0 and "sudo:" in refused
    _, groups = vm.root("id -nG pra")
    assert "systemd-journal" in groups.split()


def test_pra_host_add_pins_the_key_shown_on_the_console(installed, settings):
    host, out = pin_vm(installed.vm, installed, settings)
    assert host.host_key.split()[:2] == installed.vm.host_key.split()[:2]
    assert f"Added vm-1, pinned {ssh.fingerprint(installed.vm.host_key)}" in out


def test_pra_host_add_refuses_a_key_that_is_not_the_consoles(installed, settings):
    other = "SHA256:" + "A" * 43
    with pytest.raises(CommandError, match="not the expected"):
        call_command(
            "pra_host", "add", "vm-x", "127.0.0.1", "--port", str(installed.vm.ssh_port),
            "--fingerprint", other, stdout=io.StringIO(),
        )  # fmt: skip
    assert not Host.objects.filter(name="vm-x").exists()


def test_check_target_reports_no_drift(installed, settings):
    pin_vm(installed.vm, installed, settings)
    out = io.StringIO()
    call_command("pra_check_target", "vm-1", stdout=out)
    assert f"vm-1: in sync ({catalog_fingerprint()[:16]}" in out.getvalue()
