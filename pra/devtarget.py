"""A local remediation target on loopback: a private ``sshd`` plus the rendered wrappers.

Used by the tests and by ``make run``'s demo. It is a real target in every
respect the portal can see (a pinned ed25519 host key, ``command=...,restrict``
key lines, ``pra-exec`` → ``sudo -n pra-run`` → the catalog argv, ``pra-diag``),
except that the end commands are stand-ins: this machine has no systemd or
podman, so ``systemctl``, ``journalctl``, ``podman``, ``resolvectl`` and
``logrotate`` are small bash scripts under ``workdir/standins`` (first on the
wrappers' ``PATH``) that record every call and keep unit and container states
as files under ``workdir/state``.

Layout of ``workdir``::

    keys/       host key and the exec/diag client keys (generated once, then reused)
    prefix/     pra-exec, pra-run, pra-diag, authorized_keys ... (render_target)
    standins/   the stand-in commands
    state/      calls.log, units/<unit>, containers/<name>, journal/<unit>, telemetry.json ...
    home/       HOME of the SSH sessions (keeps the machine's ~/.bashrc out)
    sshd_config, sshd.log, sshd.pid, known_hosts, pra-run.log

Imports nothing from Django at module level.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
STANDIN_PROGRAMS = ("systemctl", "journalctl", "podman", "resolvectl", "logrotate")
_STATE_DIRS = (
    "units", "containers", "journal", "journal-err", "fail", "delay",
    "entered", "reloads", "started",
)  # fmt: skip
# What the target reports as its load (the demo agent sends these, not the machine's own:
# a loopback target shares the host's CPU, whose load says nothing about the target).
DEFAULT_TELEMETRY = {"cpu_pct": 6.0, "load1": 0.12, "mem_pct": 38.0, "disk_pct": 41.0}
# Containers the demo target runs (for restart_container).
DEMO_CONTAINERS = ("shop-web", "shop-worker")


class DevTargetError(RuntimeError):
    """The local target could not be set up or started; the message says why."""


class LocalTarget:
    """A running loopback sshd whose keys can only reach pra-exec / pra-diag.

    Attributes: ``address``, ``port``, ``user``, ``host_key_line``
    (``ssh-ed25519 AAAA...``), ``exec_key_path``, ``diag_key_path`` (private
    keys), ``log_path`` (pra-run's log), ``sshd_log_path``, ``known_hosts_path``,
    ``use_sudo``, ``workdir``, ``prefix``, ``state_dir``.
    """

    address = "127.0.0.1"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.keys_dir = self.workdir / "keys"
        self.prefix = self.workdir / "prefix"
        self.standins_dir = self.workdir / "standins"
        self.state_dir = self.workdir / "state"
        self.home_dir = self.workdir / "home"
        self.config_path = self.workdir / "sshd_config"
        self.sshd_log_path = self.workdir / "sshd.log"
        self.pid_path = self.workdir / "sshd.pid"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.log_path = self.workdir / "pra-run.log"
        self.telemetry_path = self.state_dir / "telemetry.json"
        # The stand-in "kernel boot id": `systemctl reboot` (stand-in) writes a new one.
        self.boot_id_path = self.state_dir / "boot_id"
        self.host_key_path = self.keys_dir / "ssh_host_ed25519_key"
        self.exec_key_path = self.keys_dir / "exec_ed25519"
        self.diag_key_path = self.keys_dir / "diag_ed25519"
        self.use_sudo = _sudo_works()
        self.notes: list[str] = []
        if not self.use_sudo:
            note = "sudo -n is not usable here: pra-exec runs pra-run directly (use_sudo=False)"
            self.notes.append(note)
            logger.warning("local target: %s", note)
        self.port = port or 0
        self._fixed_port = port is not None
        self._proc: subprocess.Popen | None = None

    # --- lifecycle ----------------------------------------------------------------

    def setup(self) -> None:
        """Create keys (once), render the wrappers and write the stand-ins (start() runs sshd)."""
        for directory in (self.keys_dir, self.standins_dir, self.home_dir, self.state_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for name in _STATE_DIRS:
            (self.state_dir / name).mkdir(exist_ok=True)
        (self.state_dir / "calls.log").touch()
        if not self.boot_id_path.exists():
            self._new_boot_id()
        if not self.telemetry_path.exists():
            self.set_telemetry(**DEFAULT_TELEMETRY)
        for key, comment in (
            (self.host_key_path, "pra-devtarget-host"),
            (self.exec_key_path, "portal-exec"),
            (self.diag_key_path, "portal-diag"),
        ):
            if not key.exists() or not key.with_suffix(".pub").exists():
                _keygen(key, comment)
        self._render()
        self._write_standins()

    def start(self) -> None:
        """Start sshd on ``port`` (a free one unless fixed) and wait until it answers."""
        if shutil.which(SSHD) is None:
            raise DevTargetError(
                f"{SSHD} not found: install openssh-server (apt-get install -y openssh-server)"
            )
        privsep = Path("/run/sshd")
        if not privsep.is_dir():
            privsep.mkdir(mode=0o755, parents=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = _free_port()
            self._write_config()
            check = subprocess.run(
                [SSHD, "-t", "-f", str(self.config_path)], capture_output=True, text=True
            )
            if check.returncode != 0:
                raise DevTargetError(f"sshd -t refused {self.config_path}: {check.stderr.strip()}")
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-f", str(self.config_path), "-E", str(self.sshd_log_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_listening(timeout=10):
                self._write_known_hosts()
                return
            # Lost the race for a free port (or sshd failed): try another one.
            self._reap()
            if attempt + 1 == attempts:
                break
        raise DevTargetError(f"sshd did not start on port {self.port}:\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate sshd (the listener) and wait for it. Safe to call twice."""
        self._reap()

    def rotate_host_key(self) -> str:
        """Replace the host key and restart sshd on the same port; returns the new key line."""
        self.stop()
        for path in (self.host_key_path, self.host_key_path.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        _keygen(self.host_key_path, "pra-devtarget-host")
        self._fixed_port = True
        self.start()
        return self.host_key_line

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- what a client needs ----------------------------------------------------

    @property
    def host_key_line(self) -> str:
        """The host's public key as ``ssh-ed25519 AAAA...`` (no comment)."""
        key_type, blob = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        return f"{key_type} {blob}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts: ``[127.0.0.1]:PORT``."""
        return f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_key_line}"

    def key_path(self, which: str) -> Path:
        """The private key file of ``"exec"`` or ``"diag"``."""
        return {"exec": self.exec_key_path, "diag": self.diag_key_path}[which]

    def open_client(self, which: str = "exec", *, timeout: float = 10.0):
        """A connected ``paramiko.SSHClient`` that trusts only this host's pinned key."""
        import paramiko

        key_type, blob = self.host_key_line.split()
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            self.known_hosts_name,
            key_type,
            paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)),
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((self.address, self.port), timeout=timeout)
        # paramiko leaves Nagle on; with delayed ACKs every handshake round trip stalls.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                self.address,
                port=self.port,
                username=self.user,
                key_filename=str(self.key_path(which)),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                sock=sock,
            )
        except BaseException:
            client.close()
            sock.close()
            raise
        return client

    # --- stand-in state -----------------------------------------------------------

    def calls(self) -> list[list[str]]:
        """Every stand-in invocation so far, oldest first, as argv lists."""
        text = (self.state_dir / "calls.log").read_text()
        return [line.split("\t") for line in text.splitlines() if line]

    def clear_calls(self) -> None:
        (self.state_dir / "calls.log").write_text("")

    def set_unit(self, unit: str, state: str) -> None:
        """Set what the systemctl stand-in reports for ``unit`` (active, inactive, failed...;
        ``not-found``: the unit does not exist, ``systemctl cat`` fails)."""
        (self.state_dir / "units" / _unit_file(unit)).write_text(f"{state}\n")

    def unit_state(self, unit: str) -> str:
        path = self.state_dir / "units" / _unit_file(unit)
        return path.read_text().strip() if path.exists() else "inactive"

    def add_container(self, name: str, state: str = "running") -> None:
        """Make a container exist for the podman stand-in."""
        (self.state_dir / "containers" / _safe_file(name)).write_text(f"{state}\n")

    def container_state(self, name: str) -> str | None:
        path = self.state_dir / "containers" / _safe_file(name)
        return path.read_text().strip() if path.exists() else None

    def add_journal(self, unit: str, *lines: str, error: bool = False) -> None:
        """Append journal lines for ``unit``; ``error=True`` also shows them under ``-p err``."""
        text = "".join(f"{line}\n" for line in lines)
        dirs = ("journal", "journal-err") if error else ("journal",)
        for directory in dirs:
            with (self.state_dir / directory / _unit_file(unit)).open("a") as fh:
                fh.write(text)

    def set_telemetry(self, **metrics: float) -> None:
        """Set what the target reports as its load (``cpu_pct``, ``load1``, ``mem_pct``,
        ``disk_pct``); unnamed metrics keep their value. Written atomically."""
        current = self.telemetry() if self.telemetry_path.exists() else {}
        current.update({name: float(value) for name, value in metrics.items()})
        partial = self.telemetry_path.with_suffix(".tmp")
        partial.write_text(json.dumps(current, sort_keys=True) + "\n")
        partial.replace(self.telemetry_path)

    def telemetry(self) -> dict[str, float]:
        """The target's load as set by ``set_telemetry`` (defaults: a quiet machine)."""
        return read_telemetry(self.telemetry_path)

    def fail_command(self, program: str, exit_code: int = 1, message: str = "") -> None:
        """Make every later call of a stand-in print ``message`` on stderr and exit non-zero."""
        self._check_program(program)
        (self.state_dir / "fail" / program).write_text(f"{int(exit_code)}\n{message}")

    def delay_command(self, program: str, seconds: float) -> None:
        """Make every later call of a stand-in take ``seconds`` first (timeouts, races)."""
        self._check_program(program)
        (self.state_dir / "delay" / program).write_text(f"{float(seconds):.3f}\n")

    def run_log(self) -> list[str]:
        """The lines pra-run appended to its log."""
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def reset(self) -> None:
        """Forget every call, unit, container, journal line, failure and delay, and the log;
        re-render the wrappers and stand-ins in case a test removed or changed one."""
        self._render()
        self._write_standins()
        self.clear_calls()
        for name in _STATE_DIRS:
            for path in (self.state_dir / name).iterdir():
                path.unlink()
        if self.log_path.exists():
            self.log_path.write_text("")
        self.telemetry_path.unlink(missing_ok=True)
        self.set_telemetry(**DEFAULT_TELEMETRY)
        self._new_boot_id()

    # --- internals ----------------------------------------------------------------

    def _check_program(self, program: str) -> None:
        if program not in STANDIN_PROGRAMS:
            raise ValueError(f"{program!r} is not a stand-in ({', '.join(STANDIN_PROGRAMS)})")

    def _render(self) -> None:
        from pra.target import render_target

        render_target(
            self.prefix,
            prefix=str(self.prefix),
            log_file=str(self.log_path),
            path=f"{self.standins_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
            run_user=self.user,
            exec_pubkey=self.exec_key_path.with_suffix(".pub").read_text(),
            diag_pubkey=self.diag_key_path.with_suffix(".pub").read_text(),
            use_sudo=self.use_sudo,
            boot_id_file=str(self.boot_id_path),
        )

    def _new_boot_id(self) -> None:
        self.boot_id_path.write_text(str(uuid.uuid4()) + "\n")

    @property
    def boot_id(self) -> str:
        return self.boot_id_path.read_text().strip()

    def _write_config(self) -> None:
        lines = [
            "# Private sshd of pra.devtarget (loopback only; keys forced to the wrappers).",
            f"Port {self.port}",
            f"ListenAddress {self.address}",
            f"HostKey {self.host_key_path}",
            f"AuthorizedKeysFile {self.prefix / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PermitRootLogin forced-commands-only",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitUserEnvironment no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LoginGraceTime 10",
            "MaxStartups 50",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            f"PidFile {self.pid_path}",
            f"SetEnv HOME={self.home_dir}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_known_hosts(self) -> None:
        self.known_hosts_path.write_text(self.known_hosts_line + "\n")

    def _write_standins(self) -> None:
        for program in STANDIN_PROGRAMS:
            body = _STANDIN_BODIES.get(program, "")
            text = (
                _STANDIN_HEAD.replace("@@PROG@@", program).replace(
                    "@@STATE@@", shlex.quote(str(self.state_dir))
                )
                + body
            )
            path = self.standins_dir / program
            path.write_text(text)
            path.chmod(0o755)

    def _wait_listening(self, *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return True
            except OSError:
                pause.wait(0.02)
        return False

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _log_tail(self) -> str:
        if not self.sshd_log_path.exists():
            return "(no sshd log)"
        return "\n".join(self.sshd_log_path.read_text().splitlines()[-15:])


def read_telemetry(path: Path) -> dict[str, float]:
    """A target's telemetry file: numbers only; a missing or broken file reads as the
    defaults (the agent must keep beating while someone edits it)."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return dict(DEFAULT_TELEMETRY)
    if not isinstance(found, dict):
        return dict(DEFAULT_TELEMETRY)
    return {
        str(name): float(value)
        for name, value in found.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def start_local_target(workdir: Path, *, port: int | None = None) -> LocalTarget:
    """Set up (keys once, wrappers, stand-ins) and start a loopback target under ``workdir``."""
    target = LocalTarget(workdir, port=port)
    target.setup()
    target.start()
    return target


# --- helpers ------------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_sudo_checked: bool | None = None


def _sudo_works() -> bool:
    """Whether ``sudo -n`` runs here without a password (root with the stock sudoers does)."""
    global _sudo_checked
    if _sudo_checked is None:
        _sudo_checked = shutil.which("sudo") is not None and (
            subprocess.run(
                ["sudo", "-n", "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
    return _sudo_checked


def _safe_file(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\n" in name:
        raise ValueError(f"{name!r} cannot be a stand-in state name")
    return name


def _unit_file(unit: str) -> str:
    return _safe_file(unit.removesuffix(".service"))


# --- stand-ins ----------------------------------------------------------------------
# Bash, shellcheck-clean (tests/pra/test_target_render.py checks them). Every call is
# recorded as one tab-separated line: program, then its arguments.

_STANDIN_HEAD = r"""#!/bin/bash
# Stand-in for @@PROG@@, written by pra.devtarget: this machine has no systemd or
# podman. It records each call in calls.log and keeps unit and container states as
# files, so tests and the demo see exactly what the wrappers ran. Not for real targets.
set -euo pipefail
readonly STATE=@@STATE@@
readonly PROG=@@PROG@@

line=$PROG
for arg in "$@"; do
    line+=$'\t'$arg
done
printf '%s\n' "$line" >>"$STATE/calls.log"

# What pre-flights and probes read (systemctl cat/show, podman container exists) is
# never delayed or failed: fail_command() stands for the action failing, not the host.
read_only=0
case "$PROG ${1-} ${2-}" in
    "systemctl cat "* | "systemctl show "* | "podman container exists") read_only=1 ;;
esac
if (( ! read_only )) && [[ -f $STATE/delay/$PROG ]]; then
    sleep "$(<"$STATE/delay/$PROG")"
fi
if (( ! read_only )) && [[ -f $STATE/fail/$PROG ]]; then
    { read -r code; message=$(cat); } <"$STATE/fail/$PROG"
    if [[ -n $message ]]; then
        printf '%s\n' "$message" >&2
    fi
    exit "$code"
fi

state_name() {  # a unit or container name, as its state file name
    if [[ ! $1 =~ ^[a-zA-Z0-9@_.:-]+$ || $1 == *..* ]]; then
        printf '%s (stand-in): bad name %s\n' "$PROG" "$1" >&2
        exit 2
    fi
    printf '%s' "${1%.service}"
}
"""

_SYSTEMCTL = r"""
verb=${1-}
if (( $# > 0 )); then
    shift
fi
units=()
skip=0
for arg in "$@"; do
    if (( skip )); then
        skip=0
    elif [[ $arg == -p || $arg == -P ]]; then
        skip=1
    elif [[ $arg != -* ]]; then
        units+=("$(state_name "$arg")")
    fi
done
now() {  # systemd's --timestamp=us+utc format; one clock reading for both parts
    local t=$EPOCHREALTIME stamp
    TZ=UTC printf -v stamp '%(%a %Y-%m-%d %H:%M:%S)T' "${t%[.,]*}"
    printf '%s.%s UTC' "$stamp" "${t#*[.,]}"
}
unit_state() {
    if [[ -f $STATE/units/$1 ]]; then
        cat -- "$STATE/units/$1"
    else
        printf 'inactive\n'
    fi
}
case $verb in
    start | restart | try-restart | reload-or-restart)
        for unit in "${units[@]}"; do
            printf 'active\n' >"$STATE/units/$unit"
            now >"$STATE/entered/$unit"
        done
        ;;
    reload)
        for unit in "${units[@]}"; do
            printf 'active\n' >"$STATE/units/$unit"
            printf '%s standin systemd[1]: Reloaded %s.service.\n' "$(now)" "$unit" \
                >>"$STATE/reloads/$unit"
        done
        ;;
    cat)
        for unit in "${units[@]}"; do
            if [[ $(unit_state "$unit") == not-found ]]; then
                printf 'No files found for %s.service.\n' "$unit" >&2
                exit 1
            fi
            printf '# /lib/systemd/system/%s.service (stand-in)\n' "$unit"
        done
        ;;
    show)
        # show UNIT -P NAME (value only) or -p NAME... (NAME=value), for one unit.
        props=() value_only=0
        args=("$@")
        for i in "${!args[@]}"; do
            case ${args[i]} in
                -P) value_only=1; props+=("${args[i + 1]}") ;;
                -p) props+=("${args[i + 1]}") ;;
            esac
        done
        unit=${units[0]-}
        for prop in "${props[@]}"; do
            case $prop in
                ActiveState) value=$(unit_state "$unit") ;;
                LoadState)
                    value=loaded
                    [[ $(unit_state "$unit") != not-found ]] || value=not-found
                    ;;
                ActiveEnterTimestamp)
                    value=
                    if [[ -f $STATE/entered/$unit ]]; then
                        value=$(<"$STATE/entered/$unit")
                    fi
                    ;;
                Id) value=$unit.service ;;
                *) value= ;;
            esac
            if (( value_only )); then
                printf '%s\n' "$value"
            else
                printf '%s=%s\n' "$prop" "$value"
            fi
        done
        ;;
    stop)
        for unit in "${units[@]}"; do
            printf 'inactive\n' >"$STATE/units/$unit"
        done
        ;;
    is-active)
        rc=0
        for unit in "${units[@]}"; do
            state=inactive
            if [[ -f $STATE/units/$unit ]]; then
                state=$(<"$STATE/units/$unit")
            fi
            printf '%s\n' "$state"
            if [[ $state != active ]]; then
                rc=3
            fi
        done
        exit "$rc"
        ;;
    reboot)
        # Nothing to reboot here: a new boot id is what the portal's probe can see.
        cat /proc/sys/kernel/random/uuid >"$STATE/boot_id"
        ;;
    poweroff | halt)
        ;;  # recorded above
    *)
        printf 'systemctl (stand-in): unsupported command %s\n' "$verb" >&2
        exit 1
        ;;
