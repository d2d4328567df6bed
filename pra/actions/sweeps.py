"""Periodic repairs: lost runs reaped, approved actions re-enqueued, stale approvals expired,
actions waiting for a maintenance window released (or expired) at its opening."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from pra.actions.approval import expire_action
from pra.actions.common import _ensure_enqueued, logger
from pra.actions.execution import finish_execution
from pra.actions.windows import open_windows, release_one
from pra.catalog import get_spec
from pra.choices import ActionStatus, FailureCause
from pra.models import PRAAction


def reap_lost_runs(now: datetime | None = None) -> list[int]:
    """FAIL (worker lost) every EXECUTING action whose worker stopped beating. Never re-runs."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.PRA_HEARTBEAT_GRACE)
    reaped = []
    candidates = PRAAction.objects.filter(status=ActionStatus.EXECUTING).values_list(
        "pk", "heartbeat_at", "started_at", "action"
    )
    for pk, beat, started, name in candidates:
        overdue = (
            started is not None
            and started + timedelta(seconds=get_spec(name).timeout) + grace < now
        )
        last_sign = beat or started
        silent = last_sign is None or last_sign + grace < now
        if not (overdue or silent):
            continue
        detail = "no heartbeat from the worker" if silent else "ran past its timeout"
        obj = finish_execution(pk, cause=FailureCause.WORKER_LOST, detail=detail)
        if obj is not None:
            reaped.append(pk)
    return reaped


def reconcile_approved(now: datetime | None = None) -> list[int]:
    """Re-enqueue APPROVED actions whose job vanished (Redis flush/restart) while still valid."""
    now = now or timezone.now()
    requeued = []
    for obj in PRAAction.objects.filter(status=ActionStatus.APPROVED, expires_at__gt=now):
        if _ensure_enqueued(obj):
            requeued.append(obj.pk)
    return requeued


def expire_due(now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    due = list(
        PRAAction.objects.filter(status=ActionStatus.APPROVED, expires_at__lte=now).values_list(
            "pk", flat=True
        )
    ) + list(
        PRAAction.objects.filter(
            status=ActionStatus.PROPOSED,
            created__lte=now - timedelta(seconds=settings.PRA_PROPOSAL_TTL),
        ).values_list("pk", flat=True)
    )
    return [pk for pk in due if expire_action(pk)]


def release_waiting(now: datetime | None = None) -> dict[str, list[int]]:
    """Windows that open now take their pre-maintenance backups; then every WAITING action
    whose opening came is released, kept waiting (with the reason shown), voided or
    expired (``pra.actions.windows.release_one``). None waits past its window's close."""
    now = now or timezone.now()
    outcome: dict[str, list[int]] = {"opened": open_windows(now)}
    due = PRAAction.objects.filter(
        status=ActionStatus.WAITING, window_opens_at__lte=now
    ).values_list("pk", flat=True)
    orphans = PRAAction.objects.filter(status=ActionStatus.WAITING, window__isnull=True)
    for pk in sorted({*due, *orphans.values_list("pk", flat=True)}):
        try:
            result = release_one(pk, now)
        except Exception:
            # One bad row must not stop the sweep's other repairs (reaper, expiry).
            logger.exception("releasing waiting action %s failed; retried next sweep", pk)
            result = "error"
        outcome.setdefault(result, []).append(pk)
    return outcome
