"""RQ entry points for backups. Thin: they take ids and call backups.actions.

The tick (``tick``) is registered once in ``portal.cron`` and runs every
minute on the ``control`` queue, whose worker serves nothing long: it only
does quick database work (creates due schedule slots once each, reports
missed ones, reaps lost runs and restores, expires restores, checks
freshness and disk usage) and enqueues runs and the slower housekeeping
(sweeping crashed staging, hourly retention) on the ``backups`` queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rq import get_current_job

from backups import actions, faults, restore, runner, verify
from backups.choices import (
    DrillStatus,
    RestoreMode,
    RestoreStatus,
    RunStatus,
    SourceKind,
    Trigger,
    VerifyLevel,
)
from backups.disk import largest_consumers, usage
from backups.models import BackupDrill, BackupRun, BackupSource, RestoreRequest
from backups.sources import (
    KubernetesTransport,
    PostgresTransport,
    RedisTransport,
    SourceError,
    SourceTransport,
    transport_for,
)
from backups.storage import get_storage, storage_for

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0


class _Heartbeat:
    """Beats a run's heartbeat from a thread while its tool runs (even when it prints nothing).

    With ``alive``, only while ``alive()`` says the work is moving: a stalled
    tool stops the beats, so if its watchdog could not end it the reaper will.
    """

    def __init__(self, beat: Callable[[], None], alive: Callable[[], bool] | None = None) -> None:
        self._beat = beat
        self._alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_EVERY):
                if self._alive is None or self._alive():
                    self._beat()
        finally:
            connection.close()  # this thread's own database connection

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _job_id(default: str) -> str:
    job = get_current_job()
    return job.id if job is not None else default


def run_backup(run_id: int) -> str:
    """Claim a queued run, back it up, verify it, then apply its source's retention."""
    run = actions.claim_run(run_id, job_id=_job_id(actions.run_job_id(run_id)))
    if run is None:
        logger.info("backup run %s not claimed (already taken or finished)", run_id)
        return "not-claimed"
    return perform(run)


