"""A running VM target: QEMU on a qcow2 overlay of the cached image.

The guest announces itself on its serial console with one line per boot,
``PRA-READY boot_id=… hostkey=ssh-ed25519 AAAA…`` (``pra-ready.service``,
after sshd started). Waiting for a boot, or a reboot, is waiting for that
line: nothing polls SSH, nothing sleeps a fixed time. The host key comes from
the console too, the channel an operator reads a fingerprint from, so every
SSH connection (the harness's root one included) checks it.

Networking is QEMU's user network with ``restrict=on``: the guest reaches
nothing outside (no registry, no mirror); SSH and HTTP come in through
``hostfwd`` on loopback ports.

``tests/vm/conftest.py`` starts the boot in a thread as soon as pytest has
collected a ``vm`` test, so the build and boot overlap the other tests.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import paramiko

from pra.vmtarget import recipe

READY = re.compile(r"PRA-READY boot_id=([0-9a-f-]{36}) hostkey=(ssh-ed25519 [A-Za-z0-9+/=]+)")
BOOT_TIMEOUT = float(os.environ.get("PORTAL_VM_BOOT_TIMEOUT", "900"))
MEMORY_MB = 1024
# quiet: the console carries the PRA-READY line; mitigations=off: a throwaway test guest,
# and page-table isolation costs a lot under software emulation (TCG).
KERNEL_ARGS = "console=ttyS0 root=/dev/vda rw quiet systemd.show_status=false mitigations=off"


class VMError(RuntimeError):
    """QEMU would not start, the guest did not come up in time, or a command failed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _patient_transport(sock, **kwargs) -> paramiko.Transport:
    # paramiko gives the key exchange 15 s; a guest under TCG on a busy machine needs more.
    transport = paramiko.Transport(sock, **kwargs)
    transport.handshake_timeout = 120
    return transport


