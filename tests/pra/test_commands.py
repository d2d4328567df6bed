"""pra_host and pra_check_target against the real loopback sshd (stand-in end commands,
no systemd here)."""

import pytest
from django.core.management import CommandError, call_command

from portal.lib import ssh
from portal.models import AuditEvent
from pra.models import Host
from tests.pra.helpers import register

pytestmark = pytest.mark.django_db


def test_pra_host_add_pins_the_presented_key(shared_ssh_target, capsys):
    call_command(
        "pra_host", "add", "dns-1", "127.0.0.1", "--port", str(shared_ssh_target.port),
        "--user", "root", "--yes",
    )  # fmt: skip
    out = capsys.readouterr().out
    host = Host.objects.get(name="dns-1")
    expected = ssh.fingerprint(shared_ssh_target.host_key_line)
    assert expected in out
    assert host.host_key_fingerprint == expected
    assert AuditEvent.objects.filter(event_type="HOST_ADDED").count() == 1


def test_pra_host_add_refuses_a_key_that_is_not_the_expected_one(shared_ssh_target):
    port = str(shared_ssh_target.port)
    with pytest.raises(CommandError, match="not the expected"):
        call_command(
            "pra_host", "add", "dns-1", "127.0.0.1", "--port", port,
            "--fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )  # fmt: skip
    assert not Host.objects.exists()
    expected = ssh.fingerprint(shared_ssh_target.host_key_line)
    call_command("pra_host", "add", "dns-1", "127.0.0.1", "--port", port, "--fingerprint", expected)
    assert Host.objects.get().host_key_fingerprint == expected


def test_pra_host_add_without_confirmation_changes_nothing(shared_ssh_target):
    with pytest.raises(CommandError, match="Not confirmed"):
        call_command("pra_host", "add", "dns-1", "127.0.0.1", "--port", str(shared_ssh_target.port))
    assert not Host.objects.exists()


def test_pra_host_add_refuses_unreachable_and_bad_names(shared_ssh_target):
    with pytest.raises(CommandError, match="cannot connect"):
        call_command("pra_host", "add", "dns-2", "127.0.0.1", "--port", "1", "--yes")
    with pytest.raises(CommandError, match="name"):
        call_command(
            "pra_host", "add", "Bad Name!", "127.0.0.1", "--port", str(shared_ssh_target.port),
            "--yes",
        )  # fmt: skip
    assert not Host.objects.exists()


def test_repin_after_a_key_change(ssh_target, settings, capsys):
    host = register(ssh_target, settings)
    old = host.host_key_fingerprint
    ssh_target.rotate_host_key()
    with pytest.raises(CommandError, match="Not confirmed"):
        call_command("pra_host", "repin", "dns-1")
    host.refresh_from_db()
    assert host.host_key_fingerprint == old
    new = ssh.fingerprint(ssh_target.host_key_line)
    with pytest.raises(CommandError, match="only re-pinned unattended with --fingerprint"):
        call_command("pra_host", "repin", "dns-1", "--yes")
    with pytest.raises(CommandError, match="not the expected"):
        call_command("pra_host", "repin", "dns-1", "--yes", "--fingerprint", old)
    host.refresh_from_db()
    assert host.host_key_fingerprint == old
    call_command("pra_host", "repin", "dns-1", "--yes", "--fingerprint", new)
    host.refresh_from_db()
    assert host.host_key_fingerprint == new != old


def test_check_target_reports_sync_and_drift(shared_ssh_target, settings, capsys):
    register(shared_ssh_target, settings)
    call_command("pra_check_target", "dns-1")
    assert "dns-1: in sync" in capsys.readouterr().out
    # A target whose wrapper was generated from another catalog.
    exec_script = shared_ssh_target.prefix / "pra-exec"
    original = exec_script.read_text()
    fingerprint = original.split("CATALOG_FINGERPRINT=")[1].split("\n")[0].strip("'\"")
    exec_script.write_text(original.replace(fingerprint, "0" * 64))
    try:
        with pytest.raises(CommandError, match="out of sync: dns-1"):
            call_command("pra_check_target", "all")
    finally:
        exec_script.write_text(original)
    assert "DRIFT" in capsys.readouterr().out
