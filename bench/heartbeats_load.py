"""bench/heartbeats.py's load: simulated agents, the generator processes, CPU from /proc.

The generator (``drive``, ``serve_null``) runs in spawned processes and uses the
standard library only. ``run_load`` is one fixed-duration, closed-loop run.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import secrets
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import BenchError, free_port  # noqa: E402 - after the path fix above

BENCH_DB_NAME = "portal_bench_hb"
HEARTBEAT_PATH = "/api/agents/heartbeat"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