class Console:
    """The guest's serial console (QEMU's stdout): kept in memory and in a file;
    waiters are woken on every new line."""

    def __init__(self, stream, path: Path) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._file = open(path, "a", buffering=1, errors="replace")  # noqa: SIM115
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            self._file.write(line + "\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._file.close()

    def wait_for(self, pattern: re.Pattern, *, start: int, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = pattern.search(self.lines[index])
                    index += 1
                    if match:
                        return match
                if self._closed:
                    raise VMError("QEMU exited: " + " | ".join(self.lines[-15:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VMError(
                        f"no {pattern.pattern.split()[0]} on the console within {timeout:.0f} s; "
                        "last lines: " + " | ".join(self.lines[-15:])
                    )
                self._cond.wait(left)

    def __len__(self) -> int:
        with self._cond:
            return len(self.lines)


class VM:
    """One QEMU guest. ``root(cmd)`` runs a shell command as the guest's root (the
    harness's own key, never the portal's); ``poweroff()`` pulls the plug."""

    def __init__(self, image: recipe.Image, workdir: Path) -> None:
        self.image = image
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.overlay = self.workdir / "overlay.qcow2"
        self.qmp_path = self.workdir / "qmp.sock"
        self.console_path = self.workdir / "console.log"
        self.ssh_port = _free_port()
        self.http_port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.boot_id = ""
        self.host_key = ""
        self.boot_seconds = 0.0
        self._client: paramiko.SSHClient | None = None

    # --- lifecycle ----------------------------------------------------------------

    def start(self, *, fresh: bool = True) -> None:
        """Start QEMU (on a new overlay unless ``fresh=False``) and wait for PRA-READY."""
        if fresh or not self.overlay.exists():
            self.overlay.unlink(missing_ok=True)
            recipe._run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", str(self.image.rootfs), str(self.overlay)],
                "qemu-img create", timeout=60,
            )  # fmt: skip
        self.qmp_path.unlink(missing_ok=True)
        fwd = (
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,hostfwd=tcp:127.0.0.1:{self.http_port}-:80"
        )
        argv = [
            "qemu-system-x86_64",
            "-accel", os.environ.get("PORTAL_VM_ACCEL", "tcg"),
            "-m", str(MEMORY_MB), "-smp", "2",
            "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_ARGS,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", f"user,id=n0,restrict=on,{fwd}",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise VMError(
                "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
            ) from None
        self.console = Console(self.proc.stdout, self.console_path)
        self._ready(0, BOOT_TIMEOUT)
        self.boot_seconds = time.monotonic() - started

    def _console(self) -> Console:
        if self.console is None:
            raise VMError("the VM has not been started")
        return self.console

    def _ready(self, start_line: int, timeout: float) -> None:
        match = self._console().wait_for(READY, start=start_line, timeout=timeout)
        self.boot_id, self.host_key = match.group(1), match.group(2)
        self._close_client()

    def stop(self) -> None:
        self._close_client()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def poweroff(self) -> None:
        """Pull the plug (QMP ``quit``: no shutdown inside the guest)."""
        self._close_client()
        self._qmp("quit")
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rwb")
            stream.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": cmd}).encode() + b"\n")
                stream.flush()
                with contextlib.suppress(OSError):
                    stream.readline()

    def wait_reboot(self, *, old_boot_id: str, start_line: int, timeout: float) -> float:
        """Wait for a PRA-READY line with another boot id; returns the seconds waited."""
        started = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - started)
            console = self._console()
            match = console.wait_for(READY, start=start_line, timeout=max(left, 0.01))
            start_line = console.lines.index(match.string) + 1
            if match.group(1) != old_boot_id:
                self.boot_id, self.host_key = match.group(1), match.group(2)
                self._close_client()
                return time.monotonic() - started

    # --- the harness's root access --------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client is not None else None
        if self._client is not None and transport is not None and transport.is_active():
            return self._client
        client = paramiko.SSHClient()
        key_type, blob = self.host_key.split()[:2]
        client.get_host_keys().add(
            f"[127.0.0.1]:{self.ssh_port}",
            key_type,
            paramiko.Ed25519Key(data=base64.b64decode(blob)),
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection(("127.0.0.1", self.ssh_port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(
            "127.0.0.1",
            port=self.ssh_port,
            username="root",
            key_filename=str(self.image.root_key),
            sock=sock,
            timeout=120,
            banner_timeout=120,
            auth_timeout=120,
            look_for_keys=False,
            allow_agent=False,
            transport_factory=_patient_transport,
        )
        self._client = client
        return client

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def root(self, command: str, *, timeout: float = 600, check: bool = True) -> tuple[int, str]:
        """Run ``command`` with root's shell in the guest; (exit code, stdout+stderr)."""
        client = self._connect()
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        code = stdout.channel.recv_exit_status()
        if check and code != 0:
            raise VMError(f"in the VM, {command!r} exited {code}: {(out + err).strip()[-2000:]}")
        return code, out + err

    def put_dir(self, local: Path, remote: str) -> None:
        """Copy a directory's files (modes kept) into ``remote`` in the guest, through tar."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(Path(local).iterdir()):
                if path.is_file():
                    tar.add(path, arcname=path.name)
        client = self._connect()
        quoted = remote.replace("'", "")
        stdin, stdout, _ = client.exec_command(
            f"rm -rf '{quoted}' && mkdir -p '{quoted}' && tar -C '{quoted}' -xf -", timeout=60
        )
        stdin.write(buffer.getvalue())
        stdin.channel.shutdown_write()
        if stdout.channel.recv_exit_status() != 0:
            raise VMError(f"copying {local} into the VM failed")

    def write_file(self, remote: str, text: str, mode: int = 0o644) -> None:
        client = self._connect()
        with client.open_sftp() as sftp:
            with sftp.open(remote, "w") as handle:
                handle.write(text)
            sftp.chmod(remote, mode)
