"""Concurrency and crash safety against real PostgreSQL, Redis, RQ workers and sshd.
The end commands on the target (systemctl, ...) are recording stand-ins (no systemd here)."""

import subprocess
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from portal.lib.redis import get_redis
from pra import actions
from pra.choices import ActionStatus, FailureCause
from pra.models import PRAAction
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.helpers import child_env, restarts
from tests.stack import BASE_DIR, PYTHON, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _approved(operator, approver, host, action="restart_caddy", **params):
    obj = propose(operator, host, action, params or None)
    actions.approve_action(obj, by=approver)
    return obj


def test_eight_processes_racing_execute_it_exactly_once(
    operator, approver, target_host, shared_ssh_target
):
    assert connection.vendor == "postgresql"
    action = _approved(operator, approver, target_host)
    code = (
        "import django; django.setup()\n"
        "from pra.jobs import execute_action\n"
        f"print(execute_action({action.pk}))\n"
    )
    env = child_env(shared_ssh_target)
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", code],
            env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes.append(out.strip().splitlines()[-1])
    assert sorted(outcomes) == ["completed"] + ["not-claimed"] * 7
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED


def test_a_worker_killed_mid_run_leaves_the_action_failed_and_never_reruns(
    operator, approver, target_host, shared_ssh_target, settings
):
    shared_ssh_target.delay_command("systemctl", 30)
    action = _approved(operator, approver, target_host)
    worker = subprocess.Popen(
        [PYTHON, "manage.py", "rqworker", "pra", "--burst"],
        env=child_env(shared_ssh_target),
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: PRAAction.objects.get(pk=action.pk).status == ActionStatus.EXECUTING,
            60,
            "the worker to claim the action",
        )
    finally:
        kill_tree(worker.pid)  # the worker, and its work horse in a session of its own
        worker.wait()
    # The reaper runs later, once the run's heartbeat is older than the grace period.
    later = timezone.now() + timedelta(seconds=settings.PRA_HEARTBEAT_GRACE + 1)
    assert actions.reap_lost_runs(now=timezone.now()) == []  # still within grace
    assert actions.reap_lost_runs(now=later) == [action.pk]
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.WORKER_LOST
    # Nothing brings it back: no re-enqueue, and a stray job cannot claim it.
    assert actions.reconcile_approved() == []
    shared_ssh_target.delay_command("systemctl", 0)
    run_jobs()
    from pra.jobs import execute_action

    assert execute_action(action.pk) == "not-claimed"
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") <= 1


def test_redis_flushed_approved_action_is_reenqueued_and_runs_once(
    operator, approver, target_host, shared_ssh_target
):
    action = _approved(operator, approver, target_host)
    get_redis().flushdb()  # Redis restarted empty: the job is gone
    assert actions.reconcile_approved() == [action.pk]
    assert actions.reconcile_approved() == []  # the job exists again: no duplicate
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1