def perform(
    run: BackupRun,
    make_transport: Callable[[], SourceTransport] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> str:
    """Run a claimed (RUNNING) backup to its end; returns succeeded/failed/lost."""
    storage = get_storage()
    last = 0.0

    def progress(raw: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= settings.BACKUP_PROGRESS_INTERVAL:
            last = now
            actions.report_progress(run, raw)
            if on_progress is not None:
                on_progress(raw)

    def beat() -> None:
        BackupRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )

    activity = runner.Activity()
    stall = faults.stall_timeout(run.source)
    space = space_needed(run)

    def moving() -> bool:
        return activity.idle() < stall + HEARTBEAT_EVERY

    try:
        transport = make_transport() if make_transport else transport_for(run.source)
    except SourceError as exc:
        outcome = runner.RunOutcome(ok=False, error=str(exc), cause=exc.cause)
    else:
        with _Heartbeat(beat, moving):
            try:
                outcome = runner.execute(
                    run.storage_key, transport, storage, on_progress=progress,
                    activity=activity, stall_timeout=stall, space_needed=space,
                )  # fmt: skip
            except Exception as exc:  # a bug, not a tool failure: still end the run visibly
                logger.exception("backup run %s crashed", run.pk)
                outcome = runner.RunOutcome(
                    ok=False, error=f"{type(exc).__name__}: {exc}", cause=faults.FailureCause.CRASH
                )
    finished = actions.finish_run(run.pk, outcome)
    if finished is None:
        if outcome.ok:
            storage.delete_run(outcome.run_key)  # reaped meanwhile: these files are no backup
        return "lost"
    if not outcome.ok:
        return "failed"
    verify_run(run.pk)
    if run.trigger != Trigger.SAFETY:
        copy_run(run.pk)
        actions.apply_retention(run.source)
    return "succeeded"


def copy_run(run_id: int) -> str:
    """Copy a stored run's files to the second store (``BACKUP_COPY_TO``), manifest last.

    Each file is streamed from the primary and hashed on the way: what was sent must be
    the bytes whose SHA-256 the backup recorded (and verified), and the S3 upload checks
    its ETag and size.
    """
    from backups.storage import StorageError, get_copy_storage

    copy = get_copy_storage()
    run = BackupRun.objects.get(pk=run_id)
    if copy is None or run.status != RunStatus.SUCCEEDED or run.deleted_at is not None:
        return "no-copy"
    storage = get_storage()
    try:
        staging = copy.begin(run.artifact_path)
        try:
            for artifact in run.artifacts.all():
                sha = hashlib.sha256()
                with storage.open(artifact.key) as src:
                    out = staging.create(artifact.key.rsplit("/", 1)[1])
                    while data := src.read(1 << 20):
                        sha.update(data)
                        out.write(data)
                if sha.hexdigest() != artifact.sha256:
                    raise StorageError(f"{artifact.key} changed on the primary store")
            with storage.open(f"{run.artifact_path}/MANIFEST.json") as src:
                manifest = json.loads(src.read())
            staging.commit(manifest)
        except BaseException:
            staging.abort()
            raise
    except (StorageError, OSError, ValueError) as exc:
        actions.record_copy(run.pk, location=copy.location, error=str(exc))
        return "failed"
    actions.record_copy(run.pk, location=f"{copy.location}{run.artifact_path}")
    return "copied"


def space_needed(run: BackupRun) -> runner.SpaceNeeded | None:
    """What a run will need on the storage: the source's last stored size × the margin."""
    margin = settings.BACKUP_SPACE_MARGIN_PERCENT
    if not margin:
        return None
    last = BackupRun.objects.size_reference(run)
    if last is None or not last.bytes_stored:
        return None
    return runner.SpaceNeeded(
        last.bytes_stored * margin // 100,
        f"backup #{last.pk} stored {runner.human_bytes(last.bytes_stored)}, × {margin}%",
    )


def verify_run(run_id: int, by: str = "system:verifier", level: str = VerifyLevel.FULL) -> str:
    """Verify every file of a run (after each run, and on demand); full: every byte decoded."""
    run = BackupRun.objects.select_related("source").get(pk=run_id)
    if run.status != RunStatus.SUCCEEDED or run.deleted_at is not None:
        return "nothing-to-verify"
    storage = storage_for(run)
    checks = {a.pk: verify.verify_artifact(storage, a, level) for a in run.artifacts.all()}
    if storage.location != get_storage().location:
        for check in checks.values():
            check.detail += f" (read from the second copy, {storage.location})"
    run = actions.record_verification(run_id, checks, by=by, level=level)
    return run.verification


def _safety_transport(req: RestoreRequest, target) -> SourceTransport:
    source, databases = restore.safety_source(req.artifact, target)
    if isinstance(target, restore.PgTarget):
        return PostgresTransport(source, databases=databases)
    if isinstance(target, restore.RedisTarget):
        return RedisTransport(source)
    if source.kind == SourceKind.TERRAFORM:
        from backups.terraform import TerraformTransport

        return TerraformTransport(source)
    return KubernetesTransport(source)


def run_restore(restore_id: int) -> str:
    """Claim an approved restore; safety backup (when overwriting), restore, validate."""
    req = actions.claim_restore(restore_id, job_id=_job_id(actions.restore_job_id(restore_id)))
    if req is None:
        logger.info("restore %s not claimed (not approved, expired or taken)", restore_id)
        return "not-claimed"

    def beat() -> None:
        RestoreRequest.objects.filter(pk=req.pk, status=RestoreStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )

    with _Heartbeat(beat):
        return _restore(req)


def _restore(req: RestoreRequest) -> str:
    storage = storage_for(req.artifact.run)
    try:
        target = restore.parse_target(req.artifact, req.target)
        restore.check_artifact(storage, req.artifact)  # a missing key stops it here
        if req.mode == RestoreMode.OVERWRITE:
            actions.set_restore_phase(req, "safety_backup")
            safety = actions.create_safety_run(req)
            claimed = actions.claim_run(
                safety.pk, job_id=f"{actions.restore_job_id(req.pk)}-safety"
            )
            if claimed is not None:
                perform(claimed, lambda: _safety_transport(req, target))
            safety.refresh_from_db()
            actions.record_safety_backup(req, safety)
            if not safety.usable:
                actions.finish_restore(
                    req.pk,
                    ok=False,
                    report={"safety_run": safety.pk},
                    error=f"safety backup #{safety.pk} did not succeed and verify "
                    f"({safety.status}, {safety.verification}); nothing was changed. "
                    f"{safety.error}",
                )
                return "failed"
        actions.set_restore_phase(req, "restoring")
        started = time.monotonic()
        report = restore.run_restore(target, storage, req.artifact, req.mode)
        # What a drill is for: the real time a restore of this backup takes.
        report["restore_seconds"] = round(time.monotonic() - started, 3)
        if req.safety_run_id:
            report["safety_run"] = req.safety_run_id
    except restore.RestoreError as exc:
        actions.finish_restore(req.pk, ok=False, report={}, error=str(exc))
        return "failed"
    except Exception as exc:
        logger.exception("restore %s crashed", req.pk)
        actions.finish_restore(req.pk, ok=False, report={}, error=f"{type(exc).__name__}: {exc}")
        return "failed"
    error = "" if report["ok"] else "validation found a mismatch (see the report)"
    actions.finish_restore(req.pk, ok=report["ok"], report=report, error=error)
    return "succeeded" if report["ok"] else "failed"


def run_drill(drill_id: int, on_step=None) -> str:
    """Claim a queued restore drill and run it (the newest good backup into the drill target)."""
    drill = actions.claim_drill(drill_id, job_id=_job_id(actions.drill_job_id(drill_id)))
    if drill is None:
        logger.info("drill %s not claimed (already taken or finished)", drill_id)
        return "not-claimed"
    return perform_drill(drill, on_step)


def perform_drill(drill, on_step=None) -> str:
    from backups import drills

    def beat() -> None:
        BackupDrill.objects.filter(pk=drill.pk, status=DrillStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )

    if drill.run is None:
        actions.finish_drill(
            drill.pk, report={}, error=f"{drill.source.name} has no good backup to drill"
        )
        return "failed"
    with _Heartbeat(beat):
        try:
            report = drills.perform(
                drill.source, drill.run, storage_for(drill.run),
                sample=settings.BACKUP_DRILL_SAMPLE_TABLES, on_step=on_step,
            )  # fmt: skip
            error = "" if report["ok"] else "validation found a mismatch (see the report)"
        except restore.RestoreError as exc:
            report, error = {}, str(exc)
        except Exception as exc:  # a bug: still end the drill visibly
            logger.exception("drill %s crashed", drill.pk)
            report, error = {}, f"{type(exc).__name__}: {exc}"
    finished = actions.finish_drill(drill.pk, report=report, error=error)
    return "lost" if finished is None else ("succeeded" if finished.good else "failed")


def reap_lost_restores(now=None) -> list[int]:
    """FAIL restores left RUNNING by a worker that died (no heartbeat within the grace)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BACKUP_HEARTBEAT_GRACE)
    lost = []
    for pk in RestoreRequest.objects.filter(
        status=RestoreStatus.RUNNING, heartbeat_at__lt=cutoff
    ).values_list("pk", flat=True):
        if actions.finish_restore(pk, ok=False, report={}, error="worker lost mid-restore"):
            lost.append(pk)
    return lost


def watch_disks() -> list[str]:
    alerted = []
    for path in settings.BACKUP_DISK_WATCH_PATHS:
        try:
            found = usage(path)
        except OSError:
            continue  # not there (yet): the storage directory is created by the first backup
        if actions.record_disk_usage(path, found.percent, partial(largest_consumers, path)):
            alerted.append(path)
    return alerted


HOUSEKEEPING_JOB = "backups-housekeeping"
RETENTION_JOB = "backups-retention"


def _enqueue_once(func, job_id: str) -> bool:
    """Put ``func`` on the backups queue unless its job is already waiting or running."""
    import django_rq

    if actions.job_alive(job_id):
        return False
    django_rq.get_queue("backups").enqueue(func, job_id=job_id, result_ttl=3600)
    return True


def housekeeping() -> list[str]:
    """Sweep staging left by crashed runs (files: slower than the tick's database work)."""
    running = {
        r.storage_key
        for r in BackupRun.objects.select_related("source").filter(status=RunStatus.RUNNING)
    }
    return get_storage().sweep_incomplete(older_than=settings.BACKUP_HEARTBEAT_GRACE, keep=running)


def retention_all(now=None) -> dict[str, list[int]]:
    """Hourly retention of every enabled source."""
    now = now or timezone.now()
    return {
        s.name: actions.apply_retention(s, now=now).delete
        for s in BackupSource.objects.filter(enabled=True)
    }


def tick(now=None) -> dict:
    """Every minute, on the control queue: quick database work only; files go to workers.

    Schedule (newest due slot per source), report missed slots, reap, expire,
    check freshness and disk usage; sweeping and hourly retention are
    enqueued on the backups queue (once: a second copy is never queued).
    """
    now = now or timezone.now()
    result = {
        "scheduled": actions.schedule_due(now),
        "missed": actions.report_missed(now),
        "reaped": actions.reap_lost_runs(now),
        "requeued": actions.reconcile_queued(now),
        "expired_restores": actions.expire_restores(now),
        "lost_restores": reap_lost_restores(now),
        "drills": actions.schedule_drills(now),
        "lost_drills": actions.reap_lost_drills(now),
        "disk_alerts": watch_disks(),
        "freshness": actions.check_freshness(now),
        "housekeeping": _enqueue_once(housekeeping, HOUSEKEEPING_JOB),
    }
    if now.minute == 5:
        result["retention"] = _enqueue_once(retention_all, RETENTION_JOB)
    return result
