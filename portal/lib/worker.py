"""RQ worker classes that keep /health truthful.

Two things rq leaves to chance, fixed here for every worker the portal runs:

- An idle rq worker heartbeats once per blocking wait, ``worker_ttl - 15`` s
  (405 s by default), so a healthy idle worker looks dead to anything that asks
  for a recent heartbeat. Unless ``--worker-ttl`` is given, these workers use
  ``RQ_WORKER_TTL`` (60 s: a heartbeat every 45 s).
- After a Redis ``FLUSHDB`` or a restart without persistence, a worker's
  registration is gone and it becomes invisible (``Worker.all`` no longer lists
  it) while it keeps serving its queues. Every heartbeat checks the
  registration and writes it again when it has vanished.
- ``SimpleWorker`` runs jobs in its own process and sends no heartbeat until the
  job ends; a thread heartbeats while a job runs.

Use ``--worker-class portal.lib.worker.SimpleWorker`` for the ``pra`` queue (no
fork: remediations start sooner) and the default ``portal.lib.worker.Worker``
(``RQ["WORKER_CLASS"]``) elsewhere.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import rq
from django.conf import settings
from rq import worker_registration
from rq.defaults import DEFAULT_WORKER_TTL

logger = logging.getLogger(__name__)


class _Registration:
    """Mixin: a short TTL by default and re-registration after a Redis flush."""

    def __init__(self, *args: Any, worker_ttl: int | None = None, **kwargs: Any) -> None:
        if worker_ttl in (None, DEFAULT_WORKER_TTL):
            worker_ttl = settings.RQ_WORKER_TTL
        super().__init__(*args, worker_ttl=worker_ttl, **kwargs)  # type: ignore[call-arg]
        self._heartbeat_lock = threading.Lock()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        with self._heartbeat_lock:
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
            if pipeline is None:
                self._register_again_if_lost(timeout)

    def _register_again_if_lost(self, timeout: int | None) -> None:
        connection = self.connection  # type: ignore[attr-defined]
        key = self.key  # type: ignore[attr-defined]
        if connection.sismember(worker_registration.REDIS_WORKER_KEYS, key):
            return
        logger.warning("worker %s: registration lost (Redis flushed?), registering again", key)
        with connection.pipeline() as pipe:
            pipe.hset(key, mapping=self.serialize())  # type: ignore[attr-defined]
            worker_registration.register(self, pipe)  # type: ignore[arg-type]
            pipe.expire(key, timeout or self.worker_ttl + 60)  # type: ignore[attr-defined]
            pipe.execute()


class Worker(_Registration, rq.Worker):
    """Forking worker (a work horse per job) with the fixes above."""


class SimpleWorker(_Registration, rq.SimpleWorker):
    """No-fork worker with the fixes above, heartbeating while a job runs."""

    def execute_job(self, job: Any, queue: Any) -> Any:
        done = threading.Event()
        every = max(1.0, self.worker_ttl / 4)

        def beat() -> None:
            while not done.wait(every):
                try:
                    self.heartbeat()
                except Exception:  # a missed beat is retried; the job must not die of it
                    logger.warning("worker %s: heartbeat failed", self.key, exc_info=True)

        thread = threading.Thread(target=beat, name="rq-heartbeat", daemon=True)
        thread.start()
        try:
            return super().execute_job(job, queue)
        finally:
            done.set()
            thread.join(timeout=5)