def test_reconciler_leaves_expired_approvals_alone(operator, approver, target_host):
    action = _approved(operator, approver, target_host)
    get_redis().flushdb()
    PRAAction.objects.filter(pk=action.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert actions.reconcile_approved() == []
    assert actions.expire_due() == [action.pk]
    action.refresh_from_db()
    assert action.status == ActionStatus.EXPIRED


def test_a_run_reaped_before_the_command_is_sent_sends_nothing(
    operator, approver, target_host, shared_ssh_target, monkeypatch
):
    """The reaper wins while the worker is still connecting: the worker must not exec."""
    from pra import jobs, transport

    action = _approved(operator, approver, target_host)
    real_open = transport.open_exec_session

    def slow_connect(host):
        session = real_open(host)
        # Meanwhile the reaper decided this run was lost.
        actions.reap_lost_runs(now=timezone.now() + timedelta(hours=1))
        return session

    monkeypatch.setattr(transport, "open_exec_session", slow_connect)
    assert jobs.execute_action(action.pk) == "claim-lost"
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.WORKER_LOST
    assert restarts(shared_ssh_target, "systemctl", "restart") == 0


def test_a_quiet_long_command_keeps_its_heartbeat(
    operator, approver, target_host, shared_ssh_target, settings, monkeypatch
):
    """A silent command longer than the grace period is not mistaken for a lost worker."""
    from pra import jobs

    monkeypatch.setattr(jobs, "HEARTBEAT_EVERY", 0.3)
    settings.PRA_HEARTBEAT_GRACE = 2
    shared_ssh_target.delay_command("systemctl", 5)
    action = _approved(operator, approver, target_host)
    outcome = []

    def run():
        from django.db import connections

        try:
            outcome.append(jobs.execute_action(action.pk))
        finally:
            connections.close_all()  # this thread's connection, so the test DB can be dropped

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(
            lambda: PRAAction.objects.get(pk=action.pk).status == ActionStatus.EXECUTING,
            30,
            "the claim",
        )
        # The reaper runs again and again until the 5 s command ends (the event waited
        # for: the runner finishing), seeing the heartbeat move past the 2 s grace.
        reaped, beats = [], set()
        while runner.is_alive():
            reaped += actions.reap_lost_runs()
            beats.add(PRAAction.objects.values_list("heartbeat_at", flat=True).get(pk=action.pk))
            runner.join(timeout=0.2)
        assert reaped == []
        assert len(beats) >= 5  # it did run quietly, on heartbeats, well past the grace
    finally:
        runner.join(timeout=60)
    assert outcome == ["completed"]


def test_disabling_a_host_stops_approved_actions(
    operator, approver, target_host, shared_ssh_target
):
    action = _approved(operator, approver, target_host)
    target_host.enabled = False
    target_host.save(update_fields=["enabled"])
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED  # not run; it expires in its window
    assert restarts(shared_ssh_target, "systemctl", "restart") == 0


def _in_threads(count, fn):
    """Run ``fn(i)`` in ``count`` threads released together; returns results (or errors)."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(i):
        try:
            barrier.wait(30)
            results[i] = fn(i)
        except Exception as exc:  # collected, asserted by the caller
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_twenty_concurrent_executes_of_a_vanished_job_enqueue_it_once(
    operator, approver, target_host, shared_ssh_target
):
    import django_rq

    from portal.models import AuditEvent

    action = _approved(operator, approver, target_host)
    get_redis().flushdb()  # Redis lost the job
    results = _in_threads(20, lambda i: actions.request_execution(action.pk, by=operator))
    assert not [r for r in results if isinstance(r, Exception)], results
    events = AuditEvent.objects.filter(
        subject_type="pra.praaction", subject_id=str(action.pk), event_type="PRA_REENQUEUED"
    )
    assert events.count() == 1
    assert django_rq.get_queue("pra").job_ids == [actions.execution_job_id(action.pk)]
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1


def test_concurrent_identical_proposals_end_on_one_action(operator, target_host):
    from portal.models import AuditEvent
    from pra.actions import Proposer

    proposers = [Proposer.rule("service:unbound"), Proposer.ai(operator), operator] * 4

    def propose_it(i):
        return actions.submit_proposal(
            action="restart_unbound", host="dns-1", params={}, by=proposers[i],
            rationale=f"unbound is inactive and clients time out on DNS lookups ({i})",
        )  # fmt: skip

    results = _in_threads(len(proposers), propose_it)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({r.action.pk for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert PRAAction.objects.count() == 1
    assert AuditEvent.objects.filter(event_type="PRA_PROPOSED").count() == 1
    joined = next(r for r in results if not r.created)
    assert joined.message.startswith(f"Not proposed again: action #{joined.action.pk} ")
    # Other parameters or another action are another proposal.
    other = propose(operator, target_host, "restart_container", {"name": "web-1"})
    assert propose(operator, target_host, "restart_container", {"name": "web-2"}).pk != other.pk
    assert propose(operator, target_host, "restart_container", {"name": "web-1"}).pk == other.pk
