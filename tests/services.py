"""Throwaway servers that tests of several apps start (one copy, here in tests/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from portal.lib.localservices import free_port, wait_until


class RedisServer:
    """A throwaway redis-server on a free port in its own directory."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--logfile", str(directory / "redis.log"),
                # Diskless sync waits 5 s for more replicas by default; a test has none.
                "--repl-diskless-sync-delay", "0"]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        self.password = password
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, timeout=10, what="redis-server")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, db=db, socket_timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
