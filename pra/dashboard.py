"""The remediation part of the dashboard: proposals waiting for signatures (the inbox),
actions on their way, and the last ones that finished."""

from typing import Any

from django.urls import reverse

from portal import approvals
from portal.dashboard import INBOX_LIMIT, ApprovalItem, approval_items, approvals_source, panel
from pra.choices import ActionStatus
from pra.models import PRAAction, PreflightStatus, Source

RUNNING = (ActionStatus.WAITING, ActionStatus.APPROVED, ActionStatus.EXECUTING)
BADGE = {ActionStatus.COMPLETED: "ok", ActionStatus.FAILED: "bad", ActionStatus.VOIDED: "bad",
         ActionStatus.REJECTED: "bad", ActionStatus.EXPIRED: ""}  # fmt: skip


@approvals_source
def remediation_approvals(request) -> list[ApprovalItem]:
    waiting = list(
        PRAAction.objects.select_related("host")
        .filter(status=ActionStatus.PROPOSED)
        .order_by("created")[:INBOX_LIMIT]
    )
    may_reject = request.user.has_perm(approvals.APPROVE_PERMISSION)

    def build(action, signers, can_sign, why_not, rule) -> ApprovalItem:
        # The action page's own rule on top of the shared ones: a failed pre-flight
        # blocks approval (approve_action refuses it too).
        if action.preflight_status == PreflightStatus.FAILED:
            can_sign, why_not = False, "pre-flight failed: approval blocked"
        approve_url = reverse("admin:pra_praaction_approve", args=[action.pk])
        requester = action.proposer_label + (" (AI)" if action.source == Source.AI else "")
        return ApprovalItem(
            key=f"pra-{action.pk}",
            kind="Remediation",
            title=f"#{action.pk} {action.command_display} on {action.host.name}",
            url=reverse("admin:pra_praaction_change", args=[action.pk]),
            impact=action.impact,
            created=action.created,
            requester=requester,
            signers=signers,
            required=rule.required_approvals + action.approval_extra_signatures,
            can_sign=can_sign,
            can_reject=may_reject,
            why_not=why_not,
            form={
                "can_sign": can_sign,
                "can_reject": may_reject,
                "approve_url": approve_url,
                "reject_url": reverse("admin:pra_praaction_reject", args=[action.pk]),
                "fingerprint": action.approval_fingerprint(),
                "confirm_text": action.approval_confirmation_text,
                "rule": rule,
            },
            extra={"preflight": action.get_preflight_status_display()},
        )

    return approval_items(request, waiting, build=build)


@panel
def remediation_panel(request) -> dict:
    running = list(
        PRAAction.objects.select_related("host")
        .filter(status__in=RUNNING)
        .order_by("-status_changed_at")[:20]
    )
    recent = list(
        PRAAction.objects.select_related("host")
        .exclude(status__in=[ActionStatus.PROPOSED, *RUNNING])
        .order_by("-status_changed_at")[:10]
    )
    return {
        "template": "pra/panel.html",
        "area": "main",
        "order": 10,
        "running": running,
        "recent": [(a, BADGE.get(ActionStatus(a.status), "warn")) for a in recent],
        "list_url": reverse("admin:pra_praaction_changelist"),
    }


@panel
def maintenance_panel(request) -> dict:
    """The current or next maintenance window of each scope, any change freeze (on now or
    planned), and the actions waiting for a window with what they wait for."""
    from django.utils import timezone

    from pra import windows
    from pra.models import MaintenanceWindow

    now = timezone.now()
    rows: list[dict[str, Any]] = []
    for window in MaintenanceWindow.objects.filter(enabled=True).prefetch_related("backup_sources"):
        opening = windows.next_opening(window, now)
        rows.append({"window": window, "opening": opening,
                     "open": bool(opening and opening.is_open(now)),
                     "sources": [s.name for s in window.backup_sources.all()]})  # fmt: skip
    rows.sort(key=lambda r: (not r["open"], r["opening"].opens_at if r["opening"] else now))
    freezes = windows.upcoming_freezes(now)
    waiting = list(
        PRAAction.objects.select_related("host", "window")
        .filter(status=ActionStatus.WAITING)
        .order_by("window_opens_at")[:20]
    )
    return {
        "template": "pra/maintenance_panel.html",
        "area": "main",
        "order": 12,
        "windows": rows[:6],
        "current": next((r for r in rows if r["open"]), None),
        "next": next((r for r in rows if not r["open"] and r["opening"]), None),
        "freeze": next((f for f in freezes if f.starts_at <= now), None),
        "freezes": [f for f in freezes if f.starts_at > now],
        "waiting": waiting,
        "windows_url": reverse("admin:pra_maintenancewindow_changelist"),
        "freezes_url": reverse("admin:pra_changefreeze_changelist"),
    }
