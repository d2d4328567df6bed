"""The backups part of the dashboard: restores waiting for signatures (the inbox), sources
that need attention (failing, stale, never backed up, missed slots, failed or slow restore
drills, second copies that failed), runs in progress.

The panel costs the same queries whatever the number of sources: the newest runs and
drills of every source are picked by subqueries in one query and read with one
``in_bulk`` each."""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone

from backups.choices import DrillStatus, RestoreStatus, RunStatus, Verification
from backups.models import BackupDrill, BackupRun, BackupSource, RestoreRequest, fresh_since
from portal import approvals
from portal.dashboard import INBOX_LIMIT, ApprovalItem, approval_items, approvals_source, panel

RESTORE_BADGE: dict[str, str] = {RestoreStatus.SUCCEEDED: "ok", RestoreStatus.FAILED: "bad"}


@approvals_source
def restore_approvals(request) -> list[ApprovalItem]:
    waiting = list(
        RestoreRequest.objects.select_related("artifact__run__source")
        .filter(status=RestoreStatus.PLANNED)
        .order_by("created")[:INBOX_LIMIT]
    )
    may_reject = request.user.has_perm(approvals.APPROVE_PERMISSION)

    def build(req, signers, can_sign, why_not, rule) -> ApprovalItem:
        return ApprovalItem(
            key=f"restore-{req.pk}",
            kind="Restore",
            title=f"#{req.pk} {req.artifact.run.source.name} {req.artifact.component} → "
            f"{req.target_name} ({req.get_mode_display().lower()})",
            url=reverse("admin:backups_restorerequest_change", args=[req.pk]),
            impact=req.approval_impact,
            created=req.created,
            requester=req.requester_label,
            signers=signers,
            required=rule.required_approvals,
            can_sign=can_sign,
            can_reject=may_reject,
            why_not=why_not,
            form={
                "can_sign": can_sign,
                "can_reject": may_reject,
                "approve_url": reverse("admin:backups_restorerequest_approve", args=[req.pk]),
                "reject_url": reverse("admin:backups_restorerequest_reject", args=[req.pk]),
                "fingerprint": req.approval_fingerprint(),
                "confirm_text": req.approval_confirmation_text,
                "rule": rule,
                "approve_label": "Approve the overwrite" if rule.require_confirmation else "",
            },
        )

    return approval_items(request, waiting, build=build)


def _newest(runs) -> Subquery:
    runs = runs.filter(source=OuterRef("pk"), restore__isnull=True)
    return Subquery(runs.order_by("-created").values("pk")[:1])


def _newest_drill(drills, order: str = "-created") -> Subquery:
    return Subquery(drills.filter(source=OuterRef("pk")).order_by(order).values("pk")[:1])


def _drill_problem(row: dict, source, now) -> tuple[str, str]:
    """(badge kind, words) about a source's restore drills, or ("", "")."""
    drill, good = row["drill"], row["good_drill"]
    if drill is not None and drill.status == DrillStatus.FAILED:
        return "bad", f"last drill FAILED: {(drill.error or 'failed').splitlines()[0][:120]}"
    if drill is not None and drill.met_target is False:
        return "bad", (
            f"last drill over its RTO target ({drill.rto_seconds or 0:.0f} s > "
            f"{drill.rto_target_seconds or 0:.0f} s)"
        )
    if source.drill_target_id:
        due = now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS)
        if source.created < due and (good is None or good.finished_at < due):
            return "warn", f"no good drill in {settings.BACKUP_DRILL_FRESH_DAYS} days"
    return "", ""


