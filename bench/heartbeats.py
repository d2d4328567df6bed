"""Heartbeat ingestion (heartbeats/s, p50/p99) against a bare Django view; the missed-beat sweep.

`make bench-heartbeats` runs this. It builds its own world and tears it down:
a ``portal_bench_hb`` PostgreSQL database (dropped and re-created), Redis
database 13 (flushed), N agents made with ``incidents.actions.create_agent``,
and the portal served as in production (daphne; uvicorn too, which the lock
already pins) from ``bench.bare_asgi``: ``portal.asgi.application`` unchanged,
plus ``/bare/<pk>``, a view doing one ``UPDATE`` of the agent row behind the
same settings and middleware.

Load: closed-loop simulated agents, one keep-alive HTTP/1.1 connection each,
spread over generator processes (standard library only: sockets and threads).
Every request is freshly signed with a new nonce (``incidents.agent_client.sign``),
the bare view included, so both sides cost the generator the same. The
generator's own ceiling is measured against a null server, and every run
prints the CPU used by the servers, their PostgreSQL backends and the
generator. Then the sweep: 100,000 agents bulk-inserted, ``mark_missing_agents``
timed with 1% overdue and with none, and EXPLAIN ANALYZE of its scan.

When a target is missed (or with ``--profile always``) py-spy, if installed,
samples the servers during an extra run (and the bench process during an extra
sweep) and the script prints where the time goes. A benchmark that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import json
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from incidents.models import Agent

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

BENCH_DB_NAME = "portal_bench_hb"
APP = "bench.bare_asgi:application"
FAST_APP = "bench.fast_asgi:application"
HEARTBEAT_PATH = "/api/agents/heartbeat"
TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0
TARGET_SWEEP_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench could not set up or a run went wrong; the message says what."""


class ProtocolError(Exception):
    """The server's answer was not an HTTP/1.1 response this client understands."""


# --- load generator (standard library only; runs in spawned processes) -----------------


@dataclass
class SimAgent:
    """A simulated agent: who it is, its secret, and the telemetry it sends."""

    pk: int
    name: str
    secret: str
    body: bytes
    # The portal refuses a heartbeat not signed later than the agent's last one
    # (microseconds, like incidents.agent_client): each agent stays on one connection.
    last_us: int = 0


def heartbeat_body(rng: random.Random) -> bytes:
    """Telemetry like the reference agent's, inside every rule's thresholds (no incidents)."""
    payload = {
        "errors_last_24h": rng.randint(0, 20),
        "webhook_fail_rate": round(rng.uniform(0.0, 0.02), 4),
        "version": "1.4.2",
        "env": "production",
        "metrics": {
            "load1": round(rng.uniform(0.1, 1.5), 2),
            "cpu_pct": round(rng.uniform(5, 60), 1),
            "mem_pct": round(rng.uniform(20, 70), 1),
            "disk_pct": round(rng.uniform(10, 60), 1),
            "response_time_ms": round(rng.uniform(5, 80), 1),
        },
        "services": {"nginx": "active", "app": "running"},
    }
    return json.dumps(payload).encode()


