"""Maintenance windows and change freezes: the calendar, the gate, and the audited edits.

- ``openings``/``next_opening``: when a window is open, in UTC, from its recurrence
  (cron or weekday + time) read in its own time zone.
- ``gate_for``: what an approval does with an action now: run, wait for a window
  opening, or be refused (a freeze, or no window soon enough).
- ``save_window``/``delete_window``/``save_freeze``/``delete_freeze``: the only way
  windows and freezes change (administrators; one audit event per change).

The moves of waiting actions (release at the opening, expiry, refusal) are in
``pra.actions.windows``; the periodic work runs in the pra sweep (``pra.jobs.sweep``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.errors import RequestRefused
from portal.lib.permissions import require_perm
from portal.lib.validation import full_clean_or_refuse
from pra.models import ChangeFreeze, Host, MaintenanceWindow, PRAAction

MANAGE_PERMISSION = "portal.manage_portal"

WINDOW_FIELDS = ("name", "description", "cron", "weekday", "start_time", "duration_minutes",
                 "timezone", "host_tag", "enabled")  # fmt: skip
FREEZE_FIELDS = ("reason", "starts_at", "ends_at")


class WindowError(RequestRefused):
    """A refused change of a window or freeze, or an action the windows refuse."""


# --- the calendar ----------------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """One occurrence of a window, in UTC."""

    window: MaintenanceWindow
    opens_at: datetime
    closes_at: datetime

    @property
    def label(self) -> str:
        """'Sun 02:00 UTC (2026-12-06)': the start in the window's own time zone."""
        local = self.opens_at.astimezone(ZoneInfo(self.window.timezone))
        return f"{local:%a %H:%M} {local.tzname()} ({local:%Y-%m-%d})"

    def is_open(self, now: datetime) -> bool:
        return self.opens_at <= now < self.closes_at


def _starts(window: MaintenanceWindow, since: datetime, until: datetime) -> Iterator[datetime]:
    """Start times (UTC, ascending) in [since, until)."""
    tz = ZoneInfo(window.timezone)
    if window.cron.strip():
        from croniter import croniter

        it = croniter(window.cron.strip(), since.astimezone(tz) - timedelta(seconds=1))
        while True:
            start = it.get_next(datetime).astimezone(UTC)
            if start >= until:
                return
            if start >= since:
                yield start
        return
    day: date = since.astimezone(tz).date()
    assert window.start_time is not None  # clean(): a weekday window has both
    while True:
        local = datetime.combine(day, window.start_time, tzinfo=tz)
        start = local.astimezone(UTC)
        if start >= until:
            return
        if day.weekday() == window.weekday and start >= since:
            yield start
        day += timedelta(days=1)


def openings(window: MaintenanceWindow, since: datetime, until: datetime) -> Iterator[Opening]:
    """Every opening that is open at some moment of [since, until), earliest first."""
    length = timedelta(minutes=window.duration_minutes)
    for start in _starts(window, since - length, until):
        if start + length > since:
            yield Opening(window, start, start + length)


def opening_at(window: MaintenanceWindow, opens_at: datetime) -> Opening | None:
    """The window's opening that starts exactly at ``opens_at`` (None once it was edited)."""
    found = next(openings(window, opens_at, opens_at + timedelta(seconds=1)), None)
    return found if found is not None and found.opens_at == opens_at else None


def next_opening(
    window: MaintenanceWindow, now: datetime, horizon: float | None = None
) -> Opening | None:
    """The opening open at ``now``, or else the next one within ``horizon`` seconds."""
    horizon = settings.PRA_WINDOW_MAX_WAIT if horizon is None else horizon
    return next(openings(window, now, now + timedelta(seconds=horizon)), None)


def windows_for(host: Host) -> QuerySet[MaintenanceWindow]:
    """Enabled windows that apply to ``host``: global ones and those of its tags."""
    return MaintenanceWindow.objects.filter(enabled=True).filter(
        Q(host_tag="") | Q(host_tag__in=host.tag_list)
    )


class _Unread:
    """Marks a freeze not looked up yet (``None`` means: looked up, none is on)."""


UNREAD = _Unread()
FreezeLookup = ChangeFreeze | None | _Unread


def _freeze(now: datetime, freeze: FreezeLookup) -> ChangeFreeze | None:
    return active_freeze(now) if isinstance(freeze, _Unread) else freeze


def active_freeze(now: datetime) -> ChangeFreeze | None:
    return (
        ChangeFreeze.objects.filter(starts_at__lte=now, ends_at__gt=now).order_by("ends_at").last()
    )


