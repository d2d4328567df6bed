"""Remediation latency: approval → command started / COMPLETED, against bare SSH and ansible.

`make bench-pra` runs this. It builds its own world and tears it down again:
a ``portal_bench`` PostgreSQL database (dropped and re-created), Redis
database 14 (flushed), a loopback sshd target (pra.devtarget) registered as
a host, and real ``manage.py rqworker pra`` processes (one at a time).

- portal: propose ``restart_unbound``, approve it; t0 is taken right after
  the approval transaction commits (before its on-commit hooks: live event,
  enqueue). "started" is the target's own timestamp, written by a bench
  ``systemctl`` stand-in the moment the command starts there; "COMPLETED"
  is the action's ``finished_at`` (the worker's clock, same machine).
- bare ``portal.lib.ssh.run_command`` and a bare paramiko ``SSHClient``
  (RejectPolicy, pinned key, paramiko defaults: Nagle left on), from connect.
- ``ansible all -m raw`` (ansible-core), a fresh SSH connection per run.

The paths are interleaved (each portal run is followed by one run of every
bare path, in blocks that alternate the worker classes), so load from other
processes on the machine falls on all of them alike. Every figure is a
wall-clock difference on one machine: time.time(), bash's EPOCHREALTIME and
Django's timezone.now() all read CLOCK_REALTIME. A benchmark that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import paramiko

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/portal"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BENCH_DB_NAME = "portal_bench"
BENCH_REDIS_DB = 14
WIRE_COMMAND = "restart_unbound"
TARGET_RATIO = 1.25
WORKER_CLASSES = ("rq.Worker", "rq.SimpleWorker")
RATIONALE = "benchmark run: unbound restart to measure approval to execution latency"

# Replaces the target's systemctl stand-in: stamps the moment a restart starts
# (bash's EPOCHREALTIME is a builtin, so no extra fork before the stamp).
SYSTEMCTL_STAMP = """#!/bin/bash
# systemctl stand-in of bench/pra_latency.py: stamps when a restart starts.
export LC_ALL=C
case ${1-} in
    restart) printf '%s\\n' "$EPOCHREALTIME" >>@@STAMP@@ ;;
    is-active) printf 'active\\n' ;;
esac
exit 0
"""


class BenchError(RuntimeError):
    """The bench could not set up or a run went wrong; the message says what."""


# --- figures ------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class Series:
    """One measured path: per-run durations in seconds, keyed by what they measure."""

    label: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **durations: float) -> None:
        for key, value in durations.items():
            self.values.setdefault(key, []).append(value)

    @property
    def runs(self) -> int:
        return min((len(v) for v in self.values.values()), default=0)

    def median(self, key: str) -> float:
        return statistics.median(self.values[key])

    def p95(self, key: str) -> float:
        return statistics.quantiles(self.values[key], n=100, method="inclusive")[94]


def _ts(moment: datetime | None) -> float:
    """A datetime (aware, or naive UTC as rq may store it) as epoch seconds."""
    if moment is None:
        raise BenchError("a timestamp the system under test should have written is missing")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Stamps:
    """The file the bench's systemctl stand-in appends to on the target."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        self.path.write_text("")

    def one(self) -> float:
        lines = self.path.read_text().split()
        if len(lines) != 1:
            raise BenchError(f"expected one start stamp on the target, found {len(lines)}")
        return float(lines[0].replace(",", "."))


# --- environment --------------------------------------------------------------------


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def find_services(workdir: Path, stack: contextlib.ExitStack) -> tuple[str, str]:
    """PostgreSQL and Redis at DATABASE_URL/REDIS_URL (or the defaults), else private ones."""
    from portal.lib.localservices import (
        postgres_answers,
        redis_answers,
        start_postgres,
        start_redis,
        stop_postgres,
    )

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE
    if not database_url.startswith("postgres") or not postgres_answers(database_url):
        database_url, pg_ctl, datadir = start_postgres(workdir / "services")
        stack.callback(stop_postgres, pg_ctl, datadir)
        print(f"Started a throwaway PostgreSQL: {database_url}")
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if not redis_answers(redis_url):
        redis_url, proc, _ = start_redis(workdir / "services")
        assert proc is not None  # not daemonized: a child of this process
        redis_proc = proc

        def stop_redis() -> None:
            redis_proc.terminate()
            redis_proc.wait()

        stack.callback(stop_redis)
        print(f"Started a throwaway Redis: {redis_url}")
    return (
        _with_path(database_url, f"/{BENCH_DB_NAME}"),
        _with_path(redis_url, f"/{BENCH_REDIS_DB}"),
    )


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


