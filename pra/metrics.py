"""Remediation KPIs for /metrics, read from the database at scrape time (SPEC §1 Metrics)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Avg, Count, F, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from pra.choices import ActionStatus
from pra.models import PRAAction


def kpis(window: timedelta = timedelta(days=1)) -> dict[str, float]:
    """Proposed per day, approval ratio, failed-execution ratio, mean time to approval."""
    since = timezone.now() - window
    recent = PRAAction.objects.filter(created__gte=since)
    counts = recent.aggregate(
        proposed=Count("id"),
        rejected=Count("id", filter=Q(status=ActionStatus.REJECTED)),
        approved=Count("id", filter=Q(approved_at__isnull=False)),
        executed=Count("id", filter=Q(status__in=[ActionStatus.COMPLETED, ActionStatus.FAILED])),
        failed=Count("id", filter=Q(status=ActionStatus.FAILED)),
    )
    decided = counts["approved"] + counts["rejected"]
    mean_approval = recent.filter(approved_at__isnull=False).aggregate(
        value=Avg(F("approved_at") - F("created"))
    )["value"]
    return {
        "proposed": counts["proposed"],
        "approval_ratio": counts["approved"] / decided if decided else 1.0,
        "failed_ratio": counts["failed"] / counts["executed"] if counts["executed"] else 0.0,
        "mean_time_to_approval_seconds": mean_approval.total_seconds() if mean_approval else 0.0,
    }


_KPI_HELP = {
    "proposed": "Actions proposed in the last 24 h (review if > 50).",
    "approval_ratio": "Approved / decided in the last 24 h (review if < 0.8).",
    "failed_ratio": "Failed / executed in the last 24 h (investigate if > 0.1).",
    "mean_time_to_approval_seconds": "Mean proposal-to-approval time, 24 h (< 300).",
}


class RemediationCollector:
    def describe(self):
        # Declared without values, so registering never touches the database.
        yield GaugeMetricFamily("portal_pra_actions", "Remediation actions.", labels=["status"])
        for name, help_text in _KPI_HELP.items():
            yield GaugeMetricFamily(f"portal_pra_{name}", help_text)

    def collect(self):
        by_status = GaugeMetricFamily(
            "portal_pra_actions", "Remediation actions by status.", labels=["status"]
        )
        counts = dict(
            PRAAction.objects.values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        for status in ActionStatus.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        values = kpis()
        for name, help_text in _KPI_HELP.items():
            gauge = GaugeMetricFamily(f"portal_pra_{name}", help_text)
            gauge.add_metric([], values[name])
            yield gauge
