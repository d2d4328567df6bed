"""The incidents part of the dashboard: patches waiting for signatures (the inbox), open
incidents by severity with their age and who has them, and the self-healing KPIs."""

from datetime import timedelta

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q
from django.urls import reverse
from django.utils import timezone

from incidents.choices import INCIDENT_OPEN, AttemptStatus, IncidentStatus, Severity
from incidents.models import AutoPatchAttempt, Incident
from portal import approvals
from portal.dashboard import INBOX_LIMIT, ApprovalItem, approval_items, approvals_source, panel

SEVERITY_BADGE: dict[int, str] = {Severity.LOW: "", Severity.MEDIUM: "warn", Severity.HIGH: "bad",
                  Severity.CRITICAL: "crit"}  # fmt: skip
KPI_WINDOW = timedelta(days=7)
FINISHED = (AttemptStatus.SUCCEEDED, AttemptStatus.ROLLED_BACK, AttemptStatus.FAILED)


@approvals_source
def patch_approvals(request) -> list[ApprovalItem]:
    waiting = list(
        AutoPatchAttempt.objects.select_related("agent", "incident")
        .filter(status=AttemptStatus.PENDING, needs_approval=True)
        .order_by("created")[:INBOX_LIMIT]
    )
    may_reject = request.user.has_perm(approvals.APPROVE_PERMISSION)

    def build(attempt, signers, can_sign, why_not, rule) -> ApprovalItem:
        act = "admin:incidents_incident_act"
        return ApprovalItem(
            key=f"patch-{attempt.pk}",
            kind="Patch",
            title=f"{attempt.agent.name} {attempt.from_version or '?'} → {attempt.target_version}"
            f" (incident #{attempt.incident_id})",
            url=reverse("admin:incidents_incident_change", args=[attempt.incident_id]),
            impact=attempt.approval_impact,
            created=attempt.created,
            requester="self-healing policy",
            signers=signers,
            required=rule.required_approvals,
            can_sign=can_sign,
            can_reject=may_reject,
            why_not=why_not,
            form={
                "can_sign": can_sign,
                "can_reject": may_reject,
                "approve_url": reverse(act, args=[attempt.incident_id, "approve-patch"]),
                "reject_url": reverse(act, args=[attempt.incident_id, "reject-patch"]),
                "attempt": attempt.pk,
                "fingerprint": attempt.approval_fingerprint(),
                "confirm_text": attempt.approval_confirmation_text,
                "rule": rule,
            },
            form_template="portal/_patch_approval_forms.html",
            extra={"expires_at": attempt.approval_expires_at},
        )

    items = approval_items(request, waiting, build=build)
    # Fully signed patches stay PENDING until a worker starts them: nothing to sign.
    return [item for item in items if item.count < item.required]


def dashboard_kpis(window: timedelta = KPI_WINDOW) -> dict:
    """The seed targets' KPIs over ``window``, with how many things they are over: a rate
    over no attempt, or a mean over no incident, is None ("no data yet"), never 100 % or
    0 s."""
    since = timezone.now() - window
    attempts = AutoPatchAttempt.objects.filter(created__gte=since).aggregate(
        done=Count("id", filter=Q(status__in=FINISHED)),
        ok=Count("id", filter=Q(status=AttemptStatus.SUCCEEDED)),
        rolled=Count("id", filter=Q(status=AttemptStatus.ROLLED_BACK)),
    )
    detect = ExpressionWrapper(F("opened_at") - F("detected_at"), output_field=DurationField())
    resolve = ExpressionWrapper(F("resolved_at") - F("opened_at"), output_field=DurationField())
    times = Incident.objects.filter(opened_at__gte=since).aggregate(
        opened=Count("id"),
        resolved=Count("id", filter=Q(resolved_at__isnull=False)),
        mttd=Avg(detect),
        mttr=Avg(resolve, filter=Q(resolved_at__isnull=False)),
    )
    done = attempts["done"]
    return {
        "days": window.days,
        "attempts": done,
        "success_rate_pct": round(100.0 * attempts["ok"] / done, 1) if done else None,
        "rollback_rate_pct": round(100.0 * attempts["rolled"] / done, 1) if done else None,
        "incidents": times["opened"],
        "resolved": times["resolved"],
        "mttd": times["mttd"] if times["opened"] else None,
        "mttr": times["mttr"] if times["resolved"] else None,
        "mttd_ok": times["opened"] and times["mttd"] <= timedelta(minutes=2),
        "mttr_ok": times["resolved"] and times["mttr"] <= timedelta(minutes=10),
        "success_ok": done and 100.0 * attempts["ok"] / done > 95,
        "rollback_ok": done and 100.0 * attempts["rolled"] / done < 2,
    }


@panel
def incidents_panel(request) -> dict:
    counts = dict(
        Incident.objects.filter(status__in=INCIDENT_OPEN)
        .values_list("severity")
        .annotate(n=Count("id"))
        .values_list("severity", "n")
    )
    open_incidents = list(
        Incident.objects.select_related("agent", "acknowledged_by", "remediation")
        .filter(status__in=INCIDENT_OPEN)
        .order_by("-severity", "opened_at")[:15]
    )
    for incident in open_incidents:
        # Display-only attributes the panel template reads; the model declares no such fields.
        incident.badge = SEVERITY_BADGE.get(incident.severity, "")  # type: ignore[attr-defined]
        incident.severity_label = Severity(incident.severity).label  # type: ignore[attr-defined]
        incident.unowned = incident.status == IncidentStatus.OPEN  # type: ignore[attr-defined]
    return {
        "template": "incidents/panel.html",
        "area": "inbox",
        "order": 20,
        "by_severity": [
            (s.label, s.value, counts.get(s.value, 0), SEVERITY_BADGE[s])
            for s in reversed(Severity)
        ],
        "total": sum(counts.values()),
        "open": open_incidents,
        "kpis": dashboard_kpis(),
        "list_url": reverse("admin:incidents_incident_changelist"),
    }
