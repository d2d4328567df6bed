"""bench/heartbeats.py's servers: the portal under daphne, uvicorn or the agent gateway."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import (  # noqa: E402 - after the path fix above
    BenchError,
    free_port,
    log_tail,
    spawn_logged,
    stop_processes,
)
from bench.heartbeats_load import descendants  # noqa: E402

APP = "bench.bare_asgi:application"
FAST_APP = "bench.fast_asgi:application"


@dataclass(frozen=True)
class ServerSpec:
    """How the portal is served, e.g. ``daphne:2``, ``uvicorn:2``, ``daphne:2:age=0:log=off``.

    daphne:N is N processes on N ports (the agents split between them, as production
    scales out); uvicorn:N is one port with N workers. ``age`` is DB_CONN_MAX_AGE
    (default 60, the portal's own default); ``log`` the access log (default on, as
    both servers do by default).
    """

    kind: str
    processes: int
    conn_max_age: int = 60
    access_log: bool = True
    fast: bool = False  # app=fast: bench.fast_asgi (the heartbeat lean path, /lean/<pk>)

    @classmethod
    def parse(cls, text: str) -> ServerSpec:
        kind, *rest = text.split(":")
        count = rest.pop(0) if rest and rest[0].isdigit() else "1"
        options = dict(part.partition("=")[::2] for part in rest)
        age, log = options.pop("age", "60"), options.pop("log", "on")
        app = options.pop("app", "portal")
        valid = kind in ("daphne", "uvicorn", "gateway") and age.isdigit() and log in ("on", "off")
        app = "fast" if kind == "gateway" else app  # the gateway serves the lean path
        if options or not valid or app not in ("portal", "fast"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected daphne|uvicorn|gateway[:N][:age=SECONDS][:log=on|off]"
                "[:app=portal|fast]"
            )
        return cls(kind, max(1, int(count)), int(age), log == "on", app == "fast")

    @property
    def label(self) -> str:
        extra = "" if self.conn_max_age == 60 else f" age{self.conn_max_age}"
        extra += " fast" if self.fast else ""
        return f"{self.kind} x{self.processes}{extra}{'' if self.access_log else ' nolog'}"

    @property
    def app(self) -> str:
        return FAST_APP if self.fast else APP


class Servers:
    """``bench.bare_asgi`` served per ``spec``; every process started here is stopped here."""

    def __init__(self, spec: ServerSpec, env: dict[str, str], logdir: Path) -> None:
        self.spec, self.logdir, self.access_log = spec, logdir, spec.access_log
        self.env = {**env, "DB_CONN_MAX_AGE": str(spec.conn_max_age),
                    "HEARTBEAT_FAST_PATH": "1" if spec.fast else "0"}  # fmt: skip
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def __enter__(self) -> Servers:
        try:
            if self.spec.kind == "daphne":
                for _ in range(self.spec.processes):
                    port = free_port()
                    verbosity = "1" if self.access_log else "0"  # 1 is daphne's default
                    self._start(
                        [
                            "-m",
                            "daphne",
                            "-b",
                            "127.0.0.1",
                            "-p",
                            str(port),
                            "-v",
                            verbosity,
                            self.spec.app,
                        ],  # fmt: skip
                        port,
                    )
            elif self.spec.kind == "gateway":  # manage.py agent_gateway: N workers, one port
                port = free_port()
                argv = ["manage.py", "agent_gateway", "--host", "127.0.0.1", "--port", str(port)]
                self._start([*argv, "--workers", str(self.spec.processes), "--app", FAST_APP], port)
            else:
                port = free_port()
                argv = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
                argv += ["--workers", str(self.spec.processes), "--lifespan", "off"]
                argv += [] if self.access_log else ["--no-access-log"]
                self._start([*argv, self.spec.app], port)
            for port in self.ports:
                self._wait_ready(port)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _start(self, argv: list[str], port: int) -> None:
        log = self.logdir / f"{self.spec.kind}-{port}.log"
        self.procs.append(spawn_logged(argv, self.env, log))
        self.ports.append(port)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 90
        pause = threading.Event()
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise BenchError(f"{self.spec.kind} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                return
            pause.wait(0.1)
        raise BenchError(f"{self.spec.kind} on port {port} did not answer:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in descendants(proc.pid)]

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        stop_processes(procs)

    def exceptions(self) -> Counter[str]:
        """The exception lines in the servers' logs so far (what a 500 was)."""
        found: Counter[str] = Counter()
        for log in self.logdir.glob(f"{self.spec.kind}-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                name = line.split(":", 1)[0]
                if name.endswith(("Error", "Exception")) and " " not in name:
                    found[line[:160]] += 1
        return found

    def log_tail(self) -> str:
        return log_tail(sorted(self.logdir.glob(f"{self.spec.kind}-*.log")), 15)
