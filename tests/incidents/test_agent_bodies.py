"""Agent request bodies are parsed strictly: media type, duplicate keys, no coercion, and no
text PostgreSQL cannot store (NUL, unpaired surrogates). Every refusal is a 4xx naming the
problem, and nothing is written (no sample, no agent update, no audit row)."""

import json

import pytest

from incidents.models import AgentCommand, HeartbeatSample, Incident
from portal.models import AuditEvent
from tests.incidents.helpers import HEARTBEAT, beat, payload, post_signed

pytestmark = pytest.mark.django_db

GOOD = b'{"errors_last_24h": 0, "webhook_fail_rate": 0.0, "version": "1.0.0", "env": "production"}'


def _nothing_stored(agent):
    agent.refresh_from_db()
    assert agent.last_seen is None and agent.last_signed_us is None
    assert not HeartbeatSample.objects.exists()
    assert not Incident.objects.exists()


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", ""],
)
def test_bodies_that_are_not_json_by_media_type_get_415(client, agent_and_secret, content_type):
    agent, secret = agent_and_secret
    response = post_signed(client, agent.name, secret, GOOD, content_type=content_type)
    assert response.status_code == 415, response.content
    assert "Content-Type must be application/json" in response.json()["message"]
    _nothing_stored(agent)


def test_json_with_a_utf8_charset_is_fine(client, agent_and_secret):
    agent, secret = agent_and_secret
    response = post_signed(
        client, agent.name, secret, GOOD, content_type="application/json; charset=UTF-8"
    )
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (payload(errors_last_24h=True), "errors_last_24h"),
        (payload(errors_last_24h="3"), "errors_last_24h"),
        (payload(errors_last_24h=2.0), "errors_last_24h"),
        (payload(webhook_fail_rate=False), "webhook_fail_rate"),
        (payload(webhook_fail_rate="0.1"), "webhook_fail_rate"),
        (payload(metrics={"cpu_pct": True}), "metrics.cpu_pct"),
        (payload(version=1), "version"),
    ],
)
def test_no_type_coercion(client, agent_and_secret, body, named):
    agent, secret = agent_and_secret
    response = beat(client, agent.name, secret, body)
    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(f"{named}: "), response.json()
    _nothing_stored(agent)


def test_integers_are_still_fine_for_number_fields(client, agent_and_secret):
    agent, secret = agent_and_secret
    response = beat(client, agent.name, secret, payload(webhook_fail_rate=0, metrics={"load1": 2}))
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (GOOD[:-1] + b', "version": "6.6.6"}', "version"),
        (GOOD[:-1] + b', "metrics": {"cpu_pct": 1, "cpu_pct": 99}}', "cpu_pct"),
    ],
)
def test_duplicate_keys_are_refused(client, agent_and_secret, body, key):
    agent, secret = agent_and_secret
    response = post_signed(client, agent.name, secret, body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "duplicate_key",
        "message": f"duplicate key {key!r} in the JSON body",
    }
    _nothing_stored(agent)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD.replace(b"0.0", b"NaN"), "NaN is not a JSON number"),
        (GOOD.replace(b"0.0", b"Infinity"), "Infinity is not a JSON number"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'"text"', "body must be a JSON object"),
        (GOOD.replace(b"production", b"caf\xe9"), "body is not UTF-8"),
        (GOOD.replace(b"1.0.0", b"1.0\x00"), "body is not valid JSON"),  # raw control character
        (GOOD[:-1], "body is not valid JSON"),
    ],
)
def test_what_is_not_strict_json_is_refused(client, agent_and_secret, body, message):
    agent, secret = agent_and_secret
    response = post_signed(client, agent.name, secret, body)
    assert response.status_code == 400, response.content
    assert message in response.json()["message"]
    _nothing_stored(agent)


UNSTORABLE = ["\u0000", "\ud800"]


