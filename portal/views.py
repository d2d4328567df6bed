"""Portal-wide views: dashboard, health, metrics."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from portal.lib.redis import get_redis
from portal.metrics import REGISTRY


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
    return "ok"


def _check_redis_and_queues() -> tuple[str, dict[str, dict], int]:
    """Redis, and for every queue the product uses: live workers serving it and its depth."""
    from rq import Queue, Worker

    queues: dict[str, dict] = {}
    try:
        redis = get_redis(timeout=1.0)
        redis.ping()
    except Exception as exc:
        return f"error: {exc.__class__.__name__}", queues, 0
    fresh_after = datetime.now(UTC) - timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE)
    alive: set[str] = set()
    try:
        for name in settings.RQ_QUEUES:
            queue = Queue(name, connection=redis)
            serving = [
                w.name
                for w in Worker.all(queue=queue)
                if w.last_heartbeat and w.last_heartbeat >= fresh_after
            ]
            alive.update(serving)
            queues[name] = {
                "status": "ok" if serving else "error: no live worker serves this queue",
                "workers": len(serving),
                "depth": queue.count,
            }
    except Exception as exc:
        return f"error: {exc.__class__.__name__}", queues, len(alive)
    return "ok", queues, len(alive)


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and `make run`: 200 only when everything answers,
    including a live worker for every queue (a queue nobody serves is an outage)."""
    database = _check_database()
    redis, queues, workers_alive = _check_redis_and_queues()
    unserved = [name for name, q in queues.items() if q["status"] != "ok"]
    if redis != "ok":
        worker = "unknown"
    elif unserved:
        worker = "error: no live worker for " + ", ".join(unserved)
    else:
        worker = "ok"
    healthy = database == redis == worker == "ok"
    body = {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "redis": redis,
        "worker": worker,
        "workers_alive": workers_alive,
        "queues": queues,
    }
    return JsonResponse(body, status=200 if healthy else 503)


def _metrics_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].encode(), token.encode())
    if settings.SECURE_PROXY_SSL_HEADER:
        # Behind a proxy every client looks local: only the token counts.
        return False
    return request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _metrics_allowed(request):
        error = "metrics need a bearer token or an allowed address"
        return JsonResponse({"error": error}, status=403)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@login_required
@permission_required("portal.view_portal", raise_exception=True)
@never_cache
def dashboard(request: HttpRequest) -> HttpResponse:
    """The on-call inbox (what waits for this person: signatures, incidents, backups),
    then the apps' other panels. A fixed number of queries whatever the number of rows."""
    from portal.dashboard import collect_approvals, collect_panels

    panels = collect_panels(request)
    return render(
        request,
        "portal/dashboard.html",
        {
            "approvals": collect_approvals(request),
            "inbox_panels": [p for p in panels if p.get("area") == "inbox"],
            "main_panels": [p for p in panels if p.get("area") != "inbox"],
        },
    )


@login_required
@permission_required("portal.view_portal", raise_exception=True)
@never_cache
@require_GET
def charts(request: HttpRequest) -> HttpResponse:
    """Server-rendered SVG charts (no script, no third-party asset) over ``?days=N``."""
    from portal import charts as charting

    days = charting.window_days(request.GET.get("days"))
    return render(
        request,
        "portal/charts.html",
        {"charts": charting.all_charts(days), "days": days, "choices": charting.WINDOWS},
    )
