"""Websocket consumer for live events. Every connection is checked for the view role."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from portal.live import DASHBOARD_GROUP, subject_group

# Application close codes (4000-4999): the browser sees why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


@database_sync_to_async
def _can_view(user) -> bool:
    return user.is_active and user.has_perm("portal.view_portal")


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/live/`` joins the dashboard; ``/ws/live/<type>/<id>/`` one object's page."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await _can_view(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        if "subject_type" in kwargs:
            self.group = subject_group(kwargs["subject_type"], kwargs["subject_id"])
        else:
            self.group = DASHBOARD_GROUP
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        # The stream is one-way; a client "ping" gets a "pong" so it can detect dead sockets.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def live_event(self, message: dict) -> None:
        await self.send_json({"type": "event", "event": message["event"]})
