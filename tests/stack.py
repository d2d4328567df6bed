"""A running portal stack for end-to-end tests: daphne (HTTP + websockets) and one RQ
worker as real subprocesses, on this test's database and Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the venv's, for child processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms until it holds (True) or ``timeout`` s pass (False)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(0.05)
    return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_until``, failing the test with ``what`` on timeout."""
    if not wait_until(predicate, timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a worker, its work horse (RQ puts it in a session of its own) and pg_dump."""
    for target in [pid, *_descendants(pid)]:
        try:
            os.killpg(os.getpgid(target), signal.SIGKILL)
        except ProcessLookupError:
            continue


def stack_env(**extra: str) -> dict[str, str]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(BASE_DIR), **extra}


class LiveStack:
    """``with LiveStack(env) as stack:`` → ``stack.url``; both processes stop on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path, queues=("pra", "default")):
        self.env, self.log_dir, self.queues = env, log_dir, queues
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        self.procs.append(
            subprocess.Popen(argv, env=self.env, cwd=BASE_DIR, stdout=log, stderr=log)
        )

    def __enter__(self) -> LiveStack:
        python = sys.executable
        self._spawn(
            "daphne",
            [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "portal.asgi:application"],
        )  # fmt: skip
        self._spawn("worker", [python, "manage.py", "rqworker", *self.queues])

        def answering() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            wait_for(answering, 30, "daphne to listen")
        except AssertionError:
            self.__exit__()
            raise AssertionError((self.log_dir / "daphne.log").read_text()[-3000:]) from None
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
