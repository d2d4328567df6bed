"""portal.lib.jobs against a real Redis and a real RQ worker: enqueue once however many
callers race, "alive" until the job has run, enqueue-on-commit waits for the commit, and
the reaper lists only what it ended."""

import threading

import django_rq
import pytest
from django.db import transaction

from portal.lib import jobs

QUEUE = "default"


@pytest.fixture
def queue():
    q = django_rq.get_queue(QUEUE)
    q.empty()
    yield q
    q.empty()


def test_twenty_concurrent_enqueue_once_calls_queue_one_job(queue):
    start = threading.Barrier(20)
    won: list[bool] = []

    def call():
        start.wait()
        won.append(jobs.enqueue_once("portal.lib.jobs.job_alive", "x", queue=QUEUE,
                                     job_id="lib-once-1"))  # fmt: skip

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 19 + [True]
    assert queue.job_ids == ["lib-once-1"]
    assert jobs.job_alive("lib-once-1")


def test_a_job_is_alive_until_a_worker_ran_it_and_then_may_be_enqueued_again(queue):
    assert not jobs.job_alive("lib-alive-1")  # never enqueued
    jobs.enqueue("portal.lib.jobs.job_alive", "nothing", queue=QUEUE, job_id="lib-alive-1")
    assert jobs.job_alive("lib-alive-1")
    django_rq.get_worker(QUEUE).work(burst=True)
    assert not jobs.job_alive("lib-alive-1")  # finished
    # The guard of a first enqueue_once still holds: a deliberate re-run releases it.
    assert jobs.enqueue_once("portal.lib.jobs.job_alive", "x", queue=QUEUE, job_id="lib-alive-2")
    django_rq.get_worker(QUEUE).work(burst=True)
    assert not jobs.enqueue_once(
        "portal.lib.jobs.job_alive", "x", queue=QUEUE, job_id="lib-alive-2"
    )
    jobs.release_enqueue_guard("lib-alive-2")
    assert jobs.enqueue_once("portal.lib.jobs.job_alive", "x", queue=QUEUE, job_id="lib-alive-2")


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_waits_for_the_commit_and_a_rollback_enqueues_nothing(queue):
    with transaction.atomic():
        jobs.enqueue_on_commit("portal.lib.jobs.job_alive", 1, queue=QUEUE, job_id="lib-c-1")
        assert queue.job_ids == []
    assert queue.job_ids == ["lib-c-1"]
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic():
            jobs.enqueue_on_commit("portal.lib.jobs.job_alive", 2, queue=QUEUE, job_id="lib-c-2")
            1 / 0  # noqa: B018 - the transaction fails
    assert queue.job_ids == ["lib-c-1"]


def test_the_reaper_lists_only_what_it_ended():
    ended_elsewhere = {2}
    assert jobs.reap([1, 2, 3], lambda pk: pk not in ended_elsewhere) == [1, 3]
