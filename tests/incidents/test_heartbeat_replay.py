"""Replay protection lives in PostgreSQL (a per-agent high-water mark set by the heartbeat's
own UPDATE), so it holds whatever happens to Redis. Real PostgreSQL and the test Redis."""

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from incidents import actions
from incidents.agent_client import Agent as ReferenceAgent
from incidents.models import Agent, HeartbeatSample
from incidents.signing import parse_timestamp
from portal.lib.redis import get_redis
from tests.incidents.helpers import HEARTBEAT, beat, fresh_timestamp, payload, signed_headers

pytestmark = pytest.mark.django_db


def _post(client, body: bytes, headers: dict):
    return client.post(HEARTBEAT, data=body, content_type="application/json", **headers)


def test_a_captured_heartbeat_is_refused_after_a_redis_flush(client, agent_and_secret):
    agent, secret = agent_and_secret
    body = json.dumps(payload(errors_last_24h=3)).encode()
    captured = signed_headers(agent.name, secret, body)
    assert _post(client, body, captured).status_code == 200
    agent.refresh_from_db()
    seen, telemetry = agent.last_seen, agent.last_telemetry

    get_redis().flushdb()  # the test Redis (TEST_REDIS_DB) only
    replay = _post(client, body, captured)

    assert replay.status_code == 409, replay.content
    assert replay.json() == {
        "error": "stale",
        "message": "replayed request: this heartbeat (same timestamp and nonce) was already "
        "accepted",
    }
    assert HeartbeatSample.objects.filter(agent=agent).count() == 1
    agent.refresh_from_db()
    assert (agent.last_seen, agent.last_telemetry) == (seen, telemetry)


def test_an_older_never_seen_heartbeat_is_refused_as_out_of_order(client, agent_and_secret):
    """Documented behaviour: heartbeats are snapshots, so one signed before the last accepted
    one (delayed on the network, or a second process using the same agent) is refused, not
    applied over newer telemetry."""
    agent, secret = agent_and_secret
    older_body = json.dumps(payload(errors_last_24h=1)).encode()
    older = signed_headers(agent.name, secret, older_body)  # signed first...
    newer_body = json.dumps(payload(errors_last_24h=2)).encode()
    newer = signed_headers(agent.name, secret, newer_body)
    assert _post(client, newer_body, newer).status_code == 200  # ...arrives second

    late = _post(client, older_body, older)

    assert late.status_code == 409
    message = late.json()["message"]
    assert message.startswith("out-of-order or replayed heartbeat: signed at ")
    assert "strictly increasing timestamp" in message
    assert HeartbeatSample.objects.count() == 1
    agent.refresh_from_db()
    assert agent.last_telemetry["errors_last_24h"] == 2


def test_the_same_timestamp_with_another_nonce_is_refused(client, agent_and_secret):
    agent, secret = agent_and_secret
    stamp = fresh_timestamp()
    assert beat(client, agent.name, secret, timestamp=stamp).status_code == 200
    again = beat(client, agent.name, secret, timestamp=stamp)  # new nonce, same instant
    assert again.status_code == 409
    assert "out-of-order" in again.json()["message"]
    assert HeartbeatSample.objects.count() == 1


