"""Shared fixtures: personas, a clean test Redis, the live-event layer."""

from __future__ import annotations

import os

import pytest

from portal.roles import Role


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """PBKDF2's deliberate slowness costs ~0.3 s per persona; tests need no such cost."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _own_audit_anchors(settings, tmp_path):
    """Audit anchors are files: written in one test, they would outlive its rollback."""
    settings.AUDIT_ANCHOR_DIR = tmp_path / "audit-anchors"


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """channels keeps one layer object per process, and channels-redis binds its receive
    lock to the event loop that first used it. Tests run each websocket scenario on a new
    loop (async_to_sync): a layer left with a receive pending on a closed loop made a
    later test wait forever on that lock. Each test gets its own layer."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _clean_redis():
    """Each test starts with an empty test Redis database (only the runner's own DB)."""
    if os.environ.get("PORTAL_TEST_REDIS_FLUSH") == "1":
        from portal.lib.redis import get_redis

        get_redis().flushdb()
    yield


TEST_PASSWORD = "pw-for-tests-only-1"


def make_user(username: str, role: str | None, password: str = TEST_PASSWORD):
    from django.contrib.auth import get_user_model

    from portal.actions import set_user

    if role is None:
        return get_user_model().objects.create_user(username, password=password)
    user, _ = set_user(username, role=role, password=password, check_password=False)
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera-viewer", Role.VIEWER)


@pytest.fixture
def operator(db):
    return make_user("otto-operator", Role.OPERATOR)


@pytest.fixture
def operator2(db):
    return make_user("olga-operator", Role.OPERATOR)


@pytest.fixture
def approver(db):
    return make_user("anna-approver", Role.APPROVER)


@pytest.fixture
def approver2(db):
    return make_user("arno-approver", Role.APPROVER)


@pytest.fixture
def admin_user(db):
    return make_user("ada-admin", Role.ADMIN)


@pytest.fixture
def nobody(db):
    """An authenticated account with no role at all."""
    return make_user("ned-norole", None)


#: The persona of a request nobody signed in for (role tables, admin checks).
ANON = "anonymous"
PERSONAS = ("viewer", "operator", "approver", "admin_user", "nobody")
