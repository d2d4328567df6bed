"""Bench only: the portal's ASGI application, plus ``/bare/<pk>`` for bench/heartbeats.py.

``/bare/...`` goes to a second Django ASGI handler with the same settings and
middleware that resolves URLs against ``bench.bareview`` instead of
``portal.urls``; every other path goes to ``portal.asgi.application``
unchanged (the same way ``portal.mcp.http.route_mcp`` puts ``/mcp`` in front
of Django). Settings stay env-only and untouched, so one server process serves
both sides of the comparison:

    daphne -b 127.0.0.1 -p PORT bench.bare_asgi:application
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler

from portal.asgi import application as portal_application  # sets Django up

BARE_PREFIX = "/bare/"
BARE_URLCONF = "bench.bareview"


class BareHandler(ASGIHandler):
    """Django's ASGI handler, resolving every request against ``bench.bareview``."""

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(scope, body_file)
        if request is not None:
            request.urlconf = BARE_URLCONF
        return request, error_response


bare_application = BareHandler()


async def application(scope, receive, send) -> None:
    if scope["type"] == "http" and scope.get("path", "").startswith(BARE_PREFIX):
        await bare_application(scope, receive, send)
    else:
        await portal_application(scope, receive, send)
