"""Bench only: the "bare" view bench/heartbeats.py compares heartbeat ingestion with.

One ``UPDATE`` of an agent row and a tiny JSON answer, behind the portal's own
settings and middleware. Not in the product's URLs: ``bench/bare_asgi.py``
resolves ``/bare/<pk>`` against this module and nothing else.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from incidents.models import Agent


@csrf_exempt  # the load generator posts like an agent: no session, no CSRF token
@require_POST
def bare(request: HttpRequest, pk: int) -> JsonResponse:
    updated = Agent.objects.filter(pk=pk).update(last_seen=timezone.now())
    return JsonResponse({"ok": bool(updated)}, status=200 if updated else 404)


urlpatterns = [path("bare/<int:pk>", bare)]
