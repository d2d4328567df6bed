"""Live events over real channels-redis: only committed changes are announced."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client

from portal.asgi import application
from portal.choices import LiveEventKind
from portal.live import LiveEvent, publish

pytestmark = pytest.mark.django_db(transaction=True)


def _cookie_for(user) -> bytes:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


def _communicator(path: str, cookie: bytes | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


def _event(subject_id: str, status: str) -> LiveEvent:
    return LiveEvent(
        kind=LiveEventKind.PRA_ACTION,
        subject_type="pra.praaction",
        subject_id=subject_id,
        status=status,
    )


def _publish_committed(subject_id: str) -> None:
    with transaction.atomic():
        publish(_event(subject_id, "APPROVED"))


def _publish_rolled_back(subject_id: str) -> None:
    try:
        with transaction.atomic():
            publish(_event(subject_id, "ROLLED-BACK"))
            raise RuntimeError("abort")
    except RuntimeError:
        pass


def test_layer_is_redis():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"


def test_viewer_receives_committed_events_but_not_rolled_back_ones(viewer):
    cookie = _cookie_for(viewer)

    async def scenario():
        ws = _communicator("/ws/live/", cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(_publish_rolled_back)("7")
        await database_sync_to_async(_publish_committed)("8")
        message = await ws.receive_json_from(timeout=5)
        assert message["type"] == "event"
        assert message["event"]["subject_id"] == "8"
        assert message["event"]["status"] == "APPROVED"
        # Nothing else is queued: the rolled-back event never left.
        assert await ws.receive_nothing(timeout=0.3)
        await ws.disconnect()

    async_to_sync(scenario)()


def test_subject_page_receives_only_its_subject(viewer):
    cookie = _cookie_for(viewer)

    async def scenario():
        ws = _communicator("/ws/live/pra.praaction/42/", cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(_publish_committed)("41")
        await database_sync_to_async(_publish_committed)("42")
        message = await ws.receive_json_from(timeout=5)
        assert message["event"]["subject_id"] == "42"
        await ws.disconnect()

    async_to_sync(scenario)()


def test_anonymous_websocket_is_refused():
    async def scenario():
        ws = _communicator("/ws/live/", None)
        connected, code = await ws.connect()
        assert not connected
        assert code == 4401

    async_to_sync(scenario)()


def test_user_without_a_role_is_refused(nobody):
    cookie = _cookie_for(nobody)

    async def scenario():
        ws = _communicator("/ws/live/", cookie)
        connected, code = await ws.connect()
        assert not connected
        assert code == 4403

    async_to_sync(scenario)()


def test_foreign_origin_is_refused(viewer):
    cookie = _cookie_for(viewer)

    async def scenario():
        ws = WebsocketCommunicator(
            application,
            "/ws/live/",
            headers=[(b"origin", b"http://evil.example"), (b"cookie", cookie)],
        )
        connected, _ = await ws.connect()
        assert not connected

    async_to_sync(scenario)()