def recreate_database(database_url: str) -> None:
    from psycopg import sql

    name = sql.Identifier(BENCH_DB_NAME)
    with _admin_connection(database_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def drop_database(database_url: str) -> None:
    from django.apps import apps
    from django.db import connections
    from psycopg import sql

    if apps.ready:
        connections.close_all()
    with _admin_connection(database_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB_NAME))
        )


def bench_env(database_url: str, redis_url: str, workdir: Path, target) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-" + secrets.token_urlsafe(48),
        "STATIC_MANIFEST": "0",
        "PORTAL_VAR_DIR": str(workdir / "var"),
        "PRA_PREFLIGHT": "0",  # measure the execution only, not the dry run at proposal
        "PRA_SSH_KEY_FILE": str(target.exec_key_path),
        "PRA_DIAG_SSH_KEY_FILE": str(target.diag_key_path),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }


def install_stamp_standin(target, stamp_path: Path) -> None:
    import shlex

    script = target.standins_dir / "systemctl"
    script.write_text(SYSTEMCTL_STAMP.replace("@@STAMP@@", shlex.quote(str(stamp_path))))
    script.chmod(0o755)


def machine_line() -> str:
    import paramiko
    import rq
    from django.db import connection

    from portal.lib.redis import get_redis

    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0].split()[0]
    redis_version = get_redis().info("server").get("redis_version", "?")
    return (
        f"machine: nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {ssh_version.split(',')[0]}, "
        f"PostgreSQL {pg_version}, Redis {redis_version}, paramiko {paramiko.__version__}, "
        f"rq {rq.__version__}"
    )


def load_line(when: str) -> str:
    one, five, _ = os.getloadavg()
    return f"load average {when}: {one:.2f} (1 min), {five:.2f} (5 min)"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return
        event.wait(pause)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- the worker -----------------------------------------------------------------------


class WorkerProcess:
    """One ``manage.py rqworker pra`` (not burst) in its own session, stopped by its pid."""

    def __init__(self, worker_class: str, env: dict[str, str], log_path: Path) -> None:
        self.worker_class = worker_class
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> WorkerProcess:
        name = f"bench-{self.worker_class.rsplit('.', 1)[-1]}-{os.getpid()}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "rqworker", "pra"]
                + ["--worker-class", self.worker_class, "--name", name],
                env=self.env,
                cwd=BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self.idle, 60, "the RQ worker to start")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def idle(self) -> bool:
        import django_rq
        from rq import Worker

        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"the RQ worker exited:\n{self.log_tail()}")
        for worker in Worker.all(queue=django_rq.get_queue("pra")):
            if worker.pid == self.proc.pid:
                return worker.get_state() == "idle"
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the current job, then exit
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and its horse
            proc.wait()

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-25:])


# --- the portal path ----------------------------------------------------------------


@dataclass
class Portal:
    """What a portal run needs: the host, the personas, the stamps."""

    host: object
    operator: object
    approvers: list
    stamps: Stamps
    count: int = 0


def setup_portal(target, stamps: Stamps) -> Portal:
    from portal.actions import set_user
    from portal.roles import Role
    from pra import actions

    password = secrets.token_urlsafe(24)
    operator, _ = set_user("bench-operator", role=Role.OPERATOR, password=password)
    approvers = [
        set_user(name, role=Role.APPROVER, password=password)[0]
        for name in ("bench-approver-1", "bench-approver-2")
    ]
    host = actions.add_host(
        name="bench-dns-1",
        address=target.address,
        port=target.port,
        ssh_user=target.user,
        host_key=target.host_key_line,
    )
    return Portal(host=host, operator=operator, approvers=approvers, stamps=stamps)


def approve_and_time(action, approver) -> float:
    """Approve; return t0, the moment the approval transaction committed.

    The outer atomic makes approve_action's block a savepoint, so its on-commit
    hooks (live event, enqueue) run after ours: t0 leaves none of them out.
    """
    from django.db import transaction

    from pra import actions

    committed: list[float] = []
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.time()))
        actions.approve_action(action, by=approver)
    return committed[0]


