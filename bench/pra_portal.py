"""bench/pra_latency.py's portal path: the worker, propose → approve → COMPLETED, its stamps.

Also the figures' containers (``Series``) and the target's start stamps
(``Stamps``), which every path shares.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import (  # noqa: E402 - after the path fix above
    BenchError,
    log_tail,
    spawn_logged,
    stop_processes,
    wait_for,
)

WIRE_COMMAND = "restart_unbound"
RATIONALE = "benchmark run: unbound restart to measure approval to execution latency"


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
        self.proc = spawn_logged(
            ["manage.py", "rqworker", "pra", "--worker-class", self.worker_class, "--name", name],
            self.env,
            self.log_path,
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
        if proc is not None:
            # Warm shutdown (finish the current job), then SIGKILL its session: the horse too.
            stop_processes([proc])

    def log_tail(self) -> str:
        return log_tail([self.log_path], 25)


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
