"""Redis overwrite restores are all or nothing (issue 10 §9).

The restore stages the backup in spare database indexes of the target and
switches with SWAPDB in one MULTI/EXEC (see ``backups/redis_restore.py``).
Failures are injected midway with real servers: a key the target's ACL
refuses, a TCP connection cut in the middle of the transfer (a real proxy),
too little memory. Each time the target must be exactly as before, compared
key by key (DUMP payloads and TTLs, all 16 databases).
"""

import os

import pytest

from backups import redis_restore
from backups.choices import RestoreMode, RestoreStatus, SourceKind
from backups.restore import RedisTarget, RestoreError
from backups.storage import get_storage
from tests.backups.faults import CuttingProxy
from tests.backups.helpers import backup_now, make_source, plan_now
from tests.backups.restoring import approve_and_run, redis_target
from tests.backups.test_redis_roundtrip import fill, read

pytestmark = pytest.mark.django_db


def dump_all(server) -> dict:
    """Every key of every database: its DUMP payload and whether it has a TTL."""
    result = {}
    for db in range(16):
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            result[(db, key)] = (client.dump(key), client.pttl(key) > 0)
    return result


def everything(server) -> dict:
    result = {}
    for db in range(16):
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            result[(db, key)] = (*read(client, key), client.ttl(key) > 0)
    return result


def restore_calls(server) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_restore", {}).get("calls", 0))


@pytest.fixture
def backup(redis_server, operator, capture):
    """A verified RDB of a server with keys in databases 0 and 1 (about 700 KB to send)."""
    source = redis_server()
    fill(source.client(), source.client(1))
    pipe = source.client().pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"blob:{i}", os.urandom(150))
    pipe.execute()
    run = backup_now(make_source("cache", SourceKind.REDIS, dsn=source.url), operator, capture)
    assert run.usable, (run.error, run.verify_detail)
    return run.artifacts.get(), everything(source)


@pytest.fixture
def live(redis_server):
    """The target: other data, in databases 0, 1 and 2 (2 is not in the backup)."""
    server = redis_server(password="admin-pw")
    for db in (0, 1, 2):
        client = server.client(db).pipeline(transaction=False)
        client.set("live:config", f"db{db}")
        client.hset("live:user:7", mapping={"name": "Grace"})
        client.set("live:session", "abc", ex=3600)
        for i in range(300):
            client.set(f"live:{i}", i)
        client.execute()
    return server


def test_an_overwrite_replaces_every_database_at_once(
    backup, live, operator, approver, approver2, admin_user, capture, monkeypatch
):
    artifact, expected = backup
    monkeypatch.setenv("TEST_LIVE_REDIS_PW", "admin-pw")
    redis_target(admin_user, live, name="live-cache", password_env="TEST_LIVE_REDIS_PW")
    name = f"127.0.0.1:{live.port}"
    req, plan = plan_now(
        capture, artifact, target={"target": "live-cache"}, by=operator, confirmation=name
    )
    assert plan["mode"] == RestoreMode.OVERWRITE and "switched at once" in plan["overwrites"]
    req = approve_and_run(capture, req, approver, approver2, confirmation=name)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    # Exactly the backup: database 2 (not in it) emptied, nothing left in the staging ones.
    assert everything(live) == expected
    assert req.report["staging_databases"] == {"0": 15, "1": 14}
    assert req.report["flushed_databases"] == [2] and req.report["warnings"] == []
    assert req.safety_run.usable  # the old data is in the safety backup


def test_a_key_the_target_refuses_midway_leaves_it_exactly_as_before(
    backup, live, operator, approver, approver2, admin_user, capture, monkeypatch
):
    """The restore's user may not write keys starting with "p" (the backup has "plain"):
    RESTORE fails partway through the transfer with NOPERM."""
    artifact, _ = backup
    live.client().execute_command(
        "ACL", "SETUSER", "restorer", "on", ">restorer-pw", "~[^p]*", "+@all"
    )
    before = dump_all(live)
    monkeypatch.setenv("TEST_RESTORER_PW", "restorer-pw")
    redis_target(admin_user, live, name="live-cache", username="restorer",
                 password_env="TEST_RESTORER_PW")  # fmt: skip
    name = f"127.0.0.1:{live.port}"
    req, _ = plan_now(
        capture, artifact, target={"target": "live-cache"}, by=operator, confirmation=name
    )
    req = approve_and_run(capture, req, approver, approver2, confirmation=name)
    assert req.status == RestoreStatus.FAILED
    assert "refused key b'plain': this user has no permissions" in req.error
    assert "nothing was changed" in req.error
    assert restore_calls(live) > 100  # it failed midway, after writing keys (into staging)
    assert dump_all(live) == before


def test_a_connection_cut_mid_transfer_leaves_the_target_exactly_as_before(backup, live):
    """The restore reaches the target through a proxy that cuts the link mid-command once
    256 KB went through (the restore I/O layer is called directly: no plan needed)."""
    artifact, _ = backup
    before = dump_all(live)
    proxy = CuttingProxy(live.port, cut_after=256 * 1024)
    try:
        os.environ["TEST_LIVE_REDIS_PW"] = "admin-pw"
        target = RedisTarget(
            url=f"redis://127.0.0.1:{proxy.port}", password_env="TEST_LIVE_REDIS_PW"
        )
        with pytest.raises(RestoreError) as stopped:
            redis_restore.restore_redis(target, get_storage(), artifact, RestoreMode.OVERWRITE)
    finally:
        os.environ.pop("TEST_LIVE_REDIS_PW", None)
        proxy.stop()
    assert proxy.cuts == 1
    assert "stopped before the switch" in str(stopped.value)
    assert "nothing was changed" in str(stopped.value)
    assert restore_calls(live) > 100  # midway: keys had been staged
    assert dump_all(live) == before


def test_too_little_memory_is_refused_before_anything_is_written(backup, live):
    artifact, _ = backup
    admin = live.client()
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used + 200_000)
    admin.config_set("maxmemory-policy", "allkeys-lru")  # staging could evict live keys
    before = dump_all(live)
    os.environ["TEST_LIVE_REDIS_PW"] = "admin-pw"
    try:
        target = RedisTarget(url=live.url, password_env="TEST_LIVE_REDIS_PW")
        with pytest.raises(RestoreError, match="not enough memory"):
            redis_restore.restore_redis(target, get_storage(), artifact, RestoreMode.OVERWRITE)
    finally:
        os.environ.pop("TEST_LIVE_REDIS_PW", None)
    assert restore_calls(live) == 0
    admin.config_set("maxmemory", 0)
    assert dump_all(live) == before