@pytest.mark.parametrize("bad", UNSTORABLE, ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda bad: payload(version=f"1.0{bad}"), "version"),
        (lambda bad: payload(env=f"prod{bad}"), "env"),
        (lambda bad: payload(services={f"unbound{bad}": "active"}), "services"),
        (lambda bad: payload(services={"unbound": f"active{bad}"}), "services.unbound"),
        (lambda bad: payload(metrics={f"cpu{bad}": 1}), "metrics"),
        (lambda bad: payload(**{f"extra{bad}": 1}), "key"),
    ],
)
def test_unstorable_characters_in_heartbeat_text_are_named(
    client, agent_and_secret, bad, make, named
):
    agent, secret = agent_and_secret
    body = json.dumps(make(bad)).encode()  # ensure_ascii: sent as \\u0000 / \\ud800 escapes
    response = post_signed(client, agent.name, secret, body)
    assert response.status_code == 400, response.content
    message = response.json()["message"]
    assert "cannot be stored" in message
    assert named in message
    assert "\x00" not in message and "\ud800" not in message
    _nothing_stored(agent)


def _delivered_command(client, agent, secret):
    command = AgentCommand.objects.create(agent=agent, kind="config", requested_by="t")
    assert beat(client, agent.name, secret).status_code == 200
    return command


@pytest.mark.parametrize("bad", UNSTORABLE, ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("verb", ["ack", "fail"])
def test_unstorable_characters_in_command_output_are_refused(client, agent_and_secret, bad, verb):
    agent, secret = agent_and_secret
    command = _delivered_command(client, agent, secret)
    audit_before = AuditEvent.objects.count()
    path = f"/api/agents/commands/{command.pk}/{verb}"
    body = json.dumps({"output": f"applied{bad}done"}).encode()
    response = post_signed(client, agent.name, secret, body, path=path)
    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith("output")
    assert "cannot be stored" in response.json()["message"]
    command.refresh_from_db()
    assert command.status == "DELIVERED" and command.output == ""
    assert AuditEvent.objects.count() == audit_before


@pytest.mark.parametrize(
    "body",
    [b"text/plain", b'{"output": 1}', b'{"output": "a", "output": "b"}', b'{"other": "x"}'],
)
def test_command_results_are_parsed_strictly_too(client, agent_and_secret, body):
    agent, secret = agent_and_secret
    command = _delivered_command(client, agent, secret)
    path = f"/api/agents/commands/{command.pk}/ack"
    response = post_signed(client, agent.name, secret, body, path=path)
    assert response.status_code == 400, response.content
    command.refresh_from_db()
    assert command.status == "DELIVERED"


def test_command_results_need_the_json_media_type(client, agent_and_secret):
    agent, secret = agent_and_secret
    command = _delivered_command(client, agent, secret)
    path = f"/api/agents/commands/{command.pk}/ack"
    body = b'{"output": "ok"}'
    response = post_signed(client, agent.name, secret, body, path=path, content_type="text/plain")
    assert response.status_code == 415


@pytest.mark.parametrize("name", ["shop\x00plugin", "shop-plugin\ud800", "Shop Plugin"])
def test_agent_names_that_cannot_exist_are_refused_without_a_query(
    client, agent_and_secret, name, django_assert_num_queries
):
    agent, secret = agent_and_secret
    with django_assert_num_queries(0):
        response = beat(client, agent.name, secret, HTTP_X_AGENT=name)
    assert response.status_code == 401
    assert response.json()["message"] == "bad signature or unknown agent"


def test_the_openapi_schema_still_documents_the_bodies(client, admin_user):
    client.force_login(admin_user)
    schema = client.get("/api/openapi.json").json()
    body = schema["paths"][HEARTBEAT]["post"]["requestBody"]["content"]["application/json"]
    assert "errors_last_24h" in body["schema"]["properties"]
    ack = schema["paths"]["/api/agents/commands/{command_id}/ack"]["post"]["requestBody"]
    assert "output" in ack["content"]["application/json"]["schema"]["properties"]
