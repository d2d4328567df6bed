"""Websocket consumer for live events. Every connection is checked for the view role.

``/ws/live/<type>/<id>/`` joins one object's group only for the subject types the
portal publishes (``SUBJECTS``), an object that exists, and a user whose role may view
that model; anything else is closed with a 44xx code saying why.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.apps import apps

from portal.live import DASHBOARD_GROUP, subject_group

# Application close codes (4000-4999): the browser sees why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

# Every subject type `portal.live.publish` is called with (the actions layers of pra,
# incidents and backups). A page for anything else has no live events to follow.
SUBJECTS = (
    "pra.praaction",
    "incidents.incident",
    "incidents.incidentgroup",
    "backups.backuprun",
    "backups.restorerequest",
    "backups.backupdrill",
)


@database_sync_to_async
def _can_view(user) -> bool:
    return user.is_active and user.has_perm("portal.view_portal")


@database_sync_to_async
def _subject_refusal(user, subject_type: str, subject_id: str) -> int | None:
    """None when ``user`` may follow this object, else the close code."""
    if subject_type not in SUBJECTS:
        return CLOSE_NOT_FOUND
    model = apps.get_model(subject_type)
    if not user.has_perm(f"{model._meta.app_label}.view_{model._meta.model_name}"):
        return CLOSE_FORBIDDEN
    if not model._default_manager.filter(pk=int(subject_id)).exists():
        return CLOSE_NOT_FOUND
    return None


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
            subject_type, subject_id = kwargs["subject_type"], kwargs["subject_id"]
            refusal = await _subject_refusal(user, subject_type, subject_id)
            if refusal is not None:
                await self.close(code=refusal)
                return
            self.group = subject_group(subject_type, subject_id)
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
            # Join the group again (an idempotent ZADD): after a Redis flush or restart
            # the membership is gone and the socket would stay open but silent.
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.send_json({"type": "pong"})

    async def live_event(self, message: dict) -> None:
        await self.send_json({"type": "event", "event": message["event"]})
