"""Live events: the one way the actions layer pushes to dashboards.

``publish`` sends on transaction commit, never before: a rolled-back change
is never announced. Payloads are small and typed (``LiveEvent``).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from pydantic import BaseModel, Field

from portal.choices import LiveEventKind

logger = logging.getLogger(__name__)

# Everyone allowed to view the portal joins this group.
DASHBOARD_GROUP = "dashboard"


def subject_group(subject_type: str, subject_id: Any) -> str:
    """Group for one object's page (e.g. an action streaming its output)."""
    return f"subject.{subject_type.replace('.', '-')}.{subject_id}"


class LiveEvent(BaseModel):
    kind: LiveEventKind
    subject_type: str = Field(max_length=60)
    subject_id: str = Field(max_length=64)
    status: str = ""
    summary: str = Field(default="", max_length=300)
    data: dict[str, Any] = Field(default_factory=dict)


def _send(groups: list[str], event: LiveEvent) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "live.event", "event": event.model_dump(mode="json")}
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:
            # The change is committed; a dashboard missing one push is not worth failing for.
            logger.warning("live event to %s not delivered", group, exc_info=True)


def publish(event: LiveEvent, *, dashboard: bool = True) -> None:
    """Send ``event`` to the dashboard and to its subject's page, on commit."""
    groups = [subject_group(event.subject_type, event.subject_id)]
    if dashboard:
        groups.insert(0, DASHBOARD_GROUP)
    transaction.on_commit(lambda: _send(groups, event))
