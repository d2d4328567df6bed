"""Prometheus metrics: request counters in a middleware, queue depths read at scrape time."""

from __future__ import annotations

import time

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "portal_http_requests_total",
    "HTTP requests served, by method and status code.",
    ["method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "HTTP request latency.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)


class QueueCollector:
    """Reads RQ queue depths from Redis when Prometheus scrapes."""

    def describe(self):
        yield GaugeMetricFamily("portal_queue_depth", "Jobs waiting.", labels=["queue"])
        yield GaugeMetricFamily("portal_redis_up", "1 when Redis answered this scrape.")

    def collect(self):
        from rq import Queue

        from portal.lib.redis import get_redis

        depth = GaugeMetricFamily(
            "portal_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        up = GaugeMetricFamily("portal_redis_up", "1 when Redis answered this scrape.")
        try:
            connection = get_redis(timeout=1.0)
            for name in settings.RQ_QUEUES:
                depth.add_metric([name], Queue(name, connection=connection).count)
            up.add_metric([], 1)
        except Exception:
            up.add_metric([], 0)
        yield depth
        yield up


REGISTRY.register(QueueCollector())


class NotificationCollector:
    """Notifications by status, read from the database at scrape time."""

    def describe(self):
        # Declared without values, so registering never touches the database.
        yield GaugeMetricFamily("portal_notifications", "Notifications.", labels=["status"])
        yield GaugeMetricFamily("portal_notifications_oldest_pending_seconds", "Oldest pending.")

    def collect(self):
        from django.db.models import Count, Min
        from django.utils import timezone

        from portal.choices import NotificationStatus
        from portal.models import Notification

        by_status = GaugeMetricFamily(
            "portal_notifications",
            "Notifications by status (FAILED ones were given up after every retry).",
            labels=["status"],
        )
        counts = dict(
            Notification.objects.values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        for status in NotificationStatus.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        oldest = Notification.objects.filter(status=NotificationStatus.PENDING).aggregate(
            value=Min("created")
        )["value"]
        age = GaugeMetricFamily(
            "portal_notifications_oldest_pending_seconds",
            "Age of the oldest notification not sent yet (0 when none).",
        )
        age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield age


class AuditCollector:
    """The audit chain head and the last anchor, so a scraper keeps its own record.

    A Prometheus history of the head id and count is one more copy outside the
    database: a count that goes down is a deleted tail (docs/security.md).
    """

    def describe(self):
        # Declared without values, so registering never touches the database.
        yield GaugeMetricFamily("portal_audit_head_id", "Newest audit event id.")
        yield GaugeMetricFamily("portal_audit_events", "Audit events in the chain.")
        yield GaugeMetricFamily("portal_audit_anchor_head_id", "Event id of the last anchor.")
        yield GaugeMetricFamily("portal_audit_anchor_events", "Event count of the last anchor.")
        yield GaugeMetricFamily("portal_audit_anchor_timestamp_seconds", "Last anchor time.")

    def collect(self):
        from django.db import connection

        from portal.audit import anchor_file, last_trusted_anchor

        try:
            anchor = last_trusted_anchor(anchor_file())
            with connection.cursor() as cursor:
                cursor.execute("SELECT max(id) FROM portal_auditevent")
                head = cursor.fetchone()[0] or 0
                # Counting only past the last anchor keeps a scrape cheap on a big log;
                # with the anchored event gone, only a full count tells the truth.
                if anchor and head >= anchor.event_id:
                    cursor.execute(
                        "SELECT count(*) FROM portal_auditevent WHERE id > %s", [anchor.event_id]
                    )
                    count = anchor.count + cursor.fetchone()[0]
                else:
                    cursor.execute("SELECT count(*) FROM portal_auditevent")
                    count = cursor.fetchone()[0]
        except Exception:  # the database or the anchor file is unreadable: no audit gauges
            return
        values = {
            "portal_audit_head_id": ("Newest audit event id (the chain head).", head),
            "portal_audit_events": ("Audit events in the chain.", count),
            "portal_audit_anchor_head_id": (
                "Event id named by the last anchor line (0: none yet).",
                anchor.event_id if anchor else 0,
            ),
            "portal_audit_anchor_events": (
                "Event count named by the last anchor line.",
                anchor.count if anchor else 0,
            ),
            "portal_audit_anchor_timestamp_seconds": (
                "Unix time of the last anchor line (0: none yet); alert when it stops moving.",
                _timestamp(anchor.time) if anchor else 0,
            ),
        }
        for name, (documentation, value) in values.items():
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value))
            yield gauge


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


REGISTRY.register(AuditCollector())


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        LATENCY.labels(request.method).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, str(response.status_code)).inc()
        return response