def test_whole_second_timestamps_still_work_a_second_apart(client, agent_and_secret):
    """Agents written against the first version of the scheme send whole seconds."""
    agent, secret = agent_and_secret
    now = int(parse_timestamp(fresh_timestamp()) // 1_000_000)
    assert beat(client, agent.name, secret, timestamp=now - 1).status_code == 200
    assert beat(client, agent.name, secret, timestamp=now).status_code == 200
    agent.refresh_from_db()
    assert agent.last_signed_us == now * 1_000_000
    assert HeartbeatSample.objects.count() == 2


def test_the_mark_records_the_precise_signed_time_and_nonce(client, agent_and_secret):
    agent, secret = agent_and_secret
    stamp = fresh_timestamp()
    assert beat(client, agent.name, secret, timestamp=stamp, nonce="n" * 20).status_code == 200
    agent.refresh_from_db()
    assert agent.last_signed_us == parse_timestamp(stamp)
    assert agent.last_nonce == "n" * 20
    assert stamp.split(".")[1] != "" and len(stamp.split(".")[1]) == 6


@pytest.mark.parametrize("stamp", ["1700000000.1234567", "1.7e9", "1700000000.", ".5", "-1"])
def test_malformed_timestamps_are_refused(client, agent_and_secret, stamp):
    agent, secret = agent_and_secret
    response = beat(client, agent.name, secret, timestamp=stamp)
    assert response.status_code == 401
    assert "timestamp" in response.json()["message"]


def test_the_update_itself_refuses_a_stale_heartbeat(client, agent_and_secret):
    """The early check reads the row the signature check loaded; the compare-and-swap in the
    UPDATE is what holds when two heartbeats of one agent race past that check."""
    agent, secret = agent_and_secret
    loaded = Agent.objects.get(pk=agent.pk)  # as a request that read the row a moment ago
    assert beat(client, agent.name, secret).status_code == 200
    with pytest.raises(actions.IncidentError) as refused:
        actions.ingest_heartbeat(
            loaded, version="9.9.9", environment="production", telemetry={"x": 1},
            signed_us=1, nonce="a" * 16,
        )  # fmt: skip
    assert refused.value.code == "stale"
    assert HeartbeatSample.objects.count() == 1
    agent.refresh_from_db()
    assert agent.version == "1.0.0"


def test_rotating_the_secret_clears_the_mark(client, agent_and_secret):
    agent, secret = agent_and_secret
    assert beat(client, agent.name, secret).status_code == 200
    new_secret = actions.rotate_agent_secret(agent, by="system:test")
    agent.refresh_from_db()
    assert agent.last_signed_us is None and agent.last_nonce == ""
    assert beat(client, agent.name, secret).status_code == 401  # the old secret is dead
    assert beat(client, agent.name, new_secret).status_code == 200


def test_the_reference_agent_signs_strictly_increasing_microseconds():
    agent = ReferenceAgent(url="http://127.0.0.1:1", name="a", secret="s", version="1")
    stamps = [agent.next_timestamp() for _ in range(1000)]
    micros = [parse_timestamp(s) for s in stamps]
    assert all(b > a for a, b in zip(micros, micros[1:], strict=False))
    assert all(len(s.split(".")[1]) == 6 for s in stamps)


def test_the_replay_check_adds_no_query_to_a_quiet_heartbeat(client, agent_and_secret):
    """Issue 12's budget: the replay check is a condition of the UPDATE the heartbeat does
    anyway, and Redis is not asked at all (it may be flushed, or down)."""
    agent, secret = agent_and_secret
    assert beat(client, agent.name, secret).status_code == 200  # rules cache warm
    get_redis().flushdb()
    with CaptureQueriesContext(connection) as queries:
        assert beat(client, agent.name, secret).status_code == 200
    statements = [  # savepoints only exist because the test runs inside a transaction
        q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]
    ]
    kinds = [
        sql.split()[0] + " " + re.search(r'(?:FROM|UPDATE|INTO) "(\w+)"', sql).group(1)
        for sql in statements
    ]
    assert kinds == [
        "SELECT incidents_agent",  # the signature check
        "UPDATE incidents_agent",  # the write, and the replay check
        "INSERT incidents_heartbeatsample",
        "SELECT incidents_autopatchattempt",  # a patch in flight?
        "SELECT incidents_incident",  # anything to clear?
        "SELECT incidents_agentcommand",  # commands to deliver
    ], statements
    update = next(sql for sql in statements if sql.startswith("UPDATE"))
    assert '"last_signed_us" <' in update.split("WHERE", 1)[1]
    assert get_redis().dbsize() == 0


def test_the_agent_page_shows_the_mark(client, agent_and_secret, admin_user):
    agent, secret = agent_and_secret
    client.force_login(admin_user)
    url = f"/admin/incidents/agent/{agent.pk}/change/"
    assert "last signed heartbeat" in client.get(url).content.decode().lower()
    stamp = fresh_timestamp()
    beat(client, agent.name, secret, timestamp=stamp, nonce="m" * 16)
    page = client.get(url).content.decode()
    assert f"(nonce {'m' * 16})" in page
    assert f".{stamp.split('.')[1]}+00:00" in page  # to the microsecond
