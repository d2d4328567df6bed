"""The rendered wrappers over real SSH: pra-exec, sudo, pra-run and pra-diag on a loopback sshd.

Everything up to the end command is real (sshd with ``command=...,restrict`` keys,
a pinned host key, paramiko with RejectPolicy, sudo). The end commands (systemctl,
journalctl, podman, resolvectl, logrotate) are stand-ins because this machine has
no systemd: they record every call, which is what these tests check.
"""

from __future__ import annotations

import base64
import socket
import subprocess
from contextlib import closing
from pathlib import Path

import paramiko
import pytest

from pra.catalog import CATALOG, catalog_fingerprint, parse_before
from pra.target import render_target

DENIED = 97


def run(client: paramiko.SSHClient, command: str, timeout: float = 10) -> tuple[int, str, str]:
    """Send ``command`` raw (no portal-side validation); return (exit code, stdout, stderr)."""
    transport = client.get_transport()
    assert transport is not None, "the client is connected"
    chan = transport.open_session(timeout=timeout)
    with closing(chan):
        chan.settimeout(timeout)
        chan.exec_command(command)
        stdout = chan.makefile("rb").read().decode()
        stderr = chan.makefile_stderr("rb").read().decode()
        return chan.recv_exit_status(), stdout, stderr


@pytest.fixture(scope="module")
def exec_client(shared_ssh_target):
    client = shared_ssh_target.open_client("exec")
    yield client
    client.close()


@pytest.fixture(scope="module")
def diag_client(shared_ssh_target):
    client = shared_ssh_target.open_client("diag")
    yield client
    client.close()


def _closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the exec key ----------------------------------------------------------------------


# The Proxmox restores run against the PVE stand-ins, with valid names: test_proxmox.py.
@pytest.mark.parametrize("name", sorted(set(CATALOG) - {"pve_restore", "pve_restore_as"}))
def test_each_action_runs_exactly_its_catalog_argv(name, shared_ssh_target, exec_client):
    """pra-exec → sudo → pra-run runs the catalog argv and nothing else (systemctl,
    podman, ... are stand-ins because this machine has no systemd; they record calls)."""
    spec = CATALOG[name]
    params = {p.name: "web-1" for p in spec.params}
    if name == "restart_container":
        shared_ssh_target.add_container("web-1", state="exited")

    code, stdout, stderr = run(exec_client, spec.wire_command(params))

    assert (code, stderr) == (0, "")
    assert shared_ssh_target.calls() == [spec.target_argv(params)]
    log = shared_ssh_target.run_log()
    assert [line.split(" ", 1)[1] for line in log] == [
        f"user=root action={name} args={params.get('name', '-')} mode=run exit={result} "
        f"fingerprint={catalog_fingerprint()[:12]}"
        for result in ("started", "0")
    ]


def test_restarts_leave_the_probed_state_behind(shared_ssh_target, exec_client, diag_client):
    """After restart_unbound / restart_container the catalog probes pass (systemctl and
    podman are stand-ins because this machine has no systemd)."""
    shared_ssh_target.add_container("web-1", state="exited")
    for name, params, said in (
        ("restart_unbound", {}, "active: restarted"),
        ("restart_container", {"name": "web-1"}, "running: restarted"),
    ):
        spec = CATALOG[name]
        code, out, _ = run(exec_client, spec.wire_command(params))
        assert code == 0
        before = parse_before(out)
        assert before is not None and before["boot_id"] == shared_ssh_target.boot_id
        code, stdout, _ = run(diag_client, " ".join(spec.probe.argv(params, before)))
        assert code == 0, stdout
        assert stdout.startswith(said)
        # The same probe with a mark from after the restart: not restarted since then.
        later = {**before, "time": str(int(before["time"]) + 60_000_000)}
        code, stdout, _ = run(diag_client, " ".join(spec.probe.argv(params, later)))
        assert code == 1 and stdout.startswith("NOT restarted"), stdout
    assert shared_ssh_target.unit_state("unbound") == "active"


def test_a_failing_command_passes_its_exit_code_and_stderr_through(shared_ssh_target, exec_client):
    """The podman stand-in (this machine has no podman/systemd) answers 125 for an unknown
    container, as the real one does; pra-run logs the code and exits with it."""
    code, _, stderr = run(exec_client, "restart_container ghost")
    assert code == 125
    assert "no such container" in stderr
    assert shared_ssh_target.run_log()[-1].split()[-2] == "exit=125"


