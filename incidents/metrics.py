"""Self-healing KPIs on ``/metrics`` (seed targets: success > 95 %, rollback < 2 %, MTTD
< 2 min, MTTR < 10 min), over the last 7 days.

No data is not a value: a rate over zero finished attempts, or a mean over zero
incidents, is not 100 % or 0 s. Following the Prometheus convention for a value that
does not exist, such a gauge keeps its ``# HELP``/``# TYPE`` lines and has **no
sample** (the series is absent, so ``portal_autoheal_success_rate_pct < 95`` does not
fire on an idle portal, and ``absent(...)`` says "no data"). What each KPI is computed
over is exported beside it, always present: ``portal_autoheal_attempts_finished``,
``portal_autoheal_incidents_opened`` and ``portal_autoheal_incidents_resolved``.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Avg, Count, F, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from incidents.choices import INCIDENT_OPEN, AttemptStatus, Severity
from incidents.models import AutoPatchAttempt, Incident

FINISHED = [AttemptStatus.SUCCEEDED, AttemptStatus.ROLLED_BACK, AttemptStatus.FAILED]


def window_counts(window: timedelta = timedelta(days=7)) -> dict:
    """What the KPIs are over, and their sums: two queries."""
    since = timezone.now() - window
    attempts = AutoPatchAttempt.objects.filter(created__gte=since).aggregate(
        done=Count("id", filter=Q(status__in=FINISHED)),
        ok=Count("id", filter=Q(status=AttemptStatus.SUCCEEDED)),
        rolled=Count("id", filter=Q(status=AttemptStatus.ROLLED_BACK)),
    )
    times = Incident.objects.filter(opened_at__gte=since).aggregate(
        opened=Count("id"),
        resolved=Count("id", filter=Q(resolved_at__isnull=False)),
        mttd=Avg(F("opened_at") - F("detected_at")),
        mttr=Avg(F("resolved_at") - F("opened_at"), filter=Q(resolved_at__isnull=False)),
    )
    return {**attempts, **times}


def kpis(window: timedelta = timedelta(days=7)) -> dict[str, float | None]:
    """The four KPIs; ``None`` where there is nothing to compute them over."""
    c = window_counts(window)
    done, opened, resolved = c["done"], c["opened"], c["resolved"]
    return {
        "success_rate_pct": round(100.0 * c["ok"] / done, 1) if done else None,
        "rollback_rate_pct": round(100.0 * c["rolled"] / done, 1) if done else None,
        "mttd_seconds": round(c["mttd"].total_seconds(), 1) if opened and c["mttd"] else None,
        "mttr_seconds": round(c["mttr"].total_seconds(), 1) if resolved and c["mttr"] else None,
        "attempts_finished": float(done),
        "incidents_opened": float(opened),
        "incidents_resolved": float(resolved),
    }


_HELP = {
    "success_rate_pct": "Auto-patch success rate over 7 days (target > 95); "
    "no sample without a finished attempt.",
    "rollback_rate_pct": "Auto-patch rollback rate over 7 days (target < 2); "
    "no sample without a finished attempt.",
    "mttd_seconds": "Mean time to detect over 7 days (target < 120); "
    "no sample without an incident.",
    "mttr_seconds": "Mean time to resolve over 7 days (target < 600); "
    "no sample without a resolved incident.",
    "attempts_finished": "Auto-patch attempts finished over 7 days (the rates are over these).",
    "incidents_opened": "Incidents opened over 7 days (MTTD is over these).",
    "incidents_resolved": "Incidents opened and resolved over 7 days (MTTR is over these).",
}


class IncidentCollector:
    def describe(self):
        yield GaugeMetricFamily("portal_incidents_open", "Open incidents.", labels=["severity"])
        for name, text in _HELP.items():
            yield GaugeMetricFamily(f"portal_autoheal_{name}", text)

    def collect(self):
        open_by = GaugeMetricFamily("portal_incidents_open", "Open incidents.", labels=["severity"])
        counts = dict(
            Incident.objects.filter(status__in=INCIDENT_OPEN)
            .values_list("severity")
            .annotate(n=Count("id"))
            .values_list("severity", "n")
        )
        for severity in Severity:
            open_by.add_metric([severity.label.lower()], counts.get(severity.value, 0))
        yield open_by
        for name, value in kpis().items():
            gauge = GaugeMetricFamily(f"portal_autoheal_{name}", _HELP[name])
            if value is not None:  # no data: the family without a sample
                gauge.add_metric([], value)
            yield gauge
