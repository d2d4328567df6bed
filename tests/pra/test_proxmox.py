"""Proxmox VM/LXC backups and restores (issue 14 §3) through the remediation path.

Real: sshd on loopback with the forced-command keys, the rendered pra-exec / pra-run /
pra-diag / pra-pve, sudo, paramiko with the pinned host key, a real RQ worker, the two
approvals. Proxmox cannot run here: ``pvesh``, ``qmrestore``, ``pct``, ``qm``, ``vzdump``
and ``ping`` are the recording stand-ins of ``pra.devtarget_pve`` answering in PVE 8's
JSON shapes. The post-restore SSH check is real: a listener on 127.0.0.2:22 sends an SSH
banner (the restored guest's address in its configuration).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from datetime import UTC, datetime

import pytest
from django.utils import timezone

from pra import actions, devtarget_pve, proxmox
from pra.choices import ActionStatus, Verification
from pra.models import PRAAction
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.test_target_wrappers import DENIED, run

pytestmark = pytest.mark.django_db(transaction=True)

ARCHIVE = "vzdump-lxc-110-2026_12_01-02_00_00.tar.zst"
VM_ARCHIVE = "vzdump-qemu-100-2026_11_30-02_00_00.vma.zst"
GUEST_ADDRESS = "127.0.0.2"
LIVE_CONFIG = f"hostname: minio\nnet0: name=eth0,bridge=vmbr0,ip={GUEST_ADDRESS}/8\n# live\n"
BACKUP_CONFIG = (
    "arch: amd64\nhostname: minio\nmemory: 1024\n"
    f"net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip={GUEST_ADDRESS}/8\n"
    "rootfs: local-lvm:vm-110-disk-0,size=8G\n# from the backup\n"
)
RATIONALE = "the MinIO container lost its data volume; restore it from last night's vzdump"


@pytest.fixture
def pve(ssh_target, settings):
    """A loopback target of this test's own with the PVE stand-ins, registered as a
    Proxmox node (tag ``proxmox``): a backup storage, a disk storage, guest 110 running."""
    devtarget_pve.install(ssh_target)
    devtarget_pve.add_storage(ssh_target, "local", avail=10 << 30, total=100 << 30)
    devtarget_pve.add_storage(ssh_target, "local-lvm", avail=10 << 30, total=200 << 30)
    devtarget_pve.add_backup(ssh_target, "local", ARCHIVE, BACKUP_CONFIG,
                             datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # fmt: skip
    devtarget_pve.add_backup(ssh_target, "local", VM_ARCHIVE, "name: web\nipconfig0: ip=dhcp\n",
                             datetime(2026, 11, 30, 2, 0, tzinfo=UTC))  # fmt: skip
    devtarget_pve.add_guest(ssh_target, 110, "lxc", "running", LIVE_CONFIG)
    devtarget_pve.add_guest(ssh_target, 100, "qemu", "running", "name: web\n")
    settings.PRA_SSH_KEY_FILE = ssh_target.exec_key_path
    settings.PRA_DIAG_SSH_KEY_FILE = ssh_target.diag_key_path
    settings.PRA_RETRY_BACKOFF = 0.05
    host = actions.add_host(
        name="pve1", address=ssh_target.address, port=ssh_target.port,
        ssh_user=ssh_target.user, host_key=ssh_target.host_key_line, tags="proxmox",
    )  # fmt: skip
    return ssh_target, host


@pytest.fixture
def ssh_banner():
    """Something answering SSH on the guest's address (port 22), as its sshd would."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((GUEST_ADDRESS, 22))
    sock.listen(8)

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): the port is free again
    sock.close()


def restore_params(**override) -> dict:
    return {"vmid": "110", "archive": ARCHIVE, "backup_storage": "local",
            "storage": "local-lvm", **override}  # fmt: skip


def approve_and_run(action, *approvers):
    for person in approvers:
        actions.approve_action(action, by=person, confirmation="pve1")
    run_jobs()
    action.refresh_from_db()
    return action


def program_calls(target, *programs):
    return [call for call in target.calls() if call[0] in programs]


def test_the_backup_listing_is_a_read_only_diagnostic(pve, operator):
    target, host = pve
    run = actions.run_diagnostic(host, "pve_backups", {"storage": "local"}, by=operator)
    assert run.exit_code == 0, run.output + run.error
    items = json.loads(run.output)
    assert {i["volid"] for i in items} == {f"local:backup/{ARCHIVE}", f"local:backup/{VM_ARCHIVE}"}
    lxc = next(i for i in items if i["subtype"] == "lxc")
    assert lxc["vmid"] == 110 and lxc["format"] == "tar.zst" and lxc["content"] == "backup"
    assert lxc["ctime"] == int(datetime(2026, 12, 1, 2, 0, tzinfo=UTC).timestamp())
    (call,) = target.calls()
    assert call[0] == "pvesh" and call[1:3] == ["get", call[2]]
    assert call[2].endswith("/storage/local/content")
    assert call[3:] == ["--content", "backup", "--output-format", "json"]
    assert proxmox.newest_backup(run.output) == (datetime(2026, 12, 1, 2, 0, tzinfo=UTC), 2)
    assert devtarget_pve.guest(target, 110)[1] == "running"  # nothing changed