esac
"""

_JOURNALCTL = r"""
unit=
lines=
priority=
quiet=0
reloads_of=
pattern=
while (( $# > 0 )); do
    case $1 in
        UNIT=*) reloads_of=$(state_name "${1#UNIT=}"); shift ;;
        -u | --unit) unit=$(state_name "$2"); shift 2 ;;
        -n | --lines) lines=$2; shift 2 ;;
        -p | --priority) priority=$2; shift 2 ;;
        -S | --since | -U | --until) shift 2 ;;
        -q | --quiet) quiet=1; shift ;;
        -g | --grep) pattern=$2; shift 2 ;;
        *) shift ;;
    esac
done
if [[ -n $reloads_of ]]; then  # the reloaded probe: systemd's "Reloaded" job messages
    if [[ -s $STATE/reloads/$reloads_of ]]; then
        cat -- "$STATE/reloads/$reloads_of"
    fi
    exit 0
fi
source_dir=journal
below_err=0
case $priority in
    emerg | alert | crit | err | 0 | 1 | 2 | 3) source_dir=journal-err ;;
    warning..* | notice..* | info..* | debug..* | [4-7]..*) below_err=1 ;;
esac
file=$STATE/$source_dir/$unit
errors=$STATE/journal-err/$unit
shown() {  # the unit's lines at the asked priorities, then -g's case-insensitive match
    if [[ -n $lines ]]; then tail -n "$lines" -- "$file"; else cat -- "$file"; fi |
        if (( below_err )) && [[ -s $errors ]]; then grep -v -x -F -f "$errors"; else cat; fi |
        if [[ -n $pattern ]]; then grep -E -i -- "$pattern"; else cat; fi
}
if [[ -n $unit && -s $file ]]; then
    shown
