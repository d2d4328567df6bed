"""Live events: the one way the actions layer pushes to dashboards.

``publish`` sends on transaction commit, never before: a rolled-back change
is never announced. Payloads are small and typed (``LiveEvent``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Annotated, Any

from channels.layers import get_channel_layer
from django.db import transaction
from pydantic import AfterValidator, BaseModel, Field

from portal.choices import LiveEventKind

logger = logging.getLogger(__name__)

# Everyone allowed to view the portal joins this group.
DASHBOARD_GROUP = "dashboard"


def subject_group(subject_type: str, subject_id: Any) -> str:
    """Group for one object's page (e.g. an action streaming its output)."""
    return f"subject.{subject_type.replace('.', '-')}.{subject_id}"


def _registered_kind(value: str) -> str:
    return LiveEventKind(value)  # ValueError (a validation error) for an unknown kind


class LiveEvent(BaseModel):
    kind: Annotated[str, AfterValidator(_registered_kind)]  # any app's (portal.kinds)
    subject_type: str = Field(max_length=60)
    subject_id: str = Field(max_length=64)
    status: str = ""
    summary: str = Field(default="", max_length=300)
    data: dict[str, Any] = Field(default_factory=dict)


class _Publisher:
    """One event loop in a thread, kept for the life of the process.

    ``async_to_sync`` per event would start a loop and a Redis connection each
    time (~20 ms, measured on the approval-to-execution path); this reuses both.
    Sends stay synchronous (bounded by a timeout), so nothing is lost when a
    worker process exits right after its job.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid = 0
        self.lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            # A forked RQ work horse inherits a loop whose thread does not exist in it.
            if self.loop is None or self.pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="live-publisher", daemon=True
                ).start()
                self.loop, self.pid = loop, os.getpid()
            return self.loop

    def send(self, groups: list[str], message: dict, timeout: float = 2.0) -> None:
        layer = get_channel_layer()
        if layer is None:
            return

        async def _send_all():
            await asyncio.gather(*(layer.group_send(group, message) for group in groups))

        future = asyncio.run_coroutine_threadsafe(_send_all(), self._ensure_loop())
        future.result(timeout=timeout)


_publisher = _Publisher()


def _send(groups: list[str], event: LiveEvent) -> None:
    message = {"type": "live.event", "event": event.model_dump(mode="json")}
    try:
        _publisher.send(groups, message)
    except Exception:
        # The change is committed; a dashboard missing one push is not worth failing for.
        logger.warning("live event to %s not delivered", groups, exc_info=True)


def publish(event: LiveEvent, *, dashboard: bool = True) -> None:
    """Send ``event`` to the dashboard and to its subject's page, on commit."""
    groups = [subject_group(event.subject_type, event.subject_id)]
    if dashboard:
        groups.insert(0, DASHBOARD_GROUP)
    transaction.on_commit(lambda: _send(groups, event))
