"""Every periodic job is registered once, and the ticks and sweeps run on "control".

A real rqcron process reads portal/cron.py here and enqueues what is due at start,
so the queue each job lands on is observed, not read back from our own constants.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from rq import Queue

from portal.lib.redis import get_redis
from tests.stack import BASE_DIR, stack_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CONTROL_JOBS = {
    "portal.jobs.resend_stuck_notifications",
    "pra.jobs.sweep",
    "incidents.jobs.sweep",
    "portal.audit.anchors.periodic_anchor",
}


def test_rqcron_puts_the_sweeps_on_the_control_queue(tmp_path):
    """rqcron enqueues interval jobs when it starts: the sweeps must be on "control",
    never behind remediations or backups (a dead pra worker must not stop the reaper)."""
    redis = get_redis()
    log = (tmp_path / "rqcron.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "rqcron", "portal.cron"],
        env=stack_env(), cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    control = Queue("control", connection=redis)

    def queued() -> set[str]:
        return {job.func_name for job in control.get_jobs()}

    try:
        wait_for(lambda: CONTROL_JOBS <= queued(), 30, "rqcron to enqueue the sweeps")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    for other in ("pra", "default", "backups"):
        names = {job.func_name for job in Queue(other, connection=redis).get_jobs()}
        assert not (names & CONTROL_JOBS), f"a sweep was enqueued on {other}: {names}"
