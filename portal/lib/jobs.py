"""Putting work on the RQ queues: one copy of enqueue-on-commit, "is it still there?",
the enqueue-once guard and the reaper loop, for every app.

Jobs receive primary keys (JSON-safe arguments), never model instances. Enqueueing
goes through django_rq's queue, which (``RQ["COMMIT_MODE"] = "on_db_commit"``)
already waits for the surrounding transaction; ``enqueue_on_commit`` says so
explicitly for callers that build the arguments inside the transaction.
(NetBox's ``Job.enqueue`` and ``JobRunner`` are the model: one place knows how a
job is put on a queue and how a lost one is found.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from django.db import transaction

# What a job may receive: JSON round-trippable values only.
JobArg = str | int | float | bool | None | list[int] | list[str] | dict[str, str]

# How long a "someone is enqueueing this job" mark lives in Redis. It only has to
# outlast the gap between "the job is not in Redis" and "the job is in Redis".
ENQUEUE_GUARD_SECONDS = 30


def enqueue(
    func_path: str,
    *args: JobArg,
    queue: str,
    job_id: str,
    result_ttl: int = 3600,
    failure_ttl: int | None = None,
    job_timeout: int | None = None,
) -> None:
    """Put ``func_path(*args)`` on ``queue`` as ``job_id`` (inside a transaction: on commit)."""
    import django_rq

    options: dict[str, int] = {"result_ttl": result_ttl}
    if failure_ttl is not None:
        options["failure_ttl"] = failure_ttl
    if job_timeout is not None:
        options["job_timeout"] = job_timeout
    django_rq.get_queue(queue).enqueue(func_path, *args, job_id=job_id, **options)


def enqueue_on_commit(
    func_path: str,
    *args: JobArg,
    queue: str,
    job_id: str,
    result_ttl: int = 3600,
    failure_ttl: int | None = None,
    job_timeout: int | None = None,
) -> None:
    """``enqueue`` once the current transaction commits (at once outside one)."""

    def go() -> None:
        enqueue(
            func_path,
            *args,
            queue=queue,
            job_id=job_id,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
            job_timeout=job_timeout,
        )

    transaction.on_commit(go)


def job_alive(job_id: str) -> bool:
    """Is the RQ job still waiting or running (False when Redis lost it or it ended)?"""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from portal.lib.redis import get_redis

    try:
        status = Job.fetch(job_id, connection=get_redis()).get_status()
    except NoSuchJobError:
        return False
    return status in {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def _guard_key(job_id: str) -> str:
    return f"enqueue-guard:{job_id}"


def take_enqueue_guard(job_id: str) -> bool:
    """True for exactly one of any number of concurrent callers (Redis SET NX)."""
    from portal.lib.redis import get_redis

    return bool(get_redis().set(_guard_key(job_id), "1", nx=True, ex=ENQUEUE_GUARD_SECONDS))


def release_enqueue_guard(job_id: str) -> None:
    """Let the next ``enqueue_once`` of ``job_id`` through (a deliberate new run)."""
    from portal.lib.redis import get_redis

    get_redis().delete(_guard_key(job_id))


def enqueue_once_with(job_id: str, put: Callable[[], None]) -> bool:
    """Call ``put`` (which enqueues ``job_id``) unless the job is alive or another caller
    is enqueueing it right now; True if this caller enqueued it.

    Checking "is the job in Redis?" and then enqueueing is a race (20 concurrent
    "execute" calls enqueued one action 7 times): the SET NX guard lets one caller
    through; the others see either the guard or the job.
    """
    if job_alive(job_id) or not take_enqueue_guard(job_id):
        return False
    put()
    return True


def enqueue_once(
    func_path: str,
    *args: JobArg,
    queue: str,
    job_id: str,
    result_ttl: int = 3600,
    failure_ttl: int | None = None,
    job_timeout: int | None = None,
) -> bool:
    """``enqueue`` unless ``job_id`` is alive or being enqueued (see ``enqueue_once_with``)."""

    def put() -> None:
        enqueue(
            func_path,
            *args,
            queue=queue,
            job_id=job_id,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
            job_timeout=job_timeout,
        )

    return enqueue_once_with(job_id, put)


K = TypeVar("K")


def reap(candidates: Iterable[K], end: Callable[[K], object]) -> list[K]:
    """The reaper loop: ``end`` each candidate (a compare-and-swap move to a classified
    failure that returns something truthy only for the caller that made it) and list
    the ones this caller ended. A candidate another sweep or the worker itself ended
    first is skipped, so two reapers never double an event."""
    return [candidate for candidate in candidates if end(candidate)]