def test_an_lxc_restore_stops_backs_up_restores_and_checks(
    pve, ssh_banner, operator, approver, approver2
):
    target, host = pve
    action = propose(operator, host, "pve_restore", restore_params(), rationale=RATIONALE)
    assert action.impact == "HIGH"
    action = approve_and_run(action, approver)
    assert action.status == ActionStatus.PROPOSED  # one signature of two
    assert not program_calls(target, "pct", "vzdump", "qmrestore")
    action = approve_and_run(action, approver2)
    assert action.status == ActionStatus.COMPLETED, action.stdout + action.stderr
    assert action.verification == Verification.VERIFIED, action.verification_output
    kind, status, config = devtarget_pve.guest(target, 110)
    assert (kind, status) == ("lxc", "running") and "# from the backup" in config
    steps = [" ".join(c[:3]) for c in program_calls(target, "pct", "vzdump", "qmrestore", "ping")]
    shutdown = steps.index("pct shutdown 110")
    safety = steps.index("vzdump 110 --mode")
    restored = steps.index("pct restore 110")
    assert shutdown < safety < restored < steps.index("pct start 110")
    restore_call = next(c for c in target.calls() if c[:2] == ["pct", "restore"])
    assert restore_call[2:] == ["110", f"local:backup/{ARCHIVE}", "--storage", "local-lvm",
                                "--force", "1"]  # fmt: skip
    assert not program_calls(target, "qmrestore")  # an LXC archive: pct restore, never qmrestore
    # The safety backup is a second archive of 110 on the backup storage.
    archives = devtarget_pve.backups(target, "local")
    (safety_archive,) = [a for a in archives if a.startswith("vzdump-lxc-110-") and a != ARCHIVE]
    assert f"SAFETY {safety_archive}" in action.stdout
    assert "# live" in (target.state_dir / "pve" / "backups" / "local" / safety_archive).read_text()
    for line in ("CHECK running ok", f"CHECK ping {GUEST_ADDRESS} ok",
                 f"CHECK ssh {GUEST_ADDRESS}:22 ok", "PRECHECK lxc"):  # fmt: skip
        assert line in action.stdout, action.stdout


def test_a_vm_restored_under_another_id_is_a_stopped_copy(pve, operator, approver, approver2):
    target, host = pve
    params = restore_params(vmid="100", archive=VM_ARCHIVE, target="9100")
    action = propose(operator, host, "pve_restore_as", params, rationale=RATIONALE)
    action = approve_and_run(action, approver, approver2)
    assert action.status == ActionStatus.COMPLETED, action.stdout + action.stderr
    assert action.verification == Verification.VERIFIED, action.verification_output
    call = next(c for c in target.calls() if c[0] == "qmrestore")
    assert call[1:] == [f"local:backup/{VM_ARCHIVE}", "9100", "--storage", "local-lvm",
                        "--unique", "1"]  # fmt: skip
    assert devtarget_pve.guest(target, 9100)[:2] == ("qemu", "stopped")
    assert devtarget_pve.guest(target, 100)[:2] == ("qemu", "running")  # the original untouched
    assert not program_calls(target, "vzdump")  # nothing held 9100: nothing to back up


def test_too_little_free_space_stops_it_before_anything_changes(pve, operator, approver, approver2):
    target, host = pve
    size = len(BACKUP_CONFIG.encode())
    devtarget_pve.add_storage(target, "local-lvm", avail=size, total=1 << 30)  # < 2 x size
    action = propose(operator, host, "pve_restore", restore_params(), rationale=RATIONALE)
    action = approve_and_run(action, approver, approver2)
    assert action.status == ActionStatus.FAILED and action.exit_code == 4
    assert "not enough free space on local-lvm" in action.stderr
    assert not program_calls(target, "vzdump", "qmrestore") and not [
        c for c in target.calls() if c[0] == "pct"
    ]
    assert devtarget_pve.guest(target, 110) == ("lxc", "running", LIVE_CONFIG)


