"""Self-healing KPIs (seed targets: success > 95 %, rollback < 2 %, MTTD < 2 min, MTTR < 10 min)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Avg, Count, F, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from incidents.choices import INCIDENT_OPEN, AttemptStatus, Severity
from incidents.models import AutoPatchAttempt, Incident


def kpis(window: timedelta = timedelta(days=7)) -> dict[str, float]:
    since = timezone.now() - window
    attempts = AutoPatchAttempt.objects.filter(created__gte=since).aggregate(
        done=Count(
            "id",
            filter=Q(
                status__in=[
                    AttemptStatus.SUCCEEDED,
                    AttemptStatus.ROLLED_BACK,
                    AttemptStatus.FAILED,
                ]
            ),
        ),
        ok=Count("id", filter=Q(status=AttemptStatus.SUCCEEDED)),
        rolled=Count("id", filter=Q(status=AttemptStatus.ROLLED_BACK)),
    )
    times = Incident.objects.filter(opened_at__gte=since).aggregate(
        mttd=Avg(F("opened_at") - F("detected_at")),
        mttr=Avg(F("resolved_at") - F("opened_at"), filter=Q(resolved_at__isnull=False)),
    )
    done = attempts["done"]
    return {
        "success_rate_pct": round(100.0 * attempts["ok"] / done, 1) if done else 100.0,
        "rollback_rate_pct": round(100.0 * attempts["rolled"] / done, 1) if done else 0.0,
        "mttd_seconds": round(times["mttd"].total_seconds(), 1) if times["mttd"] else 0.0,
        "mttr_seconds": round(times["mttr"].total_seconds(), 1) if times["mttr"] else 0.0,
    }


_HELP = {
    "success_rate_pct": "Auto-patch success rate over 7 days (target > 95).",
    "rollback_rate_pct": "Auto-patch rollback rate over 7 days (target < 2).",
    "mttd_seconds": "Mean time to detect over 7 days (target < 120).",
    "mttr_seconds": "Mean time to resolve over 7 days (target < 600).",
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
            gauge.add_metric([], value)
            yield gauge