def upcoming_freezes(now: datetime, limit: int = 5) -> list[ChangeFreeze]:
    return list(ChangeFreeze.objects.filter(ends_at__gt=now).order_by("starts_at")[:limit])


def first_opening_for(host: Host, now: datetime) -> Opening | None:
    """The earliest opening for ``host`` (open now, or next) that no freeze overlaps,
    within PRA_WINDOW_MAX_WAIT."""
    until = now + timedelta(seconds=settings.PRA_WINDOW_MAX_WAIT)
    freezes = list(ChangeFreeze.objects.filter(starts_at__lt=until, ends_at__gt=now))
    best: Opening | None = None
    for window in windows_for(host):
        for opening in openings(window, now, until):
            if best is not None and opening.opens_at >= best.opens_at:
                break
            if any(f.starts_at < opening.closes_at and f.ends_at > opening.opens_at
                   for f in freezes):  # fmt: skip
                continue
            best = opening
            break
    return best


def requires_window(action: PRAAction) -> bool:
    """The catalog entry says so, or its impact is listed in PRA_WINDOW_IMPACTS."""
    return action.spec.requires_window or action.impact in settings.PRA_WINDOW_IMPACTS


def _freeze_text(freeze: ChangeFreeze) -> str:
    return f"change freeze until {freeze.ends_at:%a %Y-%m-%d %H:%M} UTC ({freeze.reason})"


@dataclass(frozen=True)
class Gate:
    """What an approval does now: "run", "wait" (for ``opening``) or "refuse" (``reason``)."""

    kind: str
    reason: str = ""
    opening: Opening | None = None


def gate_for(
    action: PRAAction, now: datetime | None = None, *, freeze: FreezeLookup = UNREAD
) -> Gate:
    """Decide how ``action`` may run: emergencies at once; window actions in the first
    window opening outside freezes; anything else at once unless a freeze is on."""
    now = now or timezone.now()
    if action.emergency:
        return Gate("run", "emergency: not held by windows or freezes")
    if requires_window(action):
        opening = first_opening_for(action.host, now)
        if opening is None:
            days = settings.PRA_WINDOW_MAX_WAIT // 86400
            return Gate(
                "refuse",
                f"{action.action} on {action.host.name} runs only inside a maintenance window, "
                f"and no window for this host opens in the next {days} days outside change "
                "freezes. An administrator adds a window, or propose it as an emergency.",
            )
        return Gate("wait", f"approved for the window starting {opening.label}", opening)
    active = _freeze(now, freeze)
    if active is not None:
        return Gate(
            "refuse",
            f"A {_freeze_text(active)} is on: only emergency actions run. Approve it after "
            "the freeze, or propose it as an emergency (typed reason, one more signature).",
        )
    return Gate("run")


def run_refusal(action: PRAAction, now: datetime) -> str:
    """Why ``action`` may not start now (checked again when a worker claims it), or ""."""
    if action.emergency:
        return ""
    freeze = active_freeze(now)
    if freeze is not None:
        return f"approval voided: a {_freeze_text(freeze)} started; only emergencies run"
    # APPROVED already means "released at the opening" (or approved inside an open
    # window) for these; what can still go wrong is the window closing first.
    if requires_window(action) and (
        action.window_closes_at is None or now >= action.window_closes_at
    ):
        return "approval voided: it may only run inside a maintenance window"
    return ""


def outlook(
    action: PRAAction, now: datetime | None = None, *, freeze: FreezeLookup = UNREAD
) -> dict[str, Any]:
    """What an assistant should know about when ``action`` would run (MCP answers).
    ``freeze``: the active freeze when the caller looked it up already (a list)."""
    now = now or timezone.now()
    freeze = _freeze(now, freeze)
    info: dict[str, Any] = {
        "requires_window": requires_window(action),
        "emergency": action.emergency,
        "freeze": (
            {"reason": freeze.reason, "ends_at": freeze.ends_at.isoformat()} if freeze else None
        ),
    }
    if action.window_opens_at:
        info["window"] = {
            "name": action.window.name if action.window else "",
            "opens_at": action.window_opens_at.isoformat(),
            "closes_at": _value(action.window_closes_at),
        }
    gate = gate_for(action, now, freeze=freeze) if action.status == "PROPOSED" else None
    if gate is not None:
        info["on_approval"] = {
            "run": "runs as soon as it is approved",
            "wait": f"waits: once approved it is {gate.reason}",
            "refuse": f"approval is refused now: {gate.reason}",
        }[gate.kind]
    if action.hold_reason:
        info["hold_reason"] = action.hold_reason
    return info


# --- audited edits (administrators) ------------------------------------------------------