def test_a_failed_safety_backup_overwrites_nothing_and_restarts_the_guest(
    pve, operator, approver, approver2
):
    target, host = pve
    devtarget_pve.fail(target, "vzdump", 2, "ERROR: Backup of VM 110 failed - no space left")
    action = propose(operator, host, "pve_restore", restore_params(), rationale=RATIONALE)
    action = approve_and_run(action, approver, approver2)
    assert action.status == ActionStatus.FAILED and action.exit_code == 6
    assert "nothing was overwritten" in action.stderr
    assert not [c for c in target.calls() if c[:2] == ["pct", "restore"]]
    assert devtarget_pve.guest(target, 110) == ("lxc", "running", LIVE_CONFIG)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (restore_params(vmid="99"), "vmid"),
        (restore_params(vmid="110;reboot"), "vmid"),
        (restore_params(vmid="0110"), "vmid"),
        (restore_params(archive="../../etc/passwd"), "archive"),
        (restore_params(archive="vzdump-lxc-110-2026_12_01-02_00_00.tar.zst.sh"), "archive"),
        (restore_params(archive="vzdump-lxc-111-2026_12_01-02_00_00.tar.zst"), "not of 110"),
        (restore_params(storage="Local"), "storage"),
        (restore_params(backup_storage="local/../x"), "backup_storage"),
        (restore_params(storage="local lvm"), "storage"),
    ],
)
def test_the_portal_refuses_bad_names(pve, operator, params, message):
    _, host = pve
    with pytest.raises(actions.ActionError, match=message):
        propose(operator, host, "pve_restore", params, rationale=RATIONALE)
    assert not PRAAction.objects.exists()


def test_the_portal_refuses_a_restore_on_a_host_that_is_not_a_proxmox_node(pve, operator):
    _, host = pve
    type(host).objects.filter(pk=host.pk).update(tags="dns")
    with pytest.raises(actions.ActionError, match="hosts tagged proxmox"):
        propose(operator, "pve1", "pve_restore", restore_params(), rationale=RATIONALE)
    with pytest.raises(actions.ActionError, match="storage"):
        actions.run_diagnostic(host, "pve_backups", {"storage": "Local"}, by=operator)
    assert not PRAAction.objects.exists()


@pytest.mark.parametrize(
    "command",
    [
        "pve_restore 99 " + ARCHIVE + " local local-lvm",
        "pve_restore 110 vzdump-lxc-110-2026_12_01-02_00_00.tar.zst Local local-lvm",
        "pve_restore 110 vzdump-lxc-110.tar local local-lvm",
        "pve_restore_as 110 " + ARCHIVE + " local local-lvm 12",
        # Each word passes its own pattern; pra-pve refuses the archive of another guest.
        "pve_restore 110 vzdump-lxc-111-2026_12_01-02_00_00.tar.zst local local-lvm",
    ],
)
def test_the_wrappers_refuse_bad_names_sent_raw_over_ssh(pve, command):
    target, _ = pve
    client = target.open_client("exec")
    try:
        code, _, err = run(client, command)
    finally:
        client.close()
    assert code == DENIED and "DENIED" in err
    assert not program_calls(target, "pct", "qm", "qmrestore", "vzdump")
    assert devtarget_pve.guest(target, 110) == ("lxc", "running", LIVE_CONFIG)


@pytest.mark.parametrize("command", ["pve-backups Local", "pve-status 12", "pve-status 110 111",
                                     "pve-backups local-"])  # fmt: skip
def test_pra_diag_refuses_bad_names_raw(pve, command):
    target, _ = pve
    client = target.open_client("diag")
    try:
        code, _, err = run(client, command)
    finally:
        client.close()
    if command == "pve-backups local-":  # a valid storage id that does not exist
        assert code != 0 and "does not exist" in err
        return
    assert code == DENIED and "DENIED" in err
    assert not target.calls()


def test_the_dr_report_rows_of_a_node(pve, ssh_banner, operator, approver, approver2):
    target, host = pve
    (row,) = proxmox.dr_rows(timezone.now())
    assert "no vzdump backup seen" in row.problems[0]
    # Tonight's backup listed, then a restore through the portal: the node is ready.
    devtarget_pve.add_backup(target, "local", "vzdump-lxc-110-2026_12_02-00_30_00.tar.zst",
                             BACKUP_CONFIG, timezone.now())  # fmt: skip
    actions.run_diagnostic(host, "pve_backups", {"storage": "local"}, by=operator)
    action = propose(operator, host, "pve_restore", restore_params(), rationale=RATIONALE)
    action = approve_and_run(action, approver, approver2)
    assert action.status == ActionStatus.COMPLETED, action.stderr
    (row,) = proxmox.dr_rows(timezone.now())
    assert row.problems == [], row.problems
    assert row.restore_what == f"action #{action.pk}" and 0 < row.restore_seconds < 300
    assert row.target_seconds == 300 and row.backup_fresh