def _problem(row: dict, fresh) -> tuple[str, str]:
    """(badge kind, words) of what is wrong with a source, or ("", "") when nothing is."""
    last, latest = row["last"], row["latest"]
    if row["failed"]:
        return "bad", f"last run FAILED: {row['failed'].get_failure_cause_display() or 'failed'}"
    if latest is not None and latest.verification == Verification.FAILED:
        return "bad", "last backup failed verification"
    if latest is not None and latest.awaiting_acceptance:
        return "bad", "much smaller than the last good one: accept or investigate"
    if last is None:
        if latest is not None and latest.verification == Verification.PENDING:
            return "warn", "first backup not verified yet"
        return "bad", "no good backup yet"
    if last.created < fresh:
        return "bad", f"stale: no good backup in {settings.BACKUP_FRESH_HOURS} h"
    if row["missed"]:
        return "warn", "missed slot"
    if latest is not None and latest.verification == Verification.PENDING:
        return "warn", "newest not verified yet"
    return "", ""


@panel
def backups_panel(request) -> dict:
    now = timezone.now()
    fresh = fresh_since(now)
    finished = BackupRun.objects.filter(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED])
    drills = BackupDrill.objects.filter(status__in=[DrillStatus.SUCCEEDED, DrillStatus.FAILED])
    sources = list(
        BackupSource.objects.annotate(
            # The good backup (BackupRun.objects.usable: the rule freshness and restores use).
            last_ok_id=_newest(BackupRun.objects.usable()),
            latest_done_id=_newest(finished),
            drill_id=_newest_drill(drills),
            good_drill_id=_newest_drill(
                drills.filter(status=DrillStatus.SUCCEEDED, met_target=True), "-finished_at"
            ),
        ).order_by("name")
    )
    ids = {s.last_ok_id for s in sources} | {s.latest_done_id for s in sources}
    runs = BackupRun.objects.in_bulk([pk for pk in ids if pk])
    drill_ids = {s.drill_id for s in sources} | {s.good_drill_id for s in sources}
    drill_rows = BackupDrill.objects.in_bulk([pk for pk in drill_ids if pk])
    rows = []
    for source in sources:
        last = runs.get(source.last_ok_id)
        latest = runs.get(source.latest_done_id)
        row: dict[str, Any] = {
            "source": source,
            "last": last,
            "latest": latest,
            "ok": bool(last and last.created >= fresh),
            # The newest finished run failed: say why (cause, as classified).
            "failed": latest if latest and latest.status == RunStatus.FAILED else None,
            # A slot missed within the freshness window stays visible.
            "missed": bool(source.missed_at and source.missed_at >= fresh),
            "drill": drill_rows.get(source.drill_id),
            "good_drill": drill_rows.get(source.good_drill_id),
            # The good backup's second copy (BACKUP_COPY_TO) failed: one copy only.
            "copy_failed": last if last is not None and last.copy_error else None,
        }
        row["problem_kind"], row["problem"] = _problem(row, fresh)
        row["drill_kind"], row["drill_problem"] = _drill_problem(row, source, now)
        rows.append(row)
    running = list(
        BackupRun.objects.select_related("source")
        .filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        .order_by("created")[:20]
    )
    restores = list(
        RestoreRequest.objects.select_related("artifact__run__source")
        .exclude(status__in=[RestoreStatus.REJECTED, RestoreStatus.EXPIRED])
        .order_by("-created")[:5]
    )
    for restore in restores:
        # A display-only attribute the panel template reads; models declare no such field.
        restore.badge = RESTORE_BADGE.get(restore.status, "warn")  # type: ignore[attr-defined]
    return {
        "template": "backups/panel.html",
        "area": "inbox",
        "order": 30,
        "sources": rows,
        "attention": [
            row
            for row in rows
            if row["source"].enabled
            and (row["problem"] or row["drill_kind"] == "bad" or row["copy_failed"])
        ],
        "failed_drills": [row for row in rows if row["drill_kind"] == "bad"],
        "missed": [row for row in rows if row["missed"]],
        "running": running,
        "restores": restores,
        "failed_restores": [r for r in restores if r.status == RestoreStatus.FAILED],
        "runs_url": reverse("admin:backups_backuprun_changelist"),
        "sources_url": reverse("admin:backups_backupsource_changelist"),
    }
