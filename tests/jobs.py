"""Running queued jobs in tests: a real RQ worker, in burst mode, in this process."""

from __future__ import annotations

import django_rq

#: What remediation, incidents and notifications enqueue to (backups: ``"backups"``).
DEFAULT_QUEUES = ("pra", "default")


def run_jobs(*queues: str) -> None:
    """Drain ``queues`` (default: ``DEFAULT_QUEUES``) with a real RQ worker in burst mode
    (in-process, no fork: the jobs see this test's database connection and settings)."""
    # By import path: django_rq's type[Worker] hint leaves out rq 3's SimpleWorker.
    worker = django_rq.get_worker(*(queues or DEFAULT_QUEUES), worker_class="rq.SimpleWorker")
    worker.work(burst=True, with_scheduler=False)
