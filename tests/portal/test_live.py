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


def test_a_ping_rejoins_the_group_after_a_redis_flush(viewer):
    """FLUSHDB wipes the group memberships: the socket stays open but hears nothing. The
    client's next ping (live.js sends one every 25 s) joins the group again."""
    from portal.lib.redis import get_redis

    cookie = _cookie_for(viewer)

    async def scenario():
        ws = _communicator("/ws/live/", cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(lambda: get_redis().flushdb())()
        await database_sync_to_async(_publish_committed)("41")
        assert await ws.receive_nothing(timeout=0.5)  # membership gone with the flush
        await ws.send_json_to({"type": "ping"})
        assert (await ws.receive_json_from(timeout=5)) == {"type": "pong"}
        await database_sync_to_async(_publish_committed)("42")
        message = await ws.receive_json_from(timeout=5)
        assert message["event"]["subject_id"] == "42"
        await ws.disconnect()

    async_to_sync(scenario)()


def _action(operator) -> str:
    from tests.factories import offline_host, propose

    return str(propose(operator, offline_host()).pk)


def test_subject_page_receives_only_its_subject(viewer, operator):
    cookie = _cookie_for(viewer)
    pk = _action(operator)
    other = str(int(pk) + 1000)

    async def scenario():
        ws = _communicator(f"/ws/live/pra.praaction/{pk}/", cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(_publish_committed)(other)
        await database_sync_to_async(_publish_committed)(pk)
        message = await ws.receive_json_from(timeout=5)
        assert message["event"]["subject_id"] == pk
        await ws.disconnect()

    async_to_sync(scenario)()


def _close_code(path: str, cookie: bytes | None) -> int | None:
    """The close code a connection to ``path`` gets (None when it is accepted)."""

    async def scenario():
        ws = _communicator(path, cookie)
        connected, code = await ws.connect()
        if connected:
            await ws.disconnect()
            return None
        return code

    return async_to_sync(scenario)()


@pytest.mark.parametrize(
    "path",
    [
        "/ws/live/auth.user/1/",
        "/ws/live/auth.group/1/",
        "/ws/live/portal.apitoken/1/",
        "/ws/live/portal.auditevent/1/",
        "/ws/live/sessions.session/1/",
        "/ws/live/no.such/1/",
    ],
)
def test_groups_of_other_kinds_of_object_are_refused(admin_user, path):
    """Only subjects the portal publishes have groups to join, whatever the role."""
    assert _close_code(path, _cookie_for(admin_user)) == 4404


def test_a_subject_that_does_not_exist_is_refused(viewer, operator):
    pk = _action(operator)
    cookie = _cookie_for(viewer)
    assert _close_code(f"/ws/live/pra.praaction/{pk}/", cookie) is None
    assert _close_code(f"/ws/live/pra.praaction/{int(pk) + 1000}/", cookie) == 4404
    assert _close_code("/ws/live/incidents.incident/1/", cookie) == 4404


def test_a_role_that_may_not_view_the_model_is_refused(operator):
    """view_portal alone (e.g. a custom group) does not reach a model's live events."""
    from django.contrib.auth.models import Group, Permission

    from tests.conftest import make_user

    pk = _action(operator)
    group = Group.objects.create(name="dashboard-only")
    group.permissions.add(Permission.objects.get(codename="view_portal"))
    user = make_user("dora-dashboard", None)
    user.groups.add(group)
    cookie = _cookie_for(user)
    assert _close_code("/ws/live/", cookie) is None
    assert _close_code(f"/ws/live/pra.praaction/{pk}/", cookie) == 4403


def test_every_published_subject_type_is_allowed():
    """The allow-list names every subject ``publish`` is called with in the apps."""
    import re
    from pathlib import Path

    from portal.consumers import SUBJECTS

    root = Path(__file__).resolve().parents[2]
    published = set()
    for app in ("portal", "pra", "incidents", "backups"):
        for path in (root / app).rglob("*.py"):
            text = path.read_text()
            if "LiveEvent(" in text:
                published |= set(re.findall(r'subject_type="([a-z_]+\.[a-z_]+)"', text))
    assert published, "no publish call found: the scan is broken"
    assert published <= set(SUBJECTS), published - set(SUBJECTS)


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
