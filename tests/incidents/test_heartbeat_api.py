"""POST /api/agents/heartbeat: signed, typed, size-limited; bad input changes nothing."""

import json
import time

import pytest

from incidents.models import Agent, AgentCommand, HeartbeatSample, Incident
from tests.incidents.helpers import HEARTBEAT, beat, payload, signed_headers

pytestmark = pytest.mark.django_db


def test_a_signed_heartbeat_is_stored_and_returns_pending_commands(client, agent_and_secret):
    agent, secret = agent_and_secret
    command = AgentCommand.objects.create(
        agent=agent, kind="config", payload={"x": 1}, requested_by="t"
    )
    response = beat(client, agent.name, secret, payload(metrics={"cpu_pct": 12.5}))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["commands"] == [{"id": command.pk, "kind": "config", "payload": {"x": 1}}]
    assert body["next_in"] == 120
    agent.refresh_from_db()
    assert agent.version == "1.0.0" and agent.last_telemetry["cpu_pct"] == 12.5
    assert agent.alert_after is not None
    assert HeartbeatSample.objects.filter(agent=agent).count() == 1
    command.refresh_from_db()
    assert command.status == "DELIVERED"
    # Delivered once: the next heartbeat does not carry it again.
    assert beat(client, agent.name, secret).json()["commands"] == []


def _nothing_stored(agent):
    agent.refresh_from_db()
    assert agent.last_seen is None
    assert not HeartbeatSample.objects.exists()
    assert not Incident.objects.exists()


def test_a_replayed_heartbeat_is_refused(client, agent_and_secret):
    agent, secret = agent_and_secret
    body = json.dumps(payload()).encode()
    headers = signed_headers(agent.name, secret, body)
    first = client.post(HEARTBEAT, data=body, content_type="application/json", **headers)
    assert first.status_code == 200
    again = client.post(HEARTBEAT, data=body, content_type="application/json", **headers)
    assert again.status_code == 409
    assert again.json()["error"] == "stale"
    assert "replayed" in again.json()["message"]
    assert HeartbeatSample.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Offsets from the clock when the test runs (not when it is collected).
        ({"timestamp": -301}, "timestamp"),
        ({"timestamp": +400}, "timestamp"),
        ({"HTTP_X_AGENT_SIGNATURE": "0" * 64}, "bad signature"),
        ({"HTTP_X_AGENT": "someone-else"}, "bad signature"),
        ({"nonce": "short"}, "nonce"),
        ({"HTTP_X_AGENT_SIGNATURE": ""}, "missing"),
        ({"HTTP_X_AGENT_SIGNATURE": "é" * 64}, "64 hex"),
        ({"timestamp": "²"}, "timestamp"),
        ({"timestamp": "9" * 5000}, "timestamp"),
    ],
)
def test_forged_or_stale_heartbeats_are_refused(client, agent_and_secret, overrides, message):
    agent, secret = agent_and_secret
    if isinstance(overrides.get("timestamp"), int):
        overrides = {**overrides, "timestamp": int(time.time()) + overrides["timestamp"]}
    response = beat(client, agent.name, secret, **overrides)
    assert response.status_code == 401
    assert message in response.json()["message"]
    _nothing_stored(agent)


def test_a_wrong_secret_is_refused(client, agent_and_secret):
    agent, _ = agent_and_secret
    response = beat(client, agent.name, "not-the-secret")
    assert response.status_code == 401
    _nothing_stored(agent)


@pytest.mark.parametrize(
    "body",
    [
        payload(errors_last_24h="many"),
        payload(errors_last_24h=-1),
        payload(webhook_fail_rate=1.5),
        payload(version="1.0; rm -rf /"),
        payload(env="Prod Env"),
        payload(metrics={"cpu_pct": 250}),
        payload(metrics={"cpu_pct": "high"}),
        payload(metrics={"Bad-Key": 1}),
        payload(services={"unbound": "exploded"}),
        payload(surprise=1),
        {"version": "1.0.0"},
    ],
)
def test_bad_bodies_get_a_clear_4xx_and_nothing_is_stored(client, agent_and_secret, body):
    agent, secret = agent_and_secret
    response = beat(client, agent.name, secret, body)
    assert 400 <= response.status_code < 500, response.content
    assert response.json()
    _nothing_stored(agent)


def test_malformed_json_and_oversized_bodies(client, agent_and_secret, settings):
    agent, secret = agent_and_secret
    body = b"{not json"
    response = client.post(
        HEARTBEAT, data=body, content_type="application/json",
        **signed_headers(agent.name, secret, body),
    )  # fmt: skip
    assert 400 <= response.status_code < 500
    big = json.dumps(payload(metrics={f"m{i}": i for i in range(40)}, pad="x" * 20000)).encode()
    assert len(big) > settings.HEARTBEAT_MAX_BYTES
    response = client.post(
        HEARTBEAT, data=big, content_type="application/json",
        **signed_headers(agent.name, secret, big),
    )  # fmt: skip
    assert response.status_code == 413
    _nothing_stored(agent)


def test_disabled_agents_are_refused(client, agent_and_secret):
    agent, secret = agent_and_secret
    Agent.objects.filter(pk=agent.pk).update(enabled=False)
    assert beat(client, agent.name, secret).status_code == 401


def test_command_ack_and_fail(client, agent_and_secret):
    agent, secret = agent_and_secret
    command = AgentCommand.objects.create(agent=agent, kind="config", requested_by="t")
    beat(client, agent.name, secret)
    path = f"/api/agents/commands/{command.pk}/ack"
    body = json.dumps({"output": "applied"}).encode()
    ok = client.post(path, data=body, content_type="application/json",
                     **signed_headers(agent.name, secret, body, path=path))  # fmt: skip
    assert ok.status_code == 200, ok.content
    command.refresh_from_db()
    assert command.status == "ACKED" and command.output == "applied"
    again = client.post(path, data=body, content_type="application/json",
                        **signed_headers(agent.name, secret, body, path=path))  # fmt: skip
    assert again.status_code == 409
    missing = "/api/agents/commands/9999/fail"
    gone = client.post(missing, data=body, content_type="application/json",
                       **signed_headers(agent.name, secret, body, path=missing))  # fmt: skip
    assert gone.status_code == 404


def test_another_agents_command_cannot_be_acked(client, agent_and_secret):
    from incidents import actions

    agent, secret = agent_and_secret
    other, _ = actions.create_agent(name="other-agent")
    command = AgentCommand.objects.create(agent=other, kind="config", requested_by="t")
    path = f"/api/agents/commands/{command.pk}/ack"
    body = b"{}"
    response = client.post(path, data=body, content_type="application/json",
                           **signed_headers(agent.name, secret, body, path=path))  # fmt: skip
    assert response.status_code == 404
    command.refresh_from_db()
    assert command.status == "PENDING"