def test_dry_run_runs_only_the_read_only_check(shared_ssh_target, exec_client):
    """--dry-run resolves the binary and runs the action's check (`systemctl cat`), never
    the action (systemctl is a stand-in because this machine has no systemd)."""
    code, stdout, stderr = run(exec_client, "--dry-run restart_unbound")
    assert (code, stdout, stderr) == (0, "DRY-RUN OK: would run: systemctl restart unbound\n", "")
    assert shared_ssh_target.calls() == [["systemctl", "cat", "unbound.service"]]
    assert shared_ssh_target.unit_state("unbound") == "inactive"
    assert " mode=dry-run exit=0 " in shared_ssh_target.run_log()[0]


def test_dry_run_fails_when_the_check_fails(shared_ssh_target, exec_client):
    """A unit that does not exist, a container that does not exist: exit 3 with the reason."""
    shared_ssh_target.set_unit("unbound", "not-found")
    code, _, stderr = run(exec_client, "--dry-run restart_unbound")
    assert code == 3
    assert stderr.startswith("DRY-RUN FAILED: systemctl cat unbound.service (exit 1): No files")
    code, _, stderr = run(exec_client, "--dry-run restart_container web-9")
    assert code == 3
    assert "podman container exists web-9 (exit 1)" in stderr
    assert [c[:2] for c in shared_ssh_target.calls()] == [
        ["systemctl", "cat"],
        ["podman", "container"],
    ]


def test_dry_run_fails_when_the_binary_is_missing(ssh_target):
    """With the resolvectl stand-in removed (this machine has no systemd, hence no real
    resolvectl either) the pre-flight reports it and exits 3."""
    (ssh_target.standins_dir / "resolvectl").unlink()
    # The wrappers' PATH after the stand-ins: a machine with a real resolvectl must pass.
    real = any(Path(d, "resolvectl").exists() for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))
    with closing(ssh_target.open_client("exec")) as client:
        code, stdout, stderr = run(client, "--dry-run flush_dns_cache")
    if real:
        assert (code, stdout) == (0, "DRY-RUN OK: would run: resolvectl flush-caches\n")
    else:
        assert (code, stdout, stderr) == (3, "", "DRY-RUN FAILED: resolvectl not found\n")
    assert ssh_target.calls() == []


def test_catalog_prints_the_portal_fingerprint(exec_client, diag_client):
    assert run(exec_client, "--catalog") == (0, catalog_fingerprint() + "\n", "")
    assert run(diag_client, "catalog") == (0, catalog_fingerprint() + "\n", "")


INJECTIONS = [
    "restart_container x; rm -rf /",
    "restart_container $(id)",
    "restart_container `id`",
    "restart_container a\nb",
    "restart_container ../etc",
    "restart_container a..b",
    "restart_container -rf",
    "restart_container " + "a" * 300,
    "restart_container é",
    "restart_unbound extra",
    "restart_container",
    "rm -rf /",
    "",
    'restart_container "x"',
    "restart_container a b",
    "restart_container x" + " " * 1100,
    "--dry-run",
    "--dry-run rm -rf",
    "--catalog extra",
    "status unbound",  # a diag command on the exec key
]


@pytest.mark.parametrize("command", INJECTIONS, ids=repr)
def test_the_exec_key_refuses_anything_off_catalog(command, shared_ssh_target, exec_client):
    """Sent raw, bypassing the portal's validation: DENIED, exit 97, and no stand-in
    (systemctl, podman, ... are stand-ins because this machine has no systemd) runs."""
    code, stdout, stderr = run(exec_client, command)
    assert code == DENIED
    assert stderr.startswith("DENIED: ")
    assert stdout == ""
    assert shared_ssh_target.calls() == []
    assert shared_ssh_target.run_log() == []  # pra-run was never reached


def test_a_pty_request_is_refused(exec_client):
    """``restrict`` in authorized_keys: no PTY, so no interactive shell either."""
    chan = exec_client.get_transport().open_session(timeout=10)
    with closing(chan), pytest.raises(paramiko.SSHException):
        chan.get_pty()


def test_a_shell_request_gets_the_wrapper_not_a_shell(exec_client):
    chan = exec_client.get_transport().open_session(timeout=10)
    with closing(chan):
        chan.settimeout(10)
        chan.invoke_shell()
        assert chan.recv_exit_status() == DENIED


