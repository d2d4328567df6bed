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


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        LATENCY.labels(request.method).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, str(response.status_code)).inc()
        return response
