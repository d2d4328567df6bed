"""bench/pra_latency.py's instrumented runs: timing wrappers inside the RQ worker.

``profiled_approvals`` makes approvals (in the bench process) enqueue
``bench.pra_profile.profiled_execute`` instead of ``pra.jobs.execute_action``;
the worker imports this module by that name and runs the real job under wrappers.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import BenchError  # noqa: E402 - after the path fix above
from bench.pra_portal import Portal, Series, WorkerProcess, portal_run  # noqa: E402

PROFILED_EXECUTE = "bench.pra_profile.profiled_execute"


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

    original_exec = ssh.Session.exec

    def session_exec(self, command, **kwargs):
        on_start = kwargs.get("on_start")

        def stamped() -> None:
            # The first exec is the action's; verify_action's probe execs again later.
            marks.setdefault("exec_sent", time.time())
            if on_start is not None:
                on_start()

        kwargs["on_start"] = stamped
        return original_exec(self, command, **kwargs)

    # execute_action opens the SSH session in a thread while the claim runs
    # (transport.open_exec_session), then sends the command on it (Session.exec).
    wrapped = [
        (connections["default"], "connect", "db_connect"),
        (actions, "claim_action", "claim"),
        (actions.execution, "record", "audit"),
        (live, "_send", "publish"),
        (transport, "open_exec_session", "connect"),
        (ssh, "load_private_key", "key_load"),
        (ssh, "_start", "tcp_handshake"),
        (actions, "finish_execution", "finish"),
        (pra.jobs, "verify_action", "verify"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, label in wrapped:
            stack.enter_context(mock.patch.object(owner, name, timed(label, getattr(owner, name))))
        stack.enter_context(mock.patch.object(ssh.Session, "exec", timed("exec", session_exec)))
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
            func_path = PROFILED_EXECUTE
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
    "open_exec_session total (in a thread, alongside the claim)",
    "  of which: load private key",
    "  of which: TCP connect + SSH handshake + host key check",
    "  of which: auth + open session",
    "claim and session both ready → exec sent (still_running check)",
    "exec sent → command started on target (sshd, pra-exec, sudo, pra-run)",
    "command started → Session.exec returned",
    "finish_execution (UPDATE, audit, live event)",
    "verify_action (probe over SSH; after COMPLETED, keeps the worker busy)",
)


def horse_breakdown(result: dict, bench_spans: list, t0: float, target_started: float) -> dict:
    marks, spans = result["marks"], result["spans"]
    claim = spans["claim"][0]
    claim_parts = [
        _within(spans.get(name, []), claim) for name in ("db_connect", "audit", "publish")
    ]
    connect = spans["connect"][0]
    start = spans["tcp_handshake"][0]
    session_exec = spans["exec"][0]
    approval = {name: end - begin for name, begin, end in bench_spans if begin >= t0}
    values = (
        approval.get("publish", 0.0),
        approval.get("enqueue", 0.0),
        claim[1] - claim[0],
        *claim_parts,
        claim[1] - claim[0] - sum(claim_parts),
        connect[1] - connect[0],
        _within(spans.get("key_load", []), connect),
        start[1] - start[0],
        connect[1] - start[1],
        marks["exec_sent"] - max(claim[1], connect[1]),
        target_started - marks["exec_sent"],
        session_exec[1] - target_started,
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