class KeepAlive:
    """One keep-alive HTTP/1.1 connection: raw bytes out, status and body back.

    Cheaper per request than http.client (no header objects), so more of the two
    cores go to the server under test. Needs Content-Length in every answer,
    which Django's CommonMiddleware sets.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _more(self) -> None:
        if self.sock is None:
            raise ProtocolError("not connected")
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed by the server")
        self.buffer += chunk

    def request(self, data: bytes) -> tuple[int, bytes]:
        sock = self.sock if self.sock is not None else self.connect()
        sock.sendall(data)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._more()
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {head[0]!r}") from None
        length, close = None, False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise ProtocolError("answer without Content-Length")
        stop = end + 4 + length
        while len(self.buffer) < stop:
            self._more()
        body, self.buffer = self.buffer[end + 4 : stop], self.buffer[stop:]
        if close:
            self.close()
        return status, body


def signed_request(kind: str, port: int, agent: SimAgent, sign: Callable[..., str]) -> bytes:
    """A heartbeat POST signed like incidents.agent_client does; only the target path differs."""
    agent.last_us = max(time.time_ns() // 1000, agent.last_us + 1)
    timestamp = f"{agent.last_us // 1_000_000}.{agent.last_us % 1_000_000:06d}"
    nonce = secrets.token_urlsafe(18)
    signature = sign(agent.secret, timestamp, nonce, "POST", HEARTBEAT_PATH, agent.body)
    path = {"bare": f"/bare/{agent.pk}", "lean": f"/lean/{agent.pk}"}.get(kind, HEARTBEAT_PATH)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(agent.body)}\r\n"
        f"X-Agent: {agent.name}\r\nX-Agent-Timestamp: {timestamp}\r\n"
        f"X-Agent-Nonce: {nonce}\r\nX-Agent-Signature: {signature}\r\n\r\n"
    )
    return head.encode() + agent.body


@dataclass
class ConnStats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)


def _connection_loop(
    kind: str,
    client: KeepAlive,
    agents: list[SimAgent],
    window: tuple[float, float],
    out: ConnStats,
) -> None:
    from incidents.agent_client import sign  # standard library only

    measure_from, end = window
    pause = threading.Event()
    count = 0
    while time.monotonic() < end:
        agent = agents[count % len(agents)]
        count += 1
        data = signed_request(kind, client.port, agent, sign)
        start = time.monotonic()
        try:
            status, body = client.request(data)
        except (OSError, ProtocolError, ValueError) as exc:
            status, body = 0, f"{exc.__class__.__name__}: {exc}".encode()
            client.close()
            pause.wait(0.01)  # a refused connection must not spin
        done = time.monotonic()
        if not measure_from <= done < end:
            continue
        if status == 200:
            out.latencies.append(done - start)
        else:
            out.errors += 1
            if len(out.samples) < 3:
                text = " ".join(body[:300].decode(errors="replace").split())
                out.samples.append(f"{status} {text[:160]}")


def drive(job: dict, barrier, results) -> None:
    """Generator process: connect, wait for the others, run, report (spawned, not forked)."""
    clients = [KeepAlive(port) for port in job["ports"]]
    for client in clients:
        with contextlib.suppress(OSError):
            client.connect()  # else the first request connects (and counts the error)
    barrier.wait(timeout=120)
    start = time.monotonic()
    window = (start + job["warmup"], start + job["warmup"] + job["duration"])
    stats = [ConnStats() for _ in clients]
    threads = [
        threading.Thread(
            target=_connection_loop, args=(job["kind"], client, agents, window, out), daemon=True
        )
        for client, agents, out in zip(clients, job["agents"], stats, strict=True)
    ]
    for thread in threads:
        thread.start()
    pause = threading.Event()
    pause.wait(max(0.0, window[0] - time.monotonic()))
    cpu_start = time.process_time()
    pause.wait(max(0.0, window[1] - time.monotonic()))
    cpu = time.process_time() - cpu_start
    for thread in threads:
        thread.join(timeout=60)
    for client in clients:
        client.close()
    results.put(
        {
            "pid": os.getpid(),
            "latencies": [v for s in stats for v in s.latencies],
            "errors": sum(s.errors for s in stats),
            "samples": [m for s in stats for m in s.samples][:3],
            "cpu": cpu,
        }
    )


def serve_null(port: int) -> None:
    """A server that answers every request at once: measures the generator's ceiling."""
    import asyncio

    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    answer += b'{"ok":true}'

    class Null(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.transport.write(answer)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


# --- measuring CPU from /proc ------------------------------------------------------------


def proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of one process, plus its reaped children's (0 if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    ticks = [int(v) for v in stat.rsplit(")", 1)[1].split()[11:15]]
    return sum(ticks if reaped else ticks[:2]) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children[parent].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


def _sql(query: str, *params):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


def postgres_cpu() -> dict[int, float]:
    """The whole PostgreSQL server: the postmaster with its reaped children, and live children.

    Backends that come and go (a connection per request) are only seen once reaped,
    so this counts every database on the server, not just the bench's.
    """
    pid = int(Path(f"/proc/{_sql('SELECT pg_backend_pid()')}/stat").read_text().split()[3])
    return {p: proc_cpu(p, reaped=p == pid) for p in descendants(pid)}


class ConnectionWatch(threading.Thread):
    """Peak number of connections to the bench database, polled while the window runs."""

    def __init__(self, ignore: int) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.ignore = ignore  # the bench process's own connection
        self.peak = 0

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.done.wait(0.2):
                count = _sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                    " AND pid NOT IN (pg_backend_pid(), %s)",
                    BENCH_DB_NAME,
                    self.ignore,
                )
                self.peak = max(self.peak, count)
        finally:
            connection.close()

    def stop(self) -> int:
        self.done.set()
        self.join(timeout=10)
        return self.peak


def bench_sessions() -> int:
    """Connections ever opened to the bench database (pg_stat_database.sessions, PG >= 14)."""
    _sql("SELECT pg_stat_clear_snapshot()")
    return _sql("SELECT sessions FROM pg_stat_database WHERE datname = %s", BENCH_DB_NAME)


