"""Retention: pruning runs past their rules, and recording off-site copies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backups import retention

if TYPE_CHECKING:
    from backups.storage import Storage
from backups.actions.common import _notify, logger
from backups.choices import (
    RestoreStatus,
    Trigger,
)
from backups.models import (
    BackupRun,
    BackupSource,
    RestoreRequest,
)
from backups.scrub import scrub
from portal.audit import Actor, record
from portal.choices import AuditEventType


@dataclass
class RetentionResult:
    source: str
    keep: list[int]
    delete: list[int]
    dry_run: bool


def apply_retention(
    source: BackupSource,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    by: User | Actor | str = "system:retention",
) -> RetentionResult:
    """Delete the files of backups past retention (never the newest verified one)."""
    from backups.storage import get_storage

    now = now or timezone.now()
    runs = list(BackupRun.objects.filter(source=source).stored().order_by("created"))
    # "Verified" for retention is a good backup: a suspiciously small one nobody accepted
    # never stands in for the previous good one.
    good = set(BackupRun.objects.filter(source=source).usable().values_list("pk", flat=True))
    candidates = [
        retention.Candidate(r.pk, r.created, r.pk in good)
        for r in runs
        if r.trigger != Trigger.SAFETY
    ]
    keep, delete = retention.plan(
        candidates,
        now=now,
        days=source.retention,
        weekly=source.keep_weekly,
        monthly=source.keep_monthly,
    )
    # Safety backups (one target each, taken before a restore) go by age alone: they never
    # stand in for the source's newest verified backup.
    cutoff = now - timedelta(days=source.retention)
    for r in runs:
        if r.trigger == Trigger.SAFETY:
            (delete if r.created < cutoff else keep).add(r.pk)
    result = RetentionResult(source.name, sorted(keep), sorted(delete), dry_run)
    if dry_run:
        return result
    storage = get_storage()
    busy = set(
        RestoreRequest.objects.filter(
            artifact__run__source=source,
            status__in=[RestoreStatus.APPROVED, RestoreStatus.RUNNING],
        ).values_list("artifact__run_id", flat=True)
    )
    for run in runs:
        if run.pk not in delete or run.pk in busy:
            continue  # kept, or a restore is about to read it
        with transaction.atomic():
            won = BackupRun.objects.filter(pk=run.pk, deleted_at__isnull=True).update(
                deleted_at=timezone.now()
            )
            if not won:
                continue
            record(
                AuditEventType.BACKUP_DELETED,
                actor=by,
                subject=run,
                details={
                    "source": source.name,
                    "created": run.created.isoformat(),
                    "path": run.artifact_path,
                    "bytes_stored": run.bytes_stored,
                    "reason": f"older than {source.retention} days and not a weekly/monthly keep",
                },
            )
            # Files go once the row says so: a crash in between leaves files, never a
            # row pointing at a backup that is gone.
            if run.artifact_path:
                transaction.on_commit(
                    partial(_delete_files, storage, run.artifact_path, bool(run.copied_at))
                )
    return result


def _delete_files(storage: Storage, run_key: str, copied: bool = False) -> None:
    """Remove a run's files after its row says so, from each copy; a store that refuses
    (an S3 object lock still holding them) keeps them, and says so: they go when the lock
    allows."""
    from backups.storage import StorageError, get_copy_storage

    stores = [storage] + ([get_copy_storage()] if copied else [])
    for store in [s for s in stores if s is not None]:
        try:
            store.delete_run(run_key)
        except StorageError as exc:
            logger.warning("retention: %s stays in %s: %s", run_key, store.location, exc)


def record_copy(run_id: int, *, location: str, error: str = "") -> BackupRun:
    """Record a run's second copy (or why it failed: notified)."""
    now = timezone.now()
    with transaction.atomic():
        BackupRun.objects.filter(pk=run_id).update(
            copy_location=location if not error else "",
            copied_at=now if not error else None,
            copy_error=scrub(error)[:4000],
        )
        run = BackupRun.objects.select_related("source").get(pk=run_id)
        if error:
            _notify(
                "BACKUP_FAILED",
                title=f"offsite copy of {run.source.name} FAILED (run #{run.pk})",
                body=f"Run #{run.pk} is stored locally but its copy to {location} failed: "
                f"{run.copy_error[:2000]}",
                subject=run,
                severity="critical",
            )
    return run
