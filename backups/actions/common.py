"""Shared pieces of the backup actions: errors, job ids, compare-and-swap moves,
announcements, notifications and enqueue-on-commit."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Model

from backups.choices import (
    RESTORE_TRANSITIONS,
    RUN_TRANSITIONS,
)
from backups.models import (
    BackupRun,
    RestoreRequest,
)
from backups.scrub import last_lines, scrub
from portal.audit import Actor
from portal.choices import LiveEventKind
from portal.errors import RequestRefused
from portal.lib import jobs
from portal.lib.permissions import require_perm
from portal.lib.transitions import compare_and_swap
from portal.live import LiveEvent, publish

logger = logging.getLogger("backups.actions")


RUN_PERMISSION = "portal.execute_action"


PLAN_PERMISSION = "portal.propose_action"


RUN_JOB = "backups.jobs.run_backup"


VERIFY_JOB = "backups.jobs.verify_run"


RESTORE_JOB = "backups.jobs.run_restore"


class BackupError(RequestRefused):
    """A refused backup or restore request."""


def run_job_id(run_id: int) -> str:
    return f"backup-run-{run_id}"


def restore_job_id(restore_id: int) -> str:
    return f"backup-restore-{restore_id}"


def _move_run(run_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(BackupRun, run_id, current, new, RUN_TRANSITIONS, **fields)


def _move_restore(restore_id: int, current: str, new: str, **fields: Any) -> bool:
    return compare_and_swap(RestoreRequest, restore_id, current, new, RESTORE_TRANSITIONS, **fields)


def run_event(run: BackupRun, summary: str = "", **data: Any) -> LiveEvent:
    """The live event of a run (small, declared shape: see ``portal.live.LiveEvent``)."""
    return LiveEvent(
        kind=LiveEventKind.BACKUP_RUN,
        subject_type="backups.backuprun",
        subject_id=str(run.pk),
        status=run.status,
        summary=summary[:300],
        data={
            "source": run.source.name,
            "kind": run.source.kind,
            "trigger": run.trigger,
            "progress_bytes": run.progress_bytes,
            "bytes_stored": run.bytes_stored,
            "verification": run.verification,
            **data,
        },
    )


def _announce_run(run: BackupRun, summary: str = "", **data: Any) -> None:
    publish(run_event(run, summary, **data))


def _announce_restore(obj: RestoreRequest, summary: str = "", **data: Any) -> None:
    publish(
        LiveEvent(
            kind=LiveEventKind.BACKUP_RUN,
            subject_type="backups.restorerequest",
            subject_id=str(obj.pk),
            status=obj.status,
            summary=summary[:300],
            data={"target": obj.target_name, "mode": obj.mode, "phase": obj.phase, **data},
        )
    )


def _require_perm(user: User | None, perm: str, what: str) -> None:
    require_perm(user, perm, what, BackupError)


def _enqueue(func_path: str, obj_id: int, job_id: str) -> None:
    jobs.enqueue(
        func_path, obj_id, queue="backups", job_id=job_id, result_ttl=86400,
        failure_ttl=7 * 86400,
    )  # fmt: skip


def _enqueue_on_commit(func_path: str, obj_id: int, job_id: str) -> None:
    transaction.on_commit(lambda: _enqueue(func_path, obj_id, job_id))


def _actor(by: User | Actor | str) -> Actor:
    return Actor.of(by)


# Listed by name in a missed-slot report; beyond this only counted.
MISSED_LISTED = 5


# Counting skipped slots stops here (a per-minute schedule off for weeks).
MISSED_COUNTED = 10000


def _due(cron: str, since: datetime, now: datetime) -> tuple[datetime | None, list[datetime], int]:
    """(newest slot in (since, now] or None, the older skipped ones listed, how many skipped)."""
    base = now.replace(microsecond=0) + timedelta(seconds=1)
    newest: datetime = croniter(cron, base).get_prev(type(now))
    if newest <= since or newest > now:
        return None, [], 0
    listed: list[datetime] = []
    count = 0
    it = croniter(cron, since)
    while count < MISSED_COUNTED:
        slot: datetime = it.get_next(type(now))
        if slot >= newest:
            break
        count += 1
        if len(listed) < MISSED_LISTED:
            listed.append(slot)
    return newest, listed, count


def _notify(
    kind: str, *, title: str, body: str, subject: Model | tuple[str, str] | None, severity: str
) -> None:
    """Send through the portal's notification channels (inside the caller's transaction).

    Always also a log line, so a portal without channels configured still says it.
    """
    log = logger.error if severity == "critical" else logger.warning
    transaction.on_commit(lambda: log("%s: %s", title, body[:500]))
    try:
        from portal import notify
    except ImportError:  # the notification channels are not there yet: the log line it is
        return
    notify.notify(kind, title=title, body=body, subject=subject, severity=severity)


ALERT_STDERR_LINES = 10


def notify_failure(run: BackupRun, what: str = "backup") -> None:
    """Tell people a backup (or its verification) failed, and why; call inside the transaction.

    The body names the classified cause and ends with the tool's last stderr lines,
    scrubbed of secrets (``backups.scrub``).
    """
    cause = f": {run.get_failure_cause_display()}" if run.failure_cause else ""
    said = last_lines(run.stderr, ALERT_STDERR_LINES) if what == "backup" else []
    body = (
        f"Source {run.source.name}, run #{run.pk}, trigger {run.trigger}"
        + (f", cause {run.failure_cause} ({run.get_failure_cause_display()})" if cause else "")
        + f": {scrub(run.error or run.verify_detail or 'see the run')[:2000]}"
    )
    if said:
        body += "\n\nLast lines the tool wrote to stderr:\n" + "\n".join(said)
    _notify(
        "BACKUP_FAILED",
        title=f"{what} of {run.source.name} FAILED (run #{run.pk}){cause}",
        body=body,
        subject=run,
        severity="critical",
    )


job_alive = jobs.job_alive
