"""bench/pra_latency.py's baselines: bare run_command and paramiko, ansible, an open connection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import BenchError  # noqa: E402 - after the path fix above
from bench.pra_portal import WIRE_COMMAND, Stamps  # noqa: E402


class Bare:
    """The bare SSH paths, one run at a time so they interleave with the portal runs."""

    def __init__(self, target, stamps: Stamps) -> None:
        import base64

        import paramiko

        from portal.lib import ssh

        self.target = target
        self.stamps = stamps
        self.endpoint = ssh.Endpoint(
            address=target.address,
            port=target.port,
            user=target.user,
            host_key=target.host_key_line,
        )
        self.key_type, blob = target.host_key_line.split()[:2]
        self.pinned = paramiko.PKey.from_type_string(self.key_type, base64.b64decode(blob))
        self._open: paramiko.SSHClient | None = None

    def run_command(self) -> dict[str, float]:
        from portal.lib import ssh

        self.stamps.clear()
        sent: list[float] = []
        connect = time.time()
        result = ssh.run_command(
            self.endpoint,
            self.target.exec_key_path,
            WIRE_COMMAND,
            command_timeout=30,
            on_start=lambda: sent.append(time.time()),
        )
        done = time.time()
        if result.exit_code != 0:
            raise BenchError(f"run_command exited {result.exit_code}: {result.stderr}")
        started = self.stamps.one()
        return {
            "started": started - connect,
            "done": done - connect,
            "exec_sent": sent[0] - connect,
            "exec_to_started": started - sent[0],
        }

    def sshclient(self) -> dict[str, float]:
        import paramiko

        self.stamps.clear()
        connect = time.time()
        client = paramiko.SSHClient()
        client.get_host_keys().add(self.target.known_hosts_name, self.key_type, self.pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.target.address,
                port=self.target.port,
                username=self.target.user,
                key_filename=str(self.target.exec_key_path),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            _, stdout, _ = client.exec_command(WIRE_COMMAND, timeout=30)
            stdout.read()
            code = stdout.channel.recv_exit_status()
        finally:
            client.close()
        done = time.time()
        if code != 0:
            raise BenchError(f"SSHClient exec exited {code}")
        return {"started": self.stamps.one() - connect, "done": done - connect}

    def reuse(self) -> dict[str, float]:
        """Exec on an already-open connection: what connection reuse would leave."""
        if self._open is None:
            self._open = self.target.open_client("exec")
        self.stamps.clear()
        begin = time.time()
        transport = self._open.get_transport()
        if transport is None:
            raise BenchError("the open connection has no transport (closed meanwhile)")
        channel = transport.open_session(timeout=10)
        channel.exec_command(WIRE_COMMAND)
        code = channel.recv_exit_status()
        channel.close()
        done = time.time()
        if code != 0:
            raise BenchError(f"exec on an open connection exited {code}")
        return {"started": self.stamps.one() - begin, "done": done - begin}

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


class Ansible:
    """``ansible all -m raw`` against the same sshd, with the same key and pinned host key."""

    def __init__(self, target, stamps: Stamps, workdir: Path) -> None:
        self.stamps = stamps
        self.executable = Path(sys.executable).parent / "ansible"
        self.home = workdir / "ansible"
        self.home.mkdir(exist_ok=True)
        known_hosts = self.home / "known_hosts"
        known_hosts.write_text(f"{target.known_hosts_name} {target.host_key_line}\n")
        self.inventory = self.home / "inventory.ini"
        self.inventory.write_text(
            "[targets]\n"
            f"bench ansible_host={target.address} ansible_port={target.port} "
            f"ansible_user={target.user} ansible_ssh_private_key_file={target.exec_key_path} "
            "ansible_ssh_use_tty=false "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={known_hosts} "
            "-o StrictHostKeyChecking=yes'\n"
        )
        config = self.home / "ansible.cfg"
        config.write_text("[defaults]\n")
        self.env = {
            **os.environ,
            "LC_ALL": "C.UTF-8",
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_HOME": str(self.home),
            "ANSIBLE_LOCAL_TEMP": str(self.home / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            # A fresh connection per run, like the portal (ansible's default
            # ControlPersist would keep a master connection open between runs).
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
        }

    @property
    def available(self) -> bool:
        return self.executable.exists()

    def run(self) -> dict[str, float]:
        self.stamps.clear()
        begin = time.time()
        result = subprocess.run(
            [str(self.executable), "all", "-i", str(self.inventory)]
            + ["-m", "raw", "-a", WIRE_COMMAND],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        done = time.time()
        if result.returncode != 0:
            raise BenchError(f"ansible exited {result.returncode}:\n{result.stdout[-2000:]}")
        return {"started": self.stamps.one() - begin, "done": done - begin}