def portal_run(portal: Portal, worker: WorkerProcess) -> dict:
    """One propose → approve → COMPLETED → verified cycle; returns its timestamps."""
    import django_rq
    from rq.job import Job

    from portal.choices import AuditEventType
    from portal.models import AuditEvent
    from pra import actions
    from pra.choices import ActionStatus, Verification
    from pra.models import PRAAction

    threading.Event().wait(0.1)  # the worker is back in its blocking dequeue, as when idle
    action = actions.propose_action(
        action=WIRE_COMMAND, host=portal.host, params={}, rationale=RATIONALE, by=portal.operator
    )
    portal.stamps.clear()
    portal.count += 1
    t0 = approve_and_time(action, portal.approvers[portal.count % 2])

    def settled() -> bool:
        row = PRAAction.objects.filter(pk=action.pk).values("status", "verification").get()
        if row["status"] in (ActionStatus.FAILED, ActionStatus.EXPIRED, ActionStatus.REJECTED):
            raise BenchError(f"action #{action.pk} ended {row['status']}:\n{worker.log_tail()}")
        done = row["status"] == ActionStatus.COMPLETED
        return done and row["verification"] != Verification.PENDING

    wait_for(settled, 60, f"action #{action.pk} to complete and be verified")
    wait_for(worker.idle, 30, "the worker to be idle again", pause=0.02)
    action.refresh_from_db()
    if action.verification != Verification.VERIFIED:
        raise BenchError(f"action #{action.pk} is {action.verification}")
    job = Job.fetch(
        actions.execution_job_id(action.pk), connection=django_rq.get_queue("pra").connection
    )
    events = dict(
        AuditEvent.objects.filter(
            subject_type="pra.praaction",
            subject_id=str(action.pk),
            event_type__in=[AuditEventType.PRA_EXECUTING, AuditEventType.PRA_EXECUTED],
        ).values_list("event_type", "created")
    )
    return {
        "t0": t0,
        "enqueued": _ts(job.enqueued_at),
        "job_started": _ts(job.started_at),
        "claim": _ts(action.started_at),
        "executing_audit": _ts(events.get(AuditEventType.PRA_EXECUTING)),
        "target_started": portal.stamps.one(),
        "finished": _ts(action.finished_at),
        "executed_audit": _ts(events.get(AuditEventType.PRA_EXECUTED)),
        "job": job,
    }


PORTAL_PHASES = (
    ("commit → job enqueued (on-commit hooks: live event, then enqueue)", "t0", "enqueued"),
    ("job enqueued → rq job started (dequeue, fork, rq bookkeeping)", "enqueued", "job_started"),
    ("rq job started → claim begins (job.perform, imports)", "job_started", "claim"),
    ("claim begins → EXECUTING audit row (DB connect, checks, UPDATE)", "claim", "executing_audit"),
    (
        "EXECUTING audit → command started (commit, live event, SSH)",
        "executing_audit",
        "target_started",
    ),
    ("command started → finished_at (command ends, SSH close)", "target_started", "finished"),
    ("finished_at → EXECUTED audit row", "finished", "executed_audit"),
)


def portal_durations(stamp: dict) -> dict[str, float]:
    return {
        "started": stamp["target_started"] - stamp["t0"],
        "completed": stamp["finished"] - stamp["t0"],
        **{label: stamp[end] - stamp[start] for label, start, end in PORTAL_PHASES},
    }


# --- instrumented runs (profiling inside the worker) -----------------------------------