def _require_admin(by: User | Actor) -> Actor:
    """The actor of ``by``; a person needs MANAGE_PERMISSION (a system actor, no user, is
    trusted by its caller)."""
    actor = Actor.of(by)
    require_perm(
        actor.user,
        MANAGE_PERMISSION,
        "edit maintenance windows and freezes (administrators only)",
        WindowError,
    )
    return actor


def _value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def save_window(
    window: MaintenanceWindow | None,
    *,
    by: User | Actor,
    backup_sources: list | None = None,
    **fields: Any,
) -> MaintenanceWindow:
    """Create (``window=None``) or change a maintenance window; one audit event per change.

    Saving with nothing changed writes nothing. ``backup_sources``: BackupSource rows
    (None keeps the current ones)."""
    actor = _require_admin(by)
    unknown = set(fields) - set(WINDOW_FIELDS)
    if unknown:
        raise WindowError("invalid", f"not a window field: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        created = window is None or window.pk is None
        obj = (
            MaintenanceWindow()
            if created
            else MaintenanceWindow.objects.select_for_update().get(pk=window.pk)  # type: ignore[union-attr]
        )
        before = {f: getattr(obj, f) for f in WINDOW_FIELDS}
        before_sources = (
            [] if created else sorted(obj.backup_sources.values_list("name", flat=True))
        )
        for name, value in fields.items():
            setattr(obj, name, value.strip() if isinstance(value, str) else value)
        full_clean_or_refuse(obj, WindowError)
        changes = {f: _value(getattr(obj, f)) for f in WINDOW_FIELDS
                   if created or getattr(obj, f) != before[f]}  # fmt: skip
        obj.save()
        if backup_sources is not None:
            obj.backup_sources.set(backup_sources)
        after_sources = sorted(obj.backup_sources.values_list("name", flat=True))
        if after_sources != before_sources:
            changes["backup_sources"] = after_sources
        if changes:
            record(
                AuditEventType.WINDOW_CREATED if created else AuditEventType.WINDOW_UPDATED,
                actor=actor,
                subject=obj,
                details={"name": obj.name, "changes": changes},
            )
    return obj


def delete_window(window: MaintenanceWindow, *, by: User | Actor) -> None:
    """Delete a window (audited). Actions waiting for it are voided by the next sweep."""
    actor = _require_admin(by)
    with transaction.atomic():
        obj = MaintenanceWindow.objects.select_for_update().filter(pk=window.pk).first()
        if obj is None:
            return
        record(
            AuditEventType.WINDOW_DELETED,
            actor=actor,
            subject=obj,
            details={"name": obj.name, "waiting": obj.actions.filter(status="WAITING").count()},
        )
        obj.delete()


def save_freeze(freeze: ChangeFreeze | None, *, by: User | Actor, **fields: Any) -> ChangeFreeze:
    """Create or change a change freeze (start, end, reason); one audit event per change."""
    actor = _require_admin(by)
    unknown = set(fields) - set(FREEZE_FIELDS)
    if unknown:
        raise WindowError("invalid", f"not a freeze field: {', '.join(sorted(unknown))}")
    if isinstance(fields.get("reason"), str):
        fields["reason"] = " ".join(fields["reason"].split())
        if len(fields["reason"]) < 5:
            raise WindowError("invalid", "reason: say why (at least 5 characters).")
    with transaction.atomic():
        created = freeze is None or freeze.pk is None
        obj = (
            ChangeFreeze(created_by=actor.label)
            if created
            else ChangeFreeze.objects.select_for_update().get(pk=freeze.pk)  # type: ignore[union-attr]
        )
        before = {f: getattr(obj, f) for f in FREEZE_FIELDS}
        for name, value in fields.items():
            setattr(obj, name, value)
        full_clean_or_refuse(obj, WindowError)
        changes = {f: _value(getattr(obj, f)) for f in FREEZE_FIELDS
                   if created or getattr(obj, f) != before[f]}  # fmt: skip
        if not changes:
            return obj
        obj.save()
        record(
            AuditEventType.FREEZE_CREATED if created else AuditEventType.FREEZE_UPDATED,
            actor=actor,
            subject=obj,
            details={"changes": changes},
        )
    return obj


def delete_freeze(freeze: ChangeFreeze, *, by: User | Actor) -> None:
    """End a freeze's record (audited)."""
    actor = _require_admin(by)
    with transaction.atomic():
        obj = ChangeFreeze.objects.select_for_update().filter(pk=freeze.pk).first()
        if obj is None:
            return
        record(
            AuditEventType.FREEZE_DELETED,
            actor=actor,
            subject=obj,
            details={"reason": obj.reason, "starts_at": _value(obj.starts_at),
                     "ends_at": _value(obj.ends_at)},
        )  # fmt: skip
        obj.delete()
