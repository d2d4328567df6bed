"""Redis end to end with the real tools: a throwaway redis-server with keys of every type,
an RDB over the network (redis-cli --rdb, password through REDISCLI_AUTH), redis-check-rdb,
then a restore into a fresh server that must hold exactly the same data."""

import pytest

from backups.choices import ArtifactFormat, RestoreMode, RestoreStatus, SourceKind, Verification
from tests.backups.helpers import backup_now, make_source, plan_now
from tests.backups.restoring import approve_and_run, redis_target

pytestmark = pytest.mark.django_db


def fill(client, db1):
    client.set("plain", "value")
    client.set("counter", 42)
    client.set("expiring", "soon", ex=3600)
    client.rpush("queue", *[f"job-{i}" for i in range(200)])
    client.hset("user:1", mapping={"name": "Ada", "role": "admin"})
    client.sadd("tags", "a", "b", "c")
    client.zadd("scores", {"ada": 3.5, "bob": 1.25})
    client.xadd("events", {"kind": "login", "who": "ada"})
    client.set("big", b"\x00\xff" * 50_000)
    for i in range(2000):
        client.set(f"k:{i}", i)
    db1.set("other-db", "yes")


def read(client, key):
    kind = client.type(key).decode()
    if kind == "string":
        return kind, client.get(key)
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "hash":
        return kind, client.hgetall(key)
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    return kind, [fields for _, fields in client.xrange(key)]


def content(server) -> dict:
    result = {}
    for db in (0, 1):
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            result[(db, key)] = (*read(client, key), client.ttl(key) > 0)
    return result


def test_rdb_backup_restores_into_a_fresh_server_identically(
    redis_server, operator, approver, admin_user, capture, monkeypatch
):
    monkeypatch.setenv("TEST_REDIS_SOURCE_PASSWORD", "s3cret-redis")
    live = redis_server(password="s3cret-redis")
    fill(live.client(), live.client(1))
    before = content(live)
    source = make_source(
        "cache", SourceKind.REDIS, dsn=live.url, password_env="TEST_REDIS_SOURCE_PASSWORD"
    )

    run = backup_now(source, operator, capture)

    assert run.verification == Verification.VERIFIED, (run.error, run.verify_detail)
    artifact = run.artifacts.get()
    assert artifact.format == ArtifactFormat.RDB
    assert artifact.facts["keys"] == len(before)
    assert "s3cret-redis" not in run.stderr + run.verify_detail

    fresh = redis_server()
    redis_target(admin_user, fresh, name="fresh")
    req, plan = plan_now(capture, artifact, target={"target": "fresh"}, by=operator)
    assert plan["mode"] == RestoreMode.SCRATCH
    req = approve_and_run(capture, req, approver)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert req.report["keys"] == {"0": len(before) - 1, "1": 1}
    assert content(fresh) == before