elif [[ -n $pattern ]]; then
    exit 1  # as journalctl -g: nothing matched
elif (( ! quiet )); then
    printf -- '-- No entries --\n'
fi
"""

_PODMAN = r"""
verb=${1-}
if (( $# > 0 )); then
    shift
fi
case $verb in
    restart)
        rc=0
        for arg in "$@"; do
            name=$(state_name "$arg")
            if [[ -f $STATE/containers/$name ]]; then
                printf 'running\n' >"$STATE/containers/$name"
                printf '%s\n' "${EPOCHREALTIME/[.,]/}" >"$STATE/started/$name"
                printf '%s\n' "$name"
            else
                printf 'Error: no container with name or ID "%s" found: no such container\n' \
                    "$name" >&2
                rc=125
            fi
        done
        exit "$rc"
        ;;
    inspect)
        names=()
        while (( $# > 0 )); do
            case $1 in
                -f | --format | -t | --type) shift 2 ;;
                -*) shift ;;
                *) names+=("$(state_name "$1")"); shift ;;
            esac
        done
        rc=0
        for name in "${names[@]}"; do
            if [[ -f $STATE/containers/$name ]]; then
                cat -- "$STATE/containers/$name"
                started=0
                if [[ -f $STATE/started/$name ]]; then
                    started=$(<"$STATE/started/$name")
                fi
                printf 'started_at=%s\npid=%s\nrestarts=0\nimage=localhost/stand-in\n' \
                    "$started" "$$"
            else
                printf 'Error: no such object: "%s"\n' "$name" >&2
                rc=125
            fi
        done
        exit "$rc"
        ;;
    container)
        # container exists NAME
        [[ ${1-} == exists && -n ${2-} ]] || exit 125
        [[ -f $STATE/containers/$(state_name "$2") ]]
        ;;
    *)
        printf 'podman (stand-in): unsupported command %s\n' "$verb" >&2
        exit 125
        ;;
esac
"""

_STANDIN_BODIES = {"systemctl": _SYSTEMCTL, "journalctl": _JOURNALCTL, "podman": _PODMAN}