def profiled_execute(action_id: int) -> dict:
    """Runs in the worker: the real ``pra.jobs.execute_action`` with timing wrappers.

    Enqueued by the bench in place of ``pra.jobs.execute_action`` (same job id,
    same queue) for the profiling runs only. Wraps, never changes, product code.
    """
    from unittest import mock

    from django.db import connections

    import pra.jobs
    from portal import live
    from portal.lib import ssh
    from pra import actions, transport

    marks: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}

    def timed(label: str, func: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return func(*args, **kwargs)
            finally:
                spans.setdefault(label, []).append((start, time.time()))

        return wrapper

    original_run_exec = transport.run_exec

    def run_exec(host, command, **kwargs):
        on_start = kwargs.get("on_start")

        def stamped() -> None:
            marks["exec_sent"] = time.time()
            if on_start is not None:
                on_start()

        kwargs["on_start"] = stamped
        return original_run_exec(host, command, **kwargs)

    wrapped = [
        (connections["default"], "connect", "db_connect"),
        (actions, "claim_action", "claim"),
        (actions.execution, "record", "audit"),
        (live, "_send", "publish"),
        (ssh, "load_private_key", "key_load"),
        (ssh, "_start", "tcp_handshake"),
        (actions, "finish_execution", "finish"),
        (pra.jobs, "verify_action", "verify"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, label in wrapped:
            stack.enter_context(mock.patch.object(owner, name, timed(label, getattr(owner, name))))
        stack.enter_context(mock.patch.object(transport, "run_exec", timed("run_exec", run_exec)))
        outcome = pra.jobs.execute_action(action_id)
    return {"outcome": outcome, "marks": marks, "spans": spans}


@contextlib.contextmanager
def profiled_approvals(spans: list[tuple[str, float, float]]) -> Iterator[None]:
    """In this (bench) process only: approvals enqueue ``profiled_execute`` instead of
    ``pra.jobs.execute_action``, and the approval's on-commit hooks are timed."""
    from unittest import mock

    from portal import live
    from pra.actions import common as actions

    original_enqueue, original_send = actions._enqueue, live._send

    def enqueue(func_path: str, action_id: int, job_id: str, queue: str = "pra") -> None:
        if func_path == "pra.jobs.execute_action":
            func_path = "bench.pra_latency.profiled_execute"
        start = time.time()
        original_enqueue(func_path, action_id, job_id, queue)
        spans.append(("enqueue", start, time.time()))

    def send(groups, event) -> None:
        start = time.time()
        original_send(groups, event)
        spans.append(("publish", start, time.time()))

    with mock.patch.object(actions, "_enqueue", enqueue), mock.patch.object(live, "_send", send):
        yield


def _within(spans: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """Total time of the spans that lie inside ``window``."""
    return sum(end - start for start, end in spans if start >= window[0] and end <= window[1])


HORSE_PHASES = (
    "approval on-commit: live event publish (2 groups)",
    "approval on-commit: enqueue",
    "claim_action total",
    "  of which: DB connect",
    "  of which: audit row (advisory lock, prev hash, INSERT)",
    "  of which: live event publish on commit (2 groups)",
    "  of which: the rest (SELECTs, approval tally, UPDATE, COMMIT)",
    "run_exec: load private key",
    "run_exec: TCP connect + SSH handshake + host key check",
    "run_exec: auth + open session (→ exec sent)",
    "exec sent → command started on target (sshd, pra-exec, sudo, pra-run)",
    "command started → run_exec returned",
    "finish_execution (UPDATE, audit, live event)",
    "verify_action (probe over SSH; after COMPLETED, keeps the worker busy)",
)


def horse_breakdown(result: dict, bench_spans: list, t0: float, target_started: float) -> dict:
    marks, spans = result["marks"], result["spans"]
    claim = spans["claim"][0]
    claim_parts = [
        _within(spans.get(name, []), claim) for name in ("db_connect", "audit", "publish")
    ]
    start = spans["tcp_handshake"][0]
    run_exec = spans["run_exec"][0]
    approval = {name: end - begin for name, begin, end in bench_spans if begin >= t0}
    values = (
        approval.get("publish", 0.0),
        approval.get("enqueue", 0.0),
        claim[1] - claim[0],
        *claim_parts,
        claim[1] - claim[0] - sum(claim_parts),
        _within(spans.get("key_load", []), run_exec),
        start[1] - start[0],
        marks["exec_sent"] - start[1],
        target_started - marks["exec_sent"],
        run_exec[1] - target_started,
        spans["finish"][0][1] - spans["finish"][0][0],
        spans["verify"][0][1] - spans["verify"][0][0],
    )
    return dict(zip(HORSE_PHASES, values, strict=True))


def profile_portal(portal: Portal, worker: WorkerProcess, *, runs: int, warmup: int) -> Series:
    series = Series(label=f"inside the worker, {worker.worker_class}")
    bench_spans: list[tuple[str, float, float]] = []
    with profiled_approvals(bench_spans):
        for index in range(warmup + runs):
            bench_spans.clear()
            stamp = portal_run(portal, worker)
            result = stamp["job"].return_value()
            if not isinstance(result, dict) or result.get("outcome") != "completed":
                raise BenchError(f"profiled run returned {result!r}:\n{worker.log_tail()}")
            if index >= warmup:
                series.add(
                    **horse_breakdown(result, bench_spans, stamp["t0"], stamp["target_started"])
                )
    return series


# --- baselines ------------------------------------------------------------------------


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


# --- report ---------------------------------------------------------------------------


def _row(name: str, what: str, series: Series, key: str) -> str:
    runs = str(series.runs) if name else ""
    return (
        f"  {name:<28} {runs:>4}  {what:<27} {ms(series.median(key)):>9.1f}"
        f" {ms(series.p95(key)):>9.1f}"
    )


def _ratio(top: Series, top_key: str, bottom: Series, bottom_key: str) -> tuple[float, float]:
    return (
        top.median(top_key) / bottom.median(bottom_key),
        top.p95(top_key) / bottom.p95(bottom_key),
    )


COMPARISONS = (
    ("started", "started", "approval→started vs connect→started"),
    ("completed", "done", "approval→COMPLETED vs connect→done"),
)


def report(results: dict) -> None:
    portal, bare, client = results["portal"], results["bare"], results["client"]
    ansible, reuse = results["ansible"], results["reuse"]
    print()
    print(f"  {'path':<28} {'runs':>4}  {'measured':<27} {'median ms':>9} {'p95 ms':>9}")
    for series in portal:
        print(_row(series.label, "approval → command started", series, "started"))
        print(_row("", "approval → COMPLETED", series, "completed"))
    print(_row(bare.label, "connect → command started", bare, "started"))
    print(_row("", "connect → done", bare, "done"))
    print(_row(client.label, "connect → command started", client, "started"))
    print(_row("", "connect → done", client, "done"))
    if ansible is not None:
        print(_row(ansible.label, "start → command started", ansible, "started"))
        print(_row("", "start → done", ansible, "done"))
    print(_row(reuse.label, "exec → command started", reuse, "started"))
    print(_row("", "exec → done (reference only)", reuse, "done"))

    print()
    print("ratios (of medians, of p95s):")
    for series in portal:
        for base in (bare, client):
            for top_key, base_key, what in COMPARISONS:
                med, tail = _ratio(series, top_key, base, base_key)
                print(f"  {series.label} / {base.label}, {what}: {med:.2f}× {tail:.2f}×")
        if ansible is not None:
            for key, what in (("started", "→ started"), ("completed", "→ done/COMPLETED")):
                med, tail = _ratio(ansible, "done" if key == "completed" else key, series, key)
                print(f"  {ansible.label} / {series.label}, {what}: {med:.2f}× {tail:.2f}×")

    print()
    for series in portal:
        for top_key, base_key, what in COMPARISONS:
            med, _ = _ratio(series, top_key, bare, base_key)
            verdict = "MET" if med <= TARGET_RATIO else "NOT MET"
            print(
                f"VERDICT {series.label}: {what} (bare run_command): median {med:.2f}×, "
                f"target ≤ {TARGET_RATIO:.2f}×: {verdict}"
            )


def report_phases(results: dict) -> None:
    bare = results["bare"]
    print()
    print("Where the time goes, median ms (timestamps written by the system under test):")
    for series in results["portal"]:
        print(f"  {series.label}")
        for label, _, _ in PORTAL_PHASES:
            print(f"    {label:<74} {ms(series.median(label)):>7.1f}")
    print(f"  {bare.label}, for comparison")
    print(
        f"    {'connect → exec sent (TCP, handshake, auth, session)':<74}"
        f" {ms(bare.median('exec_sent')):>7.1f}"
    )
    print(
        f"    {'exec sent → command started on target':<74}"
        f" {ms(bare.median('exec_to_started')):>7.1f}"
    )
    for series in results["profiles"]:
        print()
        print(f"Instrumented runs ({series.runs}), median ms: {series.label}")
        for label in HORSE_PHASES:
            print(f"    {label:<74} {ms(series.median(label)):>7.1f}")


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs per path (50)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="warm-up runs per path and worker start (3)"
    )
    parser.add_argument(
        "--blocks", type=int, default=5, help="blocks alternating the worker classes (5)"
    )
    parser.add_argument(
        "--worker-class",
        action="append",
        choices=WORKER_CLASSES,
        help="RQ worker class for the portal runs; repeat for several (default: both)",
    )
    parser.add_argument(
        "--ansible-runs", type=int, default=50, help="ansible runs (~1.5 s each), 0 to skip"
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="instrumented runs inside the worker; auto: when a target is missed",
    )
    parser.add_argument("--profile-runs", type=int, default=20)
    args = parser.parse_args(argv)
    args.worker_class = list(dict.fromkeys(args.worker_class or WORKER_CLASSES))
    if args.runs < 2 or args.warmup < 0 or not 1 <= args.blocks <= args.runs:
        parser.error("need --runs ≥ 2, --warmup ≥ 0 and 1 ≤ --blocks ≤ --runs")
    return args


def _share(total: int, blocks: int, block: int) -> int:
    """Runs of ``total`` that fall in ``block`` when spread evenly over ``blocks``."""
    return total // blocks + (1 if block < total % blocks else 0)


def _missed(series: Series, bare: Series) -> bool:
    return any(
        _ratio(series, top_key, bare, base_key)[0] > TARGET_RATIO
        for top_key, base_key, _ in COMPARISONS
    )


def measure(args, portal: Portal, bare: Bare, ansible: Ansible | None, new_worker) -> dict:
    """Interleave the paths: blocks alternate worker classes; each portal run is followed
    by one run of every bare path; ansible runs close each block."""
    series = {wc: Series(label=f"portal, {wc}") for wc in args.worker_class}
    results: dict[str, Any] = {
        "portal": list(series.values()),
        "bare": Series(label="bare run_command"),
        "client": Series(label="bare paramiko SSHClient"),
        "reuse": Series(label="exec on an open connection"),
        "ansible": Series(label="ansible -m raw") if ansible else None,
        "profiles": [],
    }
    bare_paths = (("bare", bare.run_command), ("client", bare.sshclient), ("reuse", bare.reuse))
    for _ in range(args.warmup):
        for _, once in bare_paths:
            once()
    if ansible is not None:
        for _ in range(min(args.warmup, 2)):
            ansible.run()
    for block in range(args.blocks):
        for worker_class in args.worker_class:
            with new_worker(worker_class) as worker:
                for _ in range(args.warmup):
                    portal_run(portal, worker)
                for _ in range(_share(args.runs, args.blocks, block)):
                    series[worker_class].add(**portal_durations(portal_run(portal, worker)))
                    for key, once in bare_paths:
                        results[key].add(**once())
        if ansible is not None:
            for _ in range(_share(args.ansible_runs, args.blocks, block)):
                results["ansible"].add(**ansible.run())
        print(f"  block {block + 1}/{args.blocks} done", flush=True)

    missed = any(_missed(s, results["bare"]) for s in series.values())
    if args.profile == "always" or (args.profile == "auto" and missed):
        for worker_class in args.worker_class:
            with new_worker(worker_class) as worker:
                results["profiles"].append(
                    profile_portal(portal, worker, runs=args.profile_runs, warmup=args.warmup)
                )
    return results


def run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> None:
    database_url, redis_url = find_services(workdir, stack)
    recreate_database(database_url)
    stack.callback(drop_database, database_url)

    from pra.devtarget import start_local_target

    target = start_local_target(workdir / "target")
    stack.callback(target.stop)
    stamps = Stamps(workdir / "started.stamp")
    install_stamp_standin(target, stamps.path)

    env = bench_env(database_url, redis_url, workdir, target)
    os.environ.update(env)
    import django

    django.setup()
    # This process prints the figures; the product's INFO lines (paramiko, notify) stay out.
    logging.getLogger().setLevel(logging.WARNING)
    from django.core.management import call_command

    from portal.lib.redis import get_redis

    get_redis().flushdb()
    stack.callback(lambda: get_redis().flushdb())
    call_command("migrate", verbosity=0, interactive=False)
    portal = setup_portal(target, stamps)
    bare = Bare(target, stamps)
    stack.callback(bare.close)
    ansible = Ansible(target, stamps, workdir) if args.ansible_runs > 1 else None
    if ansible is not None and not ansible.available:
        print("ansible is not installed in this venv (make bench-pra installs it): skipped")
        ansible = None

    print(machine_line())
    print(load_line("at start"))
    print(
        f"{args.runs} measured runs per path after {args.warmup} warm-up runs (per worker "
        f"start for the portal), in {args.blocks} interleaved blocks; ansible: "
        f"{args.ansible_runs if ansible else 0} runs. Wire command {WIRE_COMMAND!r}, loopback "
        f"sshd, sudo {'on' if target.use_sudo else 'off'}, PRA_PREFLIGHT=0."
    )

    def new_worker(worker_class: str) -> WorkerProcess:
        log_path = workdir / f"worker-{worker_class}.log"
        return WorkerProcess(worker_class, dict(os.environ), log_path)

    results = measure(args, portal, bare, ansible, new_worker)
    print(load_line("at end"))
    report(results)
    report_phases(results)


def main(argv: list[str]) -> int:
    from portal.lib.localservices import ServiceError
    from pra.devtarget import DevTargetError

    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the worker, sshd and database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="pra-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            run(args, workdir, stack)
    except (BenchError, DevTargetError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