class CpuMeter:
    """CPU used by groups of processes between start() and stop(), in cores."""

    def __init__(self, groups: dict[str, Callable[[], dict[int, float]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self.before = {name: read() for name, read in self.groups.items()}
        self.machine = machine_busy()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        used = {}
        for name, read in self.groups.items():
            after = read()
            used[name] = (
                sum(max(0.0, after.get(p, 0.0) - cpu) for p, cpu in self.before[name].items())
                / elapsed
            )
        busy, total = machine_busy()
        cores = len(os.sched_getaffinity(0))
        used["machine"] = cores * (busy - self.machine[0]) / max(total - self.machine[1], 1e-9)
        return used


def cpu_of(pids: Callable[[], list[int]]) -> Callable[[], dict[int, float]]:
    return lambda: {p: proc_cpu(p) for p in pids()}


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        with log.open("ab") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    env=self.env,
                    cwd=BASE_DIR,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
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
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
                proc.wait()

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
        lines = []
        for log in sorted(self.logdir.glob(f"{self.spec.kind}-*.log")):
            lines += log.read_text(errors="replace").splitlines()[-15:]
        return "\n".join(lines)


# --- one load run ---------------------------------------------------------------------------


@dataclass
class Run:
    """One fixed-duration, closed-loop run of ``concurrency`` connections."""

    server: str
    kind: str  # heartbeat | bare | null
    concurrency: int
    duration: float
    latencies: list[float]
    errors: int
    samples: list[str]
    cpu: dict[str, float]
    sessions: int = 0  # new connections to the bench database during the window
    peak_connections: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.duration

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return 1000.0 * ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]

    def per_request(self, what: str) -> float:
        """CPU milliseconds of ``what`` per successful request."""
        return 1000.0 * self.cpu.get(what, 0.0) / self.rate if self.rate else float("nan")

    def line(self) -> str:
        cpu = self.cpu
        conns = f"{self.sessions / len(self.latencies):>5.2f}" if self.latencies else "    -"
        return (
            f"{self.server:<15} {self.concurrency:>5} {self.kind:<9} {self.rate:>7.0f} "
            f"{self.pct(50):>7.1f} {self.pct(99):>7.1f} {self.errors:>5} "
            f"{self.per_request('server'):>7.2f} {conns} {self.peak_connections:>5} "
            f"{cpu.get('server', 0):>5.2f} {cpu.get('postgres', 0):>5.2f} "
            f"{cpu.get('redis', 0):>5.2f} {cpu.get('generator', 0):>5.2f} "
            f"{cpu.get('machine', 0):>5.2f}"
        )


HEADER = (
    f"{'server':<15} {'conns':>5} {'path':<9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'errs':>5} {'srv ms':>7} {'db/rq':>5} {'dbmax':>5} {'srv':>5} {'pg':>5} {'rds':>5} "
    f"{'gen':>5} {'all':>5}"
)
CPU_NOTE = """\
req/s, p50 and p99 count successful answers completed in the measured window.
srv ms = server CPU milliseconds per request; db/rq = new connections to the bench
database per request (pg_stat_database.sessions); dbmax = most connections open to it at
once (pg_stat_activity, polled every 0.2 s). The last five columns are cores busy in
the window: srv = the server processes, pg = the PostgreSQL server, rds = redis-server
(private ones only), gen = the load generator, all = the whole machine, other users'
work included."""


@dataclass
class LoadConfig:
    processes: int
    warmup: float
    duration: float
    redis_pids: tuple[int, ...] = ()  # a private redis-server, whose CPU is then reported


def run_load(
    kind: str,
    ports: list[int],
    agents: list[SimAgent],
    concurrency: int,
    config: LoadConfig,
    *,
    server: str,
    server_pids: Callable[[], list[int]] = list,
) -> Run:
    """``concurrency`` connections (spread over ports and generator processes) for a while."""
    ctx = multiprocessing.get_context("spawn")
    processes = max(1, min(config.processes, concurrency))
    conns = [
        (ports[i % len(ports)], agents[i::concurrency] or [agents[i % len(agents)]])
        for i in range(concurrency)
    ]
    jobs = [
        {
            "kind": kind,
            "ports": [port for port, _ in conns[p::processes]],
            "agents": [mine for _, mine in conns[p::processes]],
            "warmup": config.warmup,
            "duration": config.duration,
        }
        for p in range(processes)
    ]
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    children = [ctx.Process(target=drive, args=(job, barrier, results)) for job in jobs]
    for child in children:
        child.start()
    generator_pids = [child.pid for child in children if child.pid is not None]  # all: started
    meter = CpuMeter(
        {
            "server": cpu_of(server_pids),
            "postgres": postgres_cpu,
            "generator": cpu_of(lambda: generator_pids),
            "redis": cpu_of(lambda: list(config.redis_pids)),
        }
    )
    try:
        barrier.wait(timeout=120)
        pause = threading.Event()
        pause.wait(config.warmup)
        sessions, watch = bench_sessions(), ConnectionWatch(_sql("SELECT pg_backend_pid()"))
        meter.start()
        watch.start()
        pause.wait(config.duration)
        cpu = meter.stop()
        peak = watch.stop()
        sessions = bench_sessions() - sessions
        reports = [results.get(timeout=120) for _ in children]
    except BaseException:
        for child in children:
            if child.is_alive():
                child.terminate()
        raise
    finally:
        for child in children:
            child.join(timeout=30)
    if len({r["pid"] for r in reports}) != len(children):
        raise BenchError("generator processes did not run side by side")
    cpu["generator"] = sum(r["cpu"] for r in reports) / config.duration
    return Run(
        server=server,
        kind=kind,
        concurrency=concurrency,
        duration=config.duration,
        latencies=[v for r in reports for v in r["latencies"]],
        errors=sum(r["errors"] for r in reports),
        samples=[m for r in reports for m in r["samples"]][:3],
        cpu=cpu,
        sessions=sessions,
        peak_connections=peak,
    )


def generator_ceiling(agents: list[SimAgent], concurrency: int, config: LoadConfig) -> Run:
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    server = ctx.Process(target=serve_null, args=(port,), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while not _port_answers(port):
            if time.monotonic() > deadline or not server.is_alive():
                raise BenchError("the null server did not start")
            threading.Event().wait(0.05)
        return run_load(
            "null",
            [port],
            agents,
            concurrency,
            config,
            server="null",
            server_pids=lambda: [server.pid] if server.pid is not None else [],
        )
    finally:
        server.terminate()
        server.join(timeout=10)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def check_once(port: int, agent: SimAgent) -> None:
    """One signed heartbeat and one bare request must succeed before any run."""
    from incidents.agent_client import sign

    client = KeepAlive(port)
    try:
        for kind in ("heartbeat", "bare"):
            status, body = client.request(signed_request(kind, port, agent, sign))
            if status != 200:
                raise BenchError(f"{kind} answered {status}: {body[:300]!r}")
    finally:
        client.close()


# --- environment ----------------------------------------------------------------------------


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def start_private_postgres(workdir: Path, stack: contextlib.ExitStack) -> str:
    """A PostgreSQL cluster of the bench's own; returns its URL.

    Under daphne every in-flight request holds a database connection of its own, so
    64 simulated agents would take most of a shared server's 100 connections from
    everyone else. This one allows 300; fsync and synchronous_commit stay on, as in
    production. Started as the ``postgres`` user (it refuses root).
    """
    from portal.lib.localservices import apt_install, is_root, postgres_answers, wait_until

    def bindir() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        return Path(initdb).parent if initdb else None

    if bindir() is None:
        apt_install("postgresql")
    binaries = bindir()
    if binaries is None:
        raise BenchError("PostgreSQL is installed but initdb is not found")
    root = workdir / "postgres"
    (root / "run").mkdir(parents=True)
    as_postgres = ["runuser", "-u", "postgres", "--"] if is_root() else []
    if is_root():
        workdir.chmod(0o711)  # the postgres user must reach its directory
        for path in (root, root / "run"):
            shutil.chown(path, "postgres")
    initdb = [str(binaries / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"]
    subprocess.run(
        [*as_postgres, *initdb, "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL
    )
    port = free_port()
    options = f"-p {port} -k {root / 'run'} -c listen_addresses=127.0.0.1 -c max_connections=300"
    pg_ctl = [*as_postgres, str(binaries / "pg_ctl"), "-D", str(root / "data")]
    subprocess.run(
        [*pg_ctl, "-o", options, "-w", "-l", str(root / "log"), "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stack.callback(
        subprocess.run,
        [*pg_ctl, "-m", "fast", "stop"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    wait_until(lambda: postgres_answers(url), timeout=30, what="PostgreSQL")
    return url


def find_services(
    workdir: Path, stack: contextlib.ExitStack, database_url: str | None, redis_url: str | None
) -> tuple[str, str, tuple[int, ...]]:
    """PostgreSQL and Redis: the given ones, else private ones started here.

    Returns the bench database's URL, the Redis URL and the private redis-server's pid.
    """
    from portal.lib.localservices import redis_answers, start_redis

    if not database_url:
        database_url = start_private_postgres(workdir, stack)
    pids: tuple[int, ...] = ()
    if redis_url:
        if not redis_answers(redis_url):
            raise BenchError(f"Redis at {redis_url} does not answer")
    else:
        # A private server: shared ones have other users' databases (tests pick theirs).
        redis_url, proc, _ = start_redis(workdir / "redis")
        assert proc is not None  # not daemonized: a child of this process
        redis_proc = proc

        def stop_redis() -> None:
            redis_proc.terminate()
            redis_proc.wait()

        stack.callback(stop_redis)
        pids = (proc.pid,)
    return _with_path(database_url, f"/{BENCH_DB_NAME}"), redis_url, pids


def _admin_connection(database_url: str):
    import psycopg

    parts = urlsplit(database_url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname="postgres",
        autocommit=True,
    )


def drop_database(database_url: str) -> None:
    from psycopg import sql

    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    with _admin_connection(database_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB_NAME))
        )


def recreate_database(database_url: str) -> None:
    from psycopg import sql

    drop_database(database_url)
    with _admin_connection(database_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB_NAME)))


def flush_redis(redis_url: str) -> None:
    import redis

    with contextlib.suppress(redis.RedisError, OSError):
        redis.Redis.from_url(redis_url).flushdb()


def bench_env(database_url: str, redis_url: str, workdir: Path) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-" + secrets.token_urlsafe(48),
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "STATIC_MANIFEST": "0",
        "PORTAL_VAR_DIR": str(workdir / "var"),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONUNBUFFERED": "1",
    }


def machine_line() -> str:
    import daphne
    import django
    import uvicorn
    from django.db import connection

    from portal.lib.redis import get_redis

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0].split()[0]
    redis_version = get_redis().info("server").get("redis_version", "?")
    code = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=BASE_DIR, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"code: {code or '?'} (the working tree as it was when this ran)\n"
        f"machine: nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, PostgreSQL {pg_version}, Redis "
        f"{redis_version}, Django {django.get_version()}, daphne {daphne.__version__}, "
        f"uvicorn {uvicorn.__version__}"
    )


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f} (1 min), {five:.2f} (5 min), {fifteen:.2f} (15 min)"


def create_load_agents(count: int) -> list[SimAgent]:
    from incidents.actions import create_agent

    rng = random.Random(1)
    agents = []
    for i in range(count):
        agent, secret = create_agent(name=f"bench-hb-{i:04d}")
        agents.append(SimAgent(agent.pk, agent.name, secret, heartbeat_body(rng)))
    return agents


# --- profiles (py-spy) --------------------------------------------------------------------


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy recording processes until stop(); returns raw collapsed stacks.

    ``gil=True`` keeps only the thread holding the GIL in each sample: where the
    CPU goes. Without it every thread is sampled, waits included: where the time goes.
    """

    def __init__(self, pids: Iterable[int], outdir: Path, tag: str, *, gil: bool) -> None:
        self.outputs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        binary = py_spy()
        if binary is None:
            return
        mode = ["--gil"] if gil else ["--idle"]
        for pid in pids:
            out = outdir / f"{tag}-{pid}.txt"
            self.outputs.append(out)
            with (outdir / f"{tag}-{pid}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [binary, "record", "--pid", str(pid), "--rate", "200", *mode]
                        + ["--threads", "--format", "raw", "--output", str(out)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        threading.Event().wait(1.0)  # attached before the work starts

    def stop(self) -> list[tuple[str, list[str], int]]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stacks = []
        for out in self.outputs:
            if out.exists():
                stacks += read_raw(out)
        return stacks


def read_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames root → leaf, count) from py-spy's raw format."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts = stack.split(";")
        thread = next((p.split(":")[0] for p in parts if p.startswith("thread (")), "?")
        frames = [p for p in parts if not p.startswith(("thread (", "process "))]
        stacks.append((thread, frames or ["?"], int(count)))
    return stacks


def _has(frames: list[str], needles: tuple[str, ...]) -> bool:
    return any(n in f for f in frames for n in needles)


def _source_line(frame: str) -> str:
    """``func (incidents/actions/heartbeats.py:21)`` → that source line, stripped."""
    location = frame.rsplit("(", 1)[-1].rstrip(")")
    filename, _, number = location.rpartition(":")
    path = BASE_DIR / filename
    if not number.isdigit() or not path.is_file():
        return ""
    lines = path.read_text().splitlines()
    return lines[int(number) - 1].strip()[:64] if int(number) <= len(lines) else ""


def by_line(stacks, function: str, total: int, scale: float | None, limit: int) -> list[str]:
    """Share of ``total`` samples under each line of ``function`` ("name (path/file.py").

    With ``scale`` (ms per request for all samples), the share in ms too.
    """
    counts: Counter[str] = Counter()
    for _, frames, n in stacks:
        for frame in frames:
            if frame.startswith(function):
                counts[frame] += n
                break
    rows = []
    for frame, n in counts.most_common(limit):
        location = frame.rsplit("(", 1)[-1].rstrip(")")
        ms = "" if scale is None else f" {scale * n / total:6.2f}"
        rows.append(f"    {100 * n / total:5.1f}%{ms}  {location:<26} {_source_line(frame)}")
    return rows


# Exclusive buckets, first match wins: (label, needles, match the leaf frame only).
SERVER_BUCKETS = [
    (
        "open a new PostgreSQL connection (psycopg connect, Django's set-up)",
        ("get_new_connection", "init_connection_state", "BaseDatabaseWrapper.connect "),
        False,
    ),
    (
        "sync/async hand-offs: asgiref, a thread per request, futures, locks",
        ("asgiref/", "concurrent/futures/", "threading.py", "asyncio/futures.py", "queue.py"),
        True,
    ),
    ("signature check: AgentAuth (agent SELECT, unseal, HMAC, nonce)", ("AgentAuth.",), False),
    ("ingest_heartbeat (UPDATE, INSERT, rules, 3 SELECTs)", ("ingest_heartbeat (",), False),
    ("the bare view's UPDATE", ("bare (bench/bareview.py",), False),
    (
        "ninja: parse and validate the body (pydantic)",
        ("_get_values", "pydantic", "ninja/signature", "ninja/params"),
        False,
    ),
    (
        "ninja: build and render the response",
        ("_result_to_response", "create_response", "ninja/responses", "ninja/renderers"),
        False,
    ),
    (
        "middleware hooks and the request metrics",
        ("process_request", "process_response", "process_view", "prometheus_client/"),
        False,
    ),
    ("the rest of Django: request/response objects, URLs, signals", ("django/",), False),
    (
        "HTTP server and event loop (daphne/twisted or uvicorn/h11, asyncio)",
        ("twisted/", "daphne/", "uvicorn/", "h11/", "asyncio/", "selectors.py"),
        False,
    ),
]
CROSSCUTS = [
    ("psycopg (all of it: connect, send queries, read results)", ("psycopg/",)),
    ("Django ORM (build and compile queries, make model rows)", ("django/db/models/",)),
    ("redis client (the nonce SET NX EX)", ("redis/",)),
    ("unseal the agent secret (HKDF + Fernet)", ("secretbox.py",)),
]
SYNC_MARK = ("SyncToAsync.thread_handler",)


def server_profile(stacks, ms_per_request: float) -> list[str]:
    """Where the servers' CPU goes, as shares of the samples and as ms per request."""
    total = sum(n for *_, n in stacks) or 1
    scale = ms_per_request
    threads = {t for t, frames, _ in stacks if _has(frames, SYNC_MARK)}
    lines = [
        f"  {total:,} samples of the thread holding the GIL; share, and ms of server CPU "
        f"per request (of {ms_per_request:.2f}):"
    ]
    left = stacks
    for label, needles, leaf in SERVER_BUCKETS:
        if leaf:
            mine = [s for s in left if any(n in s[1][-1] for n in needles)]
        else:
            mine = [s for s in left if _has(s[1], needles)]
        taken = {id(s) for s in mine}
        left = [s for s in left if id(s) not in taken]
        share = sum(n for *_, n in mine) / total
        if share:
            lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  {label}")
    share = sum(n for *_, n in left) / total
    lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  other")
    lines.append("  across those (a sample can count in several):")
    for label, needles in CROSSCUTS:
        share = sum(n for _, f, n in stacks if _has(f, needles)) / total
        lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  {label}")
    for title, function, limit in [
        ("ingest_heartbeat, by line", "ingest_heartbeat (incidents/actions/heartbeats.py", 12),
        ("AgentAuth and signing.verify, by line", "verify (incidents/signing.py", 8),
        ("_check_health / _deliver_commands, by line", "_check_health (incidents/", 2),
        ("", "_deliver_commands (incidents/", 2),
    ]:
        if title:
            lines.append(f"  {title}:")
        lines += by_line(stacks, function, total, scale, limit)
    lines.append(
        f"  Django ran the sync code in {len(threads):,} different threads (one per request: "
        "Django's ASGI handler gives each request its own ThreadSensitiveContext)."
    )
    return lines


def sweep_profile(stacks) -> list[str]:
    main = [s for s in stacks if _has(s[1], ("mark_missing_agents (",))]
    total = sum(n for *_, n in main) or 1
    lines = [
        "  mark_missing_agents, by line (share of its wall time; its `with transaction.atomic()`"
        " line is the COMMIT and the on-commit hooks: live events, RQ enqueues):"
    ]
    lines += by_line(main, "mark_missing_agents (incidents/", total, None, 8)
    lines.append("  _open_or_update (one new incident), by line:")
    lines += by_line(main, "_open_or_update (incidents/", total, None, 10)
    lines.append("  across those:")
    for label, needles in [
        ("psycopg: sending queries, waiting for PostgreSQL", ("psycopg/",)),
        ("Django ORM: building/compiling queries, model rows", ("django/db/models/",)),
        ("audit chain (advisory lock, previous hash, insert)", ("record (portal/audit.py",)),
        ("notify (channel lookup)", ("notify (portal/notify.py",)),
        ("on commit: live events (async_to_sync → channels_redis)", ("_send (portal/live.py",)),
        ("on commit: RQ enqueue of the decider job", ("rq/queue.py",)),
    ]:
        share = sum(n for _, f, n in main if _has(f, needles)) / total
        lines.append(f"    {100 * share:5.1f}%  {label}")
    return lines


# --- the sweep ---------------------------------------------------------------------------------


class Stopwatch:
    """Accumulated wall time of calls to wrapped functions (bench process only)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def wrap(self, name: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


@contextlib.contextmanager
def timing(watch: Stopwatch, target: object, attribute: str, name: str) -> Iterator[None]:
    """``target.attribute`` timed into ``watch[name]`` inside the block."""
    original = getattr(target, attribute)
    setattr(target, attribute, watch.wrap(name, original))
    try:
        yield
    finally:
        setattr(target, attribute, original)


def insert_sweep_agents(count: int, overdue_percent: float, now) -> int:
    """Bulk-insert ``count`` agents; returns how many are overdue (not yet flagged, enabled)."""
    from django.db import connection

    from incidents.models import Agent
    from incidents.signing import SEAL_PURPOSE
    from portal.lib.secretbox import seal

    rng = random.Random(42)
    sealed = seal("bench-sweep-agent", purpose=SEAL_PURPOSE)  # these agents never call in
    overdue = round(count * overdue_percent / 100)
    flagged = disabled = count // 200  # 0.5% already missing, 0.5% switched off
    rows = []
    for i in range(count):
        period = rng.choice((60, 120, 120, 300, 900))
        grace = 60
        if i < overdue:  # missed within the last 10 minutes, not flagged yet
            alert_after = now - timedelta(seconds=rng.uniform(1, 600))
            missing, enabled = False, True
        elif i < overdue + flagged:  # flagged by an earlier sweep
            alert_after, missing, enabled = now - timedelta(hours=rng.uniform(1, 48)), True, True
        elif i < overdue + flagged + disabled:  # switched off long ago
            alert_after, missing, enabled = now - timedelta(days=rng.uniform(1, 90)), False, False
        else:  # healthy: next deadline within one period + grace
            alert_after = now + timedelta(seconds=rng.uniform(1, period + grace))
            missing, enabled = False, True
        rows.append(
            Agent(
                name=f"sweep-{i:06d}",
                secret_sealed=sealed,
                expected_period=period,
                grace=grace,
                version="1.4.2",
                last_seen=alert_after - timedelta(seconds=period + grace),
                last_telemetry={"cpu_pct": 12.5, "mem_pct": 40.1, "disk_pct": 33.0},
                alert_after=alert_after,
                missing=missing,
                enabled=enabled,
            )
        )
    rng.shuffle(rows)  # overdue rows spread over the table, as in life
    Agent.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE incidents_agent")
    return overdue


def scan_queryset(now: datetime) -> QuerySet[Agent, int]:
    from incidents.models import Agent

    # The exact query mark_missing_agents runs for each batch (batch=1000).
    return Agent.objects.filter(alert_after__lt=now, missing=False, enabled=True).values_list(
        "pk", flat=True
    )[:1000]


def timed_sweep(now) -> tuple[float, list[int], Stopwatch]:
    """mark_missing_agents(now), with the time in its parts summed by wrappers."""
    import rq.queue

    from incidents import actions
    from portal import live

    watch = Stopwatch()
    with (
        timing(watch, actions, "open_incidents", "incidents"),
        timing(watch, live, "_send", "live"),
        timing(watch, rq.queue.Queue, "enqueue", "enqueue"),
    ):
        start = time.perf_counter()
        flagged = actions.mark_missing_agents(now)
        elapsed = time.perf_counter() - start
    return elapsed, flagged, watch


def reset_flagged(ids: list[int]) -> None:
    """Undo a sweep (bench database only): agents not flagged, their incidents gone."""
    from incidents.models import Agent, Incident

    Incident.objects.filter(agent_id__in=ids, cause="heartbeat").delete()
    Agent.objects.filter(pk__in=ids).update(missing=False)


def run_sweep(args, workdir: Path) -> bool:
    """Prints the sweep's figures; True when the target was met."""
    from django.utils import timezone

    from incidents import actions
    from incidents.models import Agent, Incident

    print(f"\n== Missed-heartbeat sweep over {args.sweep_agents:,} agents ==")
    now = timezone.now()
    start = time.perf_counter()
    overdue = insert_sweep_agents(args.sweep_agents, args.overdue_percent, now)
    print(
        f"inserted {args.sweep_agents:,} agents with bulk_create + ANALYZE in "
        f"{time.perf_counter() - start:.1f} s: {overdue:,} overdue ({args.overdue_percent:g}%), "
        f"{args.sweep_agents // 200:,} already flagged missing, {args.sweep_agents // 200:,} "
        f"disabled, the rest due within one period + grace; {Agent.objects.count():,} rows in all"
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the sweep's scan, before the sweep:")
    print(_indent(scan_queryset(now).explain(analyze=True, buffers=True)))
    scans = []
    for _ in range(5):
        begin = time.perf_counter()
        found = len(list(scan_queryset(now)))
        scans.append(time.perf_counter() - begin)
    print(f"\nscan alone (one batch, {found:,} rows): median {ms(statistics.median(scans))} of 5")

    elapsed, flagged, watch = timed_sweep(now)
    opened = Incident.objects.filter(agent_id__in=flagged, cause="heartbeat").count()
    print(
        f"mark_missing_agents(now), {overdue:,} overdue: {elapsed:.3f} s "
        f"({len(flagged):,} agents flagged, {opened:,} incidents opened, "
        f"{1000 * elapsed / max(len(flagged), 1):.2f} ms per flagged agent)"
    )
    parts = [
        ("open_incidents (incidents, events, audit, notifications; per batch)", "incidents"),
        ("after commit: live events (portal.live._send)", "live"),
        ("after commit: RQ enqueues (decision and notification batch jobs)", "enqueue"),
    ]
    accounted = sum(watch.seconds.values())
    for label, key in parts:
        print(f"    {watch.seconds[key]:7.3f} s  {label}: {watch.calls[key]:,} calls")
    print(f"    {elapsed - accounted:7.3f} s  the rest: batch scans, UPDATE … missing=true, COMMIT")

    empty = []
    for _ in range(5):
        begin = time.perf_counter()
        if actions.mark_missing_agents(now):
            raise BenchError("a sweep right after the first one flagged agents again")
        empty.append(time.perf_counter() - begin)
    print(f"mark_missing_agents(now), 0 overdue: median {ms(statistics.median(empty))} of 5")
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the scan with 0 overdue:")
    print(_indent(scan_queryset(now).explain(analyze=True, buffers=True)))

    met = elapsed < TARGET_SWEEP_S
    print(
        f"\nVERDICT sweep: {elapsed:.3f} s with {overdue:,} overdue, "
        f"{ms(statistics.median(empty))} with none; target < {TARGET_SWEEP_S:g} s: "
        f"{'MET' if met else 'MISSED'}"
    )
    if args.profile == "always" or (args.profile == "auto" and not met):
        reset_flagged(flagged)
        sampler = Sampler([os.getpid()], workdir, "sweep", gil=False)
        if not sampler.procs:
            print("(no py-spy, so no sweep profile; `make bench-heartbeats` installs it)")
            return met
        begin = time.perf_counter()
        again = actions.mark_missing_agents(now)
        took = time.perf_counter() - begin
        stacks = sampler.stop()
        print(f"\nProfile of the sweep (py-spy, again with {len(again):,} overdue: {took:.3f} s):")
        print("\n".join(sweep_profile(stacks)))
    return met


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (default 200)")
    parser.add_argument(
        "--servers",
        type=ServerSpec.parse,
        nargs="+",
        default=[
            ServerSpec("daphne", 2, conn_max_age=0),
            ServerSpec("daphne", 2, conn_max_age=0, fast=True),
            ServerSpec("gateway", 2, conn_max_age=0, fast=True),
        ],
        help="how to serve the portal (default: daphne:2:age=0 daphne:2:age=0:app=fast "
        "gateway:2:age=0); see ServerSpec",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--database-url",
        help="an existing PostgreSQL server to use (default: a private cluster started here)",
    )
    parser.add_argument(
        "--redis-url",
        help="an existing Redis database to use, flushed at start and end (default: a "
        "private redis-server started here)",
    )
    parser.add_argument("--sweep-agents", type=int, default=100_000)
    parser.add_argument("--overdue-percent", type=float, default=1.0)
    parser.add_argument("--skip-load", action="store_true", help="only the sweep")
    parser.add_argument("--skip-sweep", action="store_true", help="only the load runs")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    return parser.parse_args(argv)


def run_matrix(
    args, env: dict, workdir: Path, agents: list[SimAgent], config: LoadConfig
) -> list[Run]:
    runs: list[Run] = []
    for spec in args.servers:
        with Servers(spec, env, workdir / "logs") as servers:
            check_once(servers.ports[0], agents[0])
            for concurrency in args.concurrency:
                # Heartbeat then bare, back to back: load from elsewhere falls on both alike.
                for kind in ("heartbeat", "bare", "lean") if spec.fast else ("heartbeat", "bare"):
                    seen = servers.exceptions()
                    run = run_load(
                        kind,
                        servers.ports,
                        agents,
                        concurrency,
                        config,
                        server=spec.label,
                        server_pids=servers.pids,
                    )
                    runs.append(run)
                    print(run.line(), flush=True)
                    for sample in run.samples:
                        print(f"    error: {sample}")
                    for line, count in (servers.exceptions() - seen).most_common(3):
                        print(f"    server log, {count}x: {line}")
    return runs


def summarize(runs: list[Run]) -> tuple[Run | None, bool]:
    print("\nheartbeat / bare at the same server set-up and connections:")
    pairs: dict[tuple[str, int], dict[str, Run]] = defaultdict(dict)
    for run in runs:
        pairs[(run.server, run.concurrency)][run.kind] = run
    for (server, concurrency), pair in pairs.items():
        hb = pair.get("heartbeat")
        for name in ("bare", "lean"):
            bare = pair.get(name)
            if hb and bare and bare.rate:
                print(
                    f"  {server:<15} {concurrency:>3} conns vs {name}: throughput "
                    f"x{hb.rate / bare.rate:.2f}, p50 x{hb.pct(50) / bare.pct(50):.2f}, "
                    f"p99 x{hb.pct(99) / bare.pct(99):.2f}"
                )
    heartbeats = [r for r in runs if r.kind == "heartbeat" and r.errors == 0]
    within = [r for r in heartbeats if r.pct(99) < TARGET_P99_MS]
    best = max(within or heartbeats, key=lambda r: r.rate, default=None)
    bares = [r for r in runs if r.kind == "bare"]
    bare_best = max([r for r in bares if not r.errors] or bares, key=lambda r: r.rate, default=None)
    if best is None:
        print("\nVERDICT heartbeats: no error-free heartbeat run")
        return None, False
    met = best.rate >= TARGET_RATE and best.pct(99) < TARGET_P99_MS
    print(
        f"\nVERDICT heartbeats: best {best.rate:.0f}/s at p50 {best.pct(50):.1f} ms, p99 "
        f"{best.pct(99):.1f} ms ({best.server}, {best.concurrency} connections"
        f"{'' if within else '; no run had p99 under target'}); target >= {TARGET_RATE:.0f}/s "
        f"with p99 < {TARGET_P99_MS:.0f} ms: {'MET' if met else 'MISSED'}"
    )
    if bare_best:
        print(
            f"bare view best: {bare_best.rate:.0f}/s at p99 {bare_best.pct(99):.1f} ms "
            f"({bare_best.server}, {bare_best.concurrency} connections)"
        )
    leans = [r for r in runs if r.kind == "lean"]
    lean_best = max([r for r in leans if not r.errors] or leans, key=lambda r: r.rate, default=None)
    if lean_best:
        print(
            f"lean bare (raw ASGI, one UPDATE, persistent connection) best: "
            f"{lean_best.rate:.0f}/s at p99 {lean_best.pct(99):.1f} ms ({lean_best.server}, "
            f"{lean_best.concurrency} connections)"
        )
    cores = len(os.sched_getaffinity(0))
    for label, top in (("heartbeat", best), ("bare view", bare_best), ("lean bare", lean_best)):
        if top is None or not top.rate:
            continue
        parts = ("server", "postgres", "redis", "generator")
        total = sum(top.per_request(what) for what in parts)
        print(
            f"CPU per request, {label} at its best: "
            + " + ".join(f"{top.per_request(what):.2f} {what}" for what in parts)
            + f" = {total:.1f} ms: {cores} cores cap it near {cores * 1000 / total:.0f}/s"
            " even with the machine to itself"
        )
    return best, met


def profile_servers(
    args, env: dict, workdir: Path, agents: list[SimAgent], config: LoadConfig, best: Run
) -> None:
    """Extra runs (heartbeat, then bare) with py-spy on every server process."""
    spec = next(s for s in args.servers if s.label == best.server)
    if py_spy() is None:
        print("\n(no py-spy, so no profile; `make bench-heartbeats` installs it)")
        return
    with Servers(spec, env, workdir / "logs") as servers:
        check_once(servers.ports[0], agents[0])
        for kind in ("heartbeat", "bare"):
            sampler = Sampler(servers.pids(), workdir, f"servers-{kind}", gil=True)
            run = run_load(
                kind,
                servers.ports,
                agents,
                best.concurrency,
                config,
                server=spec.label,
                server_pids=servers.pids,
            )
            stacks = sampler.stop()
            print(
                f"\nProfile, {kind} (py-spy --gil at 200 Hz on every server process, {spec.label}, "
                f"{best.concurrency} connections; this run, under the sampler: {run.rate:.0f}/s, "
                f"p99 {run.pct(99):.1f} ms, {run.per_request('server'):.2f} ms server CPU per "
                f"request, {run.sessions / max(len(run.latencies), 1):.2f} new DB connections "
                "per request):"
            )
            print("\n".join(server_profile(stacks, run.per_request("server"))))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    (workdir / "logs").mkdir()

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        database_url, redis_url, redis_pids = find_services(
            workdir, stack, args.database_url, args.redis_url
        )
        recreate_database(database_url)
        stack.callback(drop_database, database_url)
        stack.callback(flush_redis, redis_url)
        flush_redis(redis_url)
        env = bench_env(database_url, redis_url, workdir)
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        print(machine_line())
        print(load_line("at start"))
        if not args.skip_load:
            agents = create_load_agents(args.agents)
            print(
                f"\n== Heartbeat ingestion: {args.agents} agents, {args.duration:g} s measured "
                f"after {args.warmup:g} s warm-up, {args.generators} generator processes, "
                "DB_CONN_MAX_AGE=60 and access log on unless the set-up says otherwise =="
            )
            print(CPU_NOTE)
            print(HEADER)
            config = LoadConfig(args.generators, args.warmup, args.duration, redis_pids)
            short = LoadConfig(args.generators, args.warmup, min(args.duration, 10.0))
            null = generator_ceiling(agents, max(args.concurrency), short)
            print(null.line())
            print(
                f"    generator ceiling against a null server: {null.rate:.0f} req/s, "
                f"{1000 * null.per_request('generator'):.0f} µs of generator CPU per request"
            )
            runs = run_matrix(args, env, workdir, agents, config)
            print(load_line("after the load runs"))
            best, met = summarize(runs)
            if best and (args.profile == "always" or (args.profile == "auto" and not met)):
                profile_servers(args, env, workdir, agents, config, best)
        if not args.skip_sweep:
            run_sweep(args, workdir)
        print(f"\n{load_line('at end')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
