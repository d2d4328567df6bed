"""The lean heartbeat path: the same answers and rows as the full path, in batches;
everything unusual handed to Django; a server killed mid-batch acknowledges nothing it
did not commit and applies nothing twice. PostgreSQL (the lean path's own connection),
the real ASGI application, and a real uvicorn process for the kill."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from django.db import connection

from incidents import actions, fastpath
from incidents.models import Agent, AgentCommand, HeartbeatSample, Incident
from portal.lib.localservices import port_answers, wait_until
from portal.lib.redis import get_redis
from tests.incidents.helpers import HEARTBEAT, payload, signed_headers

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(settings):
    settings.HEARTBEAT_FAST_PATH = True
    settings.HEARTBEAT_BATCH_WAIT_MS = 20
    from portal.asgi import application

    fastpath._batcher = None
    yield fastpath.wrap(application)
    fastpath._batcher = None


def _scope_headers(name, secret, body, content_type="application/json", **overrides):
    raw = signed_headers(name, secret, body, **overrides)
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"host", b"testserver"),
    ]
    for key, value in raw.items():
        headers.append((key[5:].replace("_", "-").lower().encode(), str(value).encode()))
    return headers


async def _post(app, headers, body: bytes):
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": HEARTBEAT, "raw_path": HEARTBEAT.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
    }  # fmt: skip
    comm = ApplicationCommunicator(app, scope)
    await comm.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await comm.receive_output(30)
    answer = b""
    while True:
        message = await comm.receive_output(30)
        answer += message.get("body", b"")
        if not message.get("more_body"):
            break
    await comm.wait(5)
    return start["status"], json.loads(answer or b"{}")


def post_all(app, requests):
    """Send ``requests`` [(headers, body)] at once from one event loop; their answers."""

    async def main():
        try:
            return await asyncio.gather(*(_post(app, h, b) for h, b in requests))
        finally:
            batcher = fastpath._batcher
            for conn in (batcher.conn, batcher.lookup_conn) if batcher else ():
                if conn is not None:
                    await conn.close()
            fastpath._batcher = None

    return asyncio.run(main())


def body_of(**fields) -> bytes:
    return json.dumps(payload(**fields)).encode()


def test_quiet_heartbeats_are_written_in_batches_with_the_same_rows(app):
    agents = [actions.create_agent(name=f"quiet-{i}") for i in range(20)]
    requests = []
    for agent, secret in agents:
        body = body_of(metrics={"cpu_pct": 12.5})
        requests.append((_scope_headers(agent.name, secret, body), body))
    answers = post_all(app, requests)
    assert [status for status, _ in answers] == [200] * 20
    assert answers[0][1] == {"ok": True, "agent": "quiet-0", "commands": [], "next_in": 120}
    assert HeartbeatSample.objects.count() == 20
    agent = Agent.objects.get(name="quiet-3")
    assert agent.last_telemetry == {"errors_last_24h": 0, "webhook_fail_rate": 0.0, "cpu_pct": 12.5}
    assert agent.version == "1.0.0" and agent.last_signed_us is not None and not agent.missing
    assert (agent.alert_after - agent.last_seen).total_seconds() == 180


def test_the_lean_path_took_them_in_few_statements(app, settings):
    settings.HEARTBEAT_BATCH_WAIT_MS = 50
    agents = [actions.create_agent(name=f"many-{i}") for i in range(30)]
    requests = []
    for agent, secret in agents:
        body = body_of()
        requests.append((_scope_headers(agent.name, secret, body), body))

    stats = {}

    async def main():
        try:
            answers = await asyncio.gather(*(_post(app, h, b) for h, b in requests))
            stats.update(vars(fastpath.batcher().stats))
            return answers
        finally:
            await fastpath.batcher().conn.close()
            await fastpath.batcher().lookup_conn.close()
            fastpath._batcher = None

    answers = asyncio.run(main())
    assert {s for s, _ in answers} == {200}
    assert stats["fast"] == 30 and stats["fallback"] == 0
    assert stats["batches"] < 10 and stats["largest"] > 3


def test_a_replay_is_refused_even_after_a_redis_flush(app):
    agent, secret = actions.create_agent(name="replayed")
    body = body_of()
    headers = _scope_headers(agent.name, secret, body)
    assert post_all(app, [(headers, body)])[0][0] == 200
    get_redis().flushdb()
    status, answer = post_all(app, [(headers, body)])[0]
    assert status == 409 and answer["error"] == "stale"
    assert HeartbeatSample.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"content_type": "text/plain"}, 415, None),
        ({"HTTP_X_AGENT_SIGNATURE": "0" * 64}, 401, None),
        ({"body": b'{"errors_last_24h": 0, "errors_last_24h": 1}'}, 400, "duplicate_key"),
        ({"body": json.dumps(payload(errors_last_24h=True)).encode()}, 400, "invalid"),
        ({"name": "nobody-here"}, 401, None),
    ],
)
def test_refusals_are_djangos_answers(app, change, status, error):
    agent, secret = actions.create_agent(name="refused")
    body = change.pop("body", body_of())
    name = change.pop("name", agent.name)
    content_type = change.pop("content_type", "application/json")
    headers = _scope_headers(name, secret, body, content_type=content_type, **change)
    got, answer = post_all(app, [(headers, body)])[0]
    assert got == status
    if error:
        assert answer["error"] == error
    assert not HeartbeatSample.objects.exists()


def test_a_broken_rule_goes_the_full_way_and_opens_its_incident(app):
    agent, secret = actions.create_agent(name="hot")
    body = body_of(metrics={"cpu_pct": 95})
    status, _ = post_all(app, [(_scope_headers(agent.name, secret, body), body)])[0]
    assert status == 200
    assert Incident.objects.get().cause == "cpu"
    # ... and, with the incident open, the next (healthy) one too: it resolves it.
    body = body_of(metrics={"cpu_pct": 10})
    assert post_all(app, [(_scope_headers(agent.name, secret, body), body)])[0][0] == 200
    assert Incident.objects.get().status == "RESOLVED"


def test_a_missing_agent_beating_again_resolves_its_incident(app):
    agent, secret = actions.create_agent(name="back")
    body = body_of()
    post_all(app, [(_scope_headers(agent.name, secret, body), body)])
    agent.refresh_from_db()
    from datetime import timedelta

    actions.mark_missing_agents(now=agent.alert_after + timedelta(seconds=1))
    assert Incident.objects.filter(cause="heartbeat", status="OPEN").exists()
    body = body_of()
    assert post_all(app, [(_scope_headers(agent.name, secret, body), body)])[0][0] == 200
    assert Incident.objects.get(cause="heartbeat").status == "RESOLVED"
    assert not Agent.objects.get(pk=agent.pk).missing


def test_a_rotated_secret_is_refused_though_the_old_one_was_cached(app):
    agent, secret = actions.create_agent(name="rotated")
    body = body_of()

    async def main():
        try:
            first = await _post(app, _scope_headers(agent.name, secret, body), body)
            await asyncio.to_thread(actions.rotate_agent_secret, agent, by="system:test")
            again = body_of(errors_last_24h=1)
            second = await _post(app, _scope_headers(agent.name, secret, again), again)
            return first, second
        finally:
            await fastpath.batcher().conn.close()
            await fastpath.batcher().lookup_conn.close()
            fastpath._batcher = None

    first, second = asyncio.run(main())
    assert first[0] == 200 and second[0] == 401
    assert HeartbeatSample.objects.count() == 1


def test_commands_are_delivered_once(app):
    agent, secret = actions.create_agent(name="commanded")
    command = actions.send_command(agent, "config", {"x": 1}, by="system:test")
    body = body_of()
    status, answer = post_all(app, [(_scope_headers(agent.name, secret, body), body)])[0]
    assert status == 200
    assert answer["commands"] == [{"id": command.pk, "kind": "config", "payload": {"x": 1}}]
    body = body_of()
    assert post_all(app, [(_scope_headers(agent.name, secret, body), body)])[0][1]["commands"] == []
    assert AgentCommand.objects.get().status == "DELIVERED"


# --- a real server killed mid-batch --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    from django.conf import settings

    return {
        **os.environ, "DATABASE_URL": url, "REDIS_URL": settings.RQ_QUEUES["default"]["URL"],
        "HEARTBEAT_FAST_PATH": "1", "HEARTBEAT_BATCH_WAIT_MS": "1000",
        "HEARTBEAT_BATCH_MAX": "500", "DB_CONN_MAX_AGE": "0", "DEBUG": "0",
        "SECRET_KEY": settings.SECRET_KEY, "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0", "DJANGO_SETTINGS_MODULE": "portal.settings",
    }  # fmt: skip


def _raw_post(port: int, name: str, secret: str, body: bytes, timeout: float = 15) -> int:
    headers = signed_headers(name, secret, body)
    head = [
        f"POST {HEARTBEAT} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head += [f"{k[5:].replace('_', '-')}: {v}" for k, v in headers.items()]  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


SERVERS = {
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port",
                             str(port), "--lifespan", "off", "--no-access-log",
                             "bench.fast_asgi:application"],
    "gateway": lambda port: [sys.executable, "manage.py", "agent_gateway", "--port", str(port),
                             "--workers", "2"],
}  # fmt: skip


def start_server(kind: str, port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        SERVERS[kind](port), cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: port_answers("127.0.0.1", port), timeout=60, what=f"{kind} to listen")
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_a_server_killed_mid_batch_loses_nothing_it_acknowledged(kind):
    """A server (uvicorn, or the agents' gateway) with the lean path and a long batch wait
    (1 s): heartbeats from 40 agents arrive, the server is SIGKILLed while a batch is
    open, is started again, and every agent sends one more. Every heartbeat that got 200
    is in the database; none is in twice; each unacknowledged one is absent or in once."""
    agents = [actions.create_agent(name=f"killed-{i}") for i in range(40)]
    port = _free_port()
    env = _server_env()

    def start():
        return start_server(kind, port, env)

    outcomes: dict[int, int] = {}  # marker -> status (0: no answer)

    def send(marker: int, agent, secret):
        body = json.dumps(payload(errors_last_24h=marker)).encode()
        try:
            outcomes[marker] = _raw_post(port, agent.name, secret, body)
        except OSError:
            outcomes[marker] = 0

    proc = start()
    try:
        # A first round, answered: the lean path is warm (agents cached, statement prepared).
        round_one = [
            threading.Thread(target=send, args=(i, a, s)) for i, (a, s) in enumerate(agents)
        ]
        began = time.monotonic()
        for t in round_one:
            t.start()
        for t in round_one:
            t.join(30)
        assert all(outcomes[i] == 200 for i in range(40)), outcomes
        assert time.monotonic() - began >= 0.95  # they waited for their batch: the lean path
        # The second round: killed while its batch waits.
        round_two = [threading.Thread(target=send, args=(100 + i, a, s))
                     for i, (a, s) in enumerate(agents)]  # fmt: skip
        for t in round_two:
            t.start()
        time.sleep(0.4)  # well inside the 1 s batch, even on a loaded machine
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for t in round_two:
            t.join(30)
        proc = start()
        round_three = [threading.Thread(target=send, args=(200 + i, a, s))
                       for i, (a, s) in enumerate(agents)]  # fmt: skip
        for t in round_three:
            t.start()
        for t in round_three:
            t.join(30)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    markers = [s.telemetry["errors_last_24h"] for s in HeartbeatSample.objects.all()]
    assert len(markers) == len(set(markers)), "a heartbeat was applied twice"
    acknowledged = {m for m, status in outcomes.items() if status == 200}
    assert acknowledged <= set(markers), acknowledged - set(markers)
    assert not any(outcomes[100 + i] == 200 for i in range(40)), "answered before the kill?"
    assert all(outcomes[200 + i] == 200 for i in range(40)), outcomes


def test_the_gateway_serves_the_reference_agent_and_refuses_what_it_does_not_speak():
    from incidents.agent_client import Agent as ReferenceAgent

    agent, secret = actions.create_agent(name="through-gateway")
    command = actions.send_command(agent, "config", {"level": "debug"}, by="system:test")
    port = _free_port()
    proc = start_server("gateway", port, _server_env())
    try:
        client = ReferenceAgent(url=f"http://127.0.0.1:{port}", name=agent.name, secret=secret,
                                version="1.0.0")  # fmt: skip
        assert [c["id"] for c in client.beat()] == [command.pk]  # heartbeat, then the ack
        assert client.beat() == []
        # Two requests on one keep-alive connection, sent back to back.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            seen = b""
            while seen.count(b"HTTP/1.1 ") < 2:
                seen += sock.recv(65536)
        assert seen.count(b"content-length:") == 2
        # curl's Expect: 100-continue for bodies over 1 KiB.
        expect = (b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 2\r\n\r\n")  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(expect)
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"{}")
            assert b"HTTP/1.1 " in sock.recv(65536)
        chunked = (b"POST /api/agents/heartbeat HTTP/1.1\r\nHost: x\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(chunked)
            assert sock.recv(65536).startswith(b"HTTP/1.1 411 ")
    finally:
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert time.monotonic() - began < 4, "SIGTERM should stop it once answers are out"
    assert AgentCommand.objects.get().status == "ACKED"
    assert HeartbeatSample.objects.filter(agent=agent).count() == 2


def _bodies():
    """Valid heartbeats and many near misses (types, names, ranges, encodings, escapes)."""
    import random

    rng = random.Random(12)
    base = payload(metrics={"cpu_pct": 12.5, "load1": 0.4}, services={"nginx": "active"})
    yield json.dumps(base).encode()
    values = [True, False, None, 0, -1, 1.5, 1e13, "3", "", [], {}, "x" * 50, 101, 100,
              float("nan"), "a\u0000b", "\ud800"]  # fmt: skip
    keys = ["errors_last_24h", "webhook_fail_rate", "version", "env", "metrics", "services",
            "extra", "Metrics"]  # fmt: skip
    for _ in range(400):
        data = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            where = rng.random()
            if where < 0.4:
                data[key] = rng.choice(values)
            elif where < 0.7 and isinstance(data.get("metrics"), dict):
                data["metrics"][
                    rng.choice(["cpu_pct", "mem_pct", "Bad-Name", "x" * 41, "ok_1"])
                ] = rng.choice(values)
            elif isinstance(data.get("services"), dict):
                data["services"][rng.choice(["nginx", "bad name", "a@b.service", "-x"])] = (
                    rng.choice(["active", "failed", "weird", 1, None])
                )
        try:
            text = json.dumps(data, allow_nan=True, ensure_ascii=rng.random() < 0.5)
        except (TypeError, ValueError):
            continue
        body = text.encode("utf-8", "surrogatepass")
        yield body
        if rng.random() < 0.1:
            yield text.encode("utf-16", "surrogatepass")
        if rng.random() < 0.1:
            yield body.replace(b'"env"', b'"env": "x", "env"', 1)


def test_the_lean_parser_accepts_only_what_the_strict_one_accepts():
    from incidents.api import BodyRefused, HeartbeatIn, parse_body

    accepted = refused = 0
    for body in _bodies():
        fast = fastpath.quiet_body(body)
        try:
            strict = parse_body(body, HeartbeatIn)
        except BodyRefused:
            strict = None
        if fast is not None:
            assert strict is not None, body
            assert fast.model_dump() == strict.model_dump(), body
            accepted += 1
        else:
            refused += 1
    assert accepted > 10 and refused > 100  # the corpus exercises both sides
