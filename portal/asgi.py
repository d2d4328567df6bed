"""ASGI entry point: Django over HTTP, MCP at /mcp, live events over websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from incidents import fastpath
from portal.mcp import get_server as mcp_server
from portal.mcp.http import MCPEndpoint, route_mcp
from portal.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        # Routine heartbeats take the lean path (incidents/fastpath.py): same checks,
        # batched writes, 200 only after COMMIT; anything else goes to Django.
        "http": fastpath.wrap(route_mcp(MCPEndpoint(mcp_server()), django_asgi_app)),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