def test_a_changed_host_key_is_refused(ssh_target):
    """A client pinned to the old host key refuses the rotated one (RejectPolicy, no TOFU)."""
    old_line = ssh_target.host_key_line
    new_line = ssh_target.rotate_host_key()
    assert new_line != old_line

    key_type, blob = old_line.split()
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        ssh_target.known_hosts_name,
        key_type,
        paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)),
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with closing(client), pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            ssh_target.address,
            port=ssh_target.port,
            username=ssh_target.user,
            key_filename=str(ssh_target.exec_key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    with closing(ssh_target.open_client("exec")) as client:  # pinned to the new key
        assert run(client, "--catalog")[0] == 0


# --- the diag key ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["restart_unbound", "--dry-run restart_unbound", "--catalog"])
def test_the_diag_key_cannot_run_actions(command, shared_ssh_target, diag_client):
    """The systemctl stand-in (this machine has no systemd) records no call."""
    code, _, stderr = run(diag_client, command)
    assert code == DENIED
    assert stderr.startswith("DENIED: unknown diagnostic")
    assert shared_ssh_target.calls() == []


@pytest.mark.parametrize(
    "command",
    [
        "status",
        "status unbound caddy",
        "status ../unbound",
        "logs unbound 0",
        "logs unbound 5001",
        "logs unbound ten",
        "errors unbound 1441",
        "connectivity 127.0.0.1 0",
        "connectivity 127.0.0.1 65536",
        "connectivity -x 22",
        "status unbound; id",
        "disk -h",
    ],
)
def test_the_diag_key_refuses_bad_arguments(command, shared_ssh_target, diag_client):
    code, _, stderr = run(diag_client, command)
    assert code == DENIED
    assert stderr.startswith("DENIED: ")
    assert shared_ssh_target.calls() == []


def test_status_reflects_the_unit_state(shared_ssh_target, diag_client):
    """systemctl is a stand-in (this machine has no systemd); set_unit sets what it reports."""

    def status() -> tuple[int, str, str]:
        code, out, err = run(diag_client, "status unbound")
        assert f"ActiveState={out.splitlines()[0]}" in out  # then systemctl show's lines
        return code, out.splitlines()[0], err

    assert status() == (3, "inactive", "")
    shared_ssh_target.set_unit("unbound", "active")
    assert status() == (0, "active", "")
    shared_ssh_target.set_unit("unbound", "failed")
    assert status() == (3, "failed", "")
    assert [c[:2] for c in shared_ssh_target.calls()] == [
        ["systemctl", "is-active"],
        ["systemctl", "show"],
    ] * 3


def test_health_reports_inactive_units_and_recent_errors(shared_ssh_target, diag_client):
    """systemctl and journalctl are stand-ins (this machine has no systemd)."""
    assert run(diag_client, "health caddy") == (1, "UNHEALTHY: not active (inactive)\n", "")
    shared_ssh_target.set_unit("caddy", "active")
    shared_ssh_target.add_journal("caddy", "started")
    assert run(diag_client, "health caddy") == (0, "HEALTHY\n", "")
    shared_ssh_target.add_journal("caddy", "tls: handshake error", "bind failed", error=True)
    assert run(diag_client, "health caddy") == (
        1,
        "UNHEALTHY: 2 error line(s) in the last 10 minutes\n",
        "",
    )


def test_logs_and_errors_read_the_journal(shared_ssh_target, diag_client):
    """journalctl is a stand-in (this machine has no systemd)."""
    shared_ssh_target.add_journal("unbound", "one", "two", "three")
    shared_ssh_target.add_journal("unbound", "bad", error=True)
    assert run(diag_client, "logs unbound 2") == (0, "three\nbad\n", "")
    assert run(diag_client, "errors unbound 30") == (0, "bad\n", "")
    # A daemon's own complaint at info priority (unbound's, on stderr) reads as an error.
    shared_ssh_target.add_journal("unbound", "conf:2: ERROR: unknown keyword 'x'", "fine")
    assert run(diag_client, "errors unbound 30") == (
        0, "bad\nconf:2: ERROR: unknown keyword 'x'\n", ""
    )  # fmt: skip
    err_level, error_looking = shared_ssh_target.calls()[-2:]
    assert err_level == [
        "journalctl", "-u", "unbound", "--since", "-30 min", "-p", "err", "--no-pager",
        "-o", "short-iso", "-q",
    ]  # fmt: skip
    assert error_looking[:10] == [
        "journalctl", "-u", "unbound", "--since", "-30 min", "-p", "warning..debug",
        "--no-pager", "-o", "short-iso",
    ]  # fmt: skip
    assert error_looking[10:13] == ["-q", "--case-sensitive=false", "-g"]
    # A unit with nothing to show: empty, and still a success.
    assert run(diag_client, "errors caddy 30") == (0, "", "")


def test_container_reports_the_state(shared_ssh_target, diag_client):
    """podman is a stand-in (this machine has no podman); the diag key asks root's podman
    through sudo pra-run --container-state."""
    shared_ssh_target.add_container("db", state="exited")
    code, out, err = run(diag_client, "container db")
    assert (code, out.splitlines()[0], err) == (0, "exited", "")
    assert "started_at=0" in out.splitlines()  # never started by the stand-in
    code, _, stderr = run(diag_client, "container ghost")
    assert code == 125
    assert "no such object" in stderr


def test_sysinfo_meminfo_and_disk(diag_client):
    code, stdout, _ = run(diag_client, "sysinfo")
    assert code == 0
    info = dict(line.split(": ", 1) for line in stdout.splitlines())
    assert set(info) == {"hostname", "kernel", "cpus", "uptime", "load", "boot_id"}
    assert len(info["load"].split()) == 3

    code, stdout, _ = run(diag_client, "meminfo")
    assert code == 0
    mem = dict(line.split(": ", 1) for line in stdout.splitlines())
    assert mem["MemTotal"].endswith(" kB")
    assert int(mem["MemTotal"].split()[0]) > 0
    assert 0 <= float(mem["MemUsedPercent"]) <= 100
    assert {"MemAvailable", "SwapTotal", "SwapFree", "SwapUsedPercent"} <= set(mem)

    code, stdout, _ = run(diag_client, "disk")
    assert code in (0, 1)  # df exits 1 when one mount is unreadable, still printing the rest
    assert stdout.startswith("Filesystem")


def test_connectivity(shared_ssh_target, diag_client):
    port = shared_ssh_target.port
    assert run(diag_client, f"connectivity 127.0.0.1 {port}") == (0, f"OK 127.0.0.1:{port}\n", "")
    closed = _closed_port()
    assert run(diag_client, f"connectivity 127.0.0.1 {closed}") == (
        1,
        f"FAIL 127.0.0.1:{closed}\n",
        "",
    )


# --- pra-run on its own -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["restart_unbound", "x"],
        ["restart_container", "a b"],
        ["restart_container", "-rf"],
        ["restart_container", "a/b"],
        ["restart_container", "é"],
        ["restart_container", ""],
        ["--dry-run"],
        ["--container-state", "../x"],
    ],
    ids=repr,
)
def test_pra_run_validates_again(args, shared_ssh_target):
    """Defense in depth: pra-run called without pra-exec (as sudo would allow) refuses
    the same input and logs the refusal; no stand-in (systemctl, podman, ... are
    stand-ins because this machine has no systemd) runs."""
    result = subprocess.run(
        [str(shared_ssh_target.prefix / "pra-run"), *args], capture_output=True, text=True
    )
    assert result.returncode == DENIED
    assert result.stderr.startswith("DENIED: ")
    assert shared_ssh_target.calls() == []
    assert shared_ssh_target.run_log()[-1].split()[-2] == "exit=denied"


def test_pra_run_still_runs_when_its_log_cannot_be_written(shared_ssh_target, tmp_path):
    """A missing log directory costs a warning, not the remediation (systemctl is a
    stand-in because this machine has no systemd)."""
    render_target(
        tmp_path,
        prefix=str(tmp_path),
        log_file=str(tmp_path / "missing-dir" / "pra-run.log"),
        path=f"{shared_ssh_target.standins_dir}:/usr/bin:/bin",
        run_user="root",
        use_sudo=False,
    )
    result = subprocess.run(
        [str(tmp_path / "pra-run"), "restart_unbound"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "WARNING: pra-run could not write to" in result.stderr
    assert shared_ssh_target.calls() == [["systemctl", "restart", "unbound"]]
