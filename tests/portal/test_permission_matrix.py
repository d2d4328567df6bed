"""The permission matrix: every route × every identity × every method it accepts.

Generated, never hand-listed. The routes come from Django's URL resolver (walked
recursively: the admin site with every ModelAdmin of its registry, django_rq's pages,
the API), the OpenAPI schema (the methods of each API path), the ASGI app's ``/mcp``
endpoint and the websocket routes (``portal.routing``). What each identity may do is
declared once, in ``tests.portal.permission_policy`` (``MODEL_POLICY`` for the
standard pages of each registered model, ``POLICY`` for everything else). A route no rule
covers fails ``test_every_route_has_a_declared_policy``: a new view without a declared check.

Outcomes, per route × identity × method:
- allowed: not 401/403, not a redirect to the login page, not a 5xx;
- refused: not 2xx, not a 5xx, no database write (PostgreSQL's row counters of the
  test's own transaction, ``pg_stat_xact_user_tables``) and no Redis change. A 404
  counts as a refusal only where 403 is impossible: the route's object does not exist
  (a dummy id) or the rule says so (Django's app index answers 404 to a user who may
  see none of its models).

Real PostgreSQL, Redis, channels-redis and the ASGI app; nothing is mocked. Hosts are
registered on a closed loopback port, so diagnostics an operator may run fail fast
instead of waiting for an SSH timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field

import django_rq
import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models
from django.test import Client
from django.urls import resolve
from django_rq.settings import get_queues_map

from portal.consumers import SUBJECTS
from portal.lib.localservices import free_port
from portal.mcp.http import MCP_PATH
from portal.models import ApiToken
from portal.tokens import create_token, revoke_token
from pra.models import PRAAction
from tests.conftest import make_user
from tests.factories import OFFLINE_HOST_KEY, RATIONALE
from tests.portal.permission_policy import (
    IDENTITIES,
    MODEL_POLICY,
    NOROLE,
    NOT_STANDARD,
    POLICY,
    SESSION_ROLES,
    Route,
    Rule,
    collect_routes,
    effective_role,
)


def test_every_route_has_a_declared_policy():
    """A new URL, API operation, admin model, method or websocket route needs a rule."""
    routes = collect_routes()
    assert len(routes) > 150, "the walk found too few routes: it is broken"
    missing = []
    for route in routes:
        for key in route.rule_keys():
            found = POLICY.get(key)
            if found is None:
                missing.append(key)
                continue
            missing += [f"{key} {m}" for m in route.methods if m not in found.allow]
    assert not missing, "routes without a declared policy:\n" + "\n".join(missing)
    declared = {k for r in routes for k in r.rule_keys()}
    stale = sorted(set(POLICY) - declared)
    assert not stale, f"policy for routes that no longer exist: {stale}"


def test_every_registered_model_has_a_model_policy():
    registered = {m._meta.label_lower for m in admin.site._registry}
    assert registered - NOT_STANDARD == set(MODEL_POLICY), registered - NOT_STANDARD ^ set(
        MODEL_POLICY
    )


# --- the world the requests run against -------------------------------------------------

DUMMY = "987654321"


@dataclass
class World:
    users: dict[str, User]
    raw_tokens: dict[str, str]
    objects: dict[str, models.Model] = field(default_factory=dict)  # model label -> instance
    job_id: str = ""

    def pk(self, label: str) -> str | None:
        obj = self.objects.get(label)
        if obj is None:
            from django.apps import apps

            obj = apps.get_model(label)._default_manager.order_by("pk").first()
        return str(obj.pk) if obj is not None else None


def build_world(*, http: bool = True) -> World:
    from incidents import actions as incidents
    from portal import notify
    from portal.choices import ChannelKind
    from portal.models import NotificationChannel
    from pra import actions as pra

    users = {
        "viewer": make_user("vera-viewer", "viewer"),
        "operator": make_user("otto-operator", "operator"),
        "approver": make_user("anna-approver", "approver"),
        "admin": make_user("ada-admin", "admin"),
        "nobody": make_user("ned-norole", None),
        "proposer": make_user("olga-operator", "operator"),
    }
    raw = {}
    _, raw["api_token"] = create_token(users["viewer"], "matrix api")
    _, raw["mcp_token"] = create_token(users["admin"], "matrix mcp", scope=ApiToken.Scope.MCP)
    revoked, raw["revoked_token"] = create_token(users["admin"], "matrix revoked")
    revoke_token(revoked, by="system:test")
    world = World(users, raw)

    host = pra.add_host(
        name="matrix-host", address="127.0.0.1", port=free_port(), ssh_user="pra",
        host_key=OFFLINE_HOST_KEY,
    )  # fmt: skip
    action = pra.propose_action(
        action="restart_unbound", host=host, params={}, rationale=RATIONALE,
        by=users["proposer"],
    )  # fmt: skip
    agent, _ = incidents.create_agent(
        name="matrix-agent", kind="plugin", environment="production", available_version="1.1.0"
    )
    from django.utils import timezone

    incident, _ = incidents.open_or_update_incident(
        agent, cause="matrix", rule_id=None, severity=2, title="matrix incident",
        telemetry={}, detected_at=timezone.now(),
    )  # fmt: skip
    world.objects.update(
        {"pra.host": host, "pra.praaction": action, "incidents.incident": incident}
    )
    if http:
        world.objects["pra.diagnosticrun"] = pra.run_diagnostic(
            host, "system_info", {}, by=users["proposer"]
        )
        world.objects["incidents.agentcommand"] = incidents.send_command(
            agent, "config", {}, by=users["admin"]
        )
        channel = NotificationChannel.objects.create(
            name="matrix-mail", kind=ChannelKind.EMAIL, recipients="ops@example.com"
        )
        world.objects["portal.notification"] = notify.send_test(channel, by=users["admin"])
        queue = django_rq.get_queue("pra", commit_mode="auto")
        world.job_id = queue.enqueue("builtins.len", "matrix").id
    from tests.factories import make_source

    source = make_source("matrix-redis", "redis", dsn="redis://127.0.0.1:1/0")
    from backups import actions as backups

    world.objects["backups.backuprun"] = backups.request_run(source, by=users["admin"])
    return world


FIXED = {
    "queue_index": lambda w: str(get_queues_map()["pra"]),
    "job_id": lambda w: w.job_id or DUMMY,
    "result_id": lambda w: "no-such-result",
    "key": lambda w: "no-such-worker",
    "scheduler_index": lambda w: "0",
    "connection_index": lambda w: "0",
    "scheduler_name": lambda w: "no-such-scheduler",
    "cron_job_name": lambda w: "no-such-job",
    "token": lambda w: "notthetoken",
    "url": lambda w: "no-such-page/",
    "name": lambda w: "swagger-ui-init.js",
    "action_id": lambda w: w.pk("pra.praaction"),
    "run_id": lambda w: w.pk("backups.backuprun"),
    "host": lambda w: "matrix-host",
    "command_id": lambda w: w.pk("incidents.agentcommand"),
    "id": lambda w: str(w.users["viewer"].pk),
    "content_type_id": lambda w: str(ContentType.objects.get_for_model(w.objects["pra.host"]).pk),
}
MODEL_PARAMS = {"object_id", "pk", "subject_id"}


def fill(route: Route, variant: str, world: World) -> tuple[str, bool]:
    """A concrete path for ``route`` (and whether it names an object that does not exist)."""
    model = re.match(r"admin/(\w+)/(\w+)/", route.key)
    dummy = False

    def value(name: str) -> str:
        nonlocal dummy
        if name in ("app_label", "verb", "subject_type"):
            return variant
        if name in MODEL_PARAMS:
            # The route's own model; "view on site" and websockets name theirs elsewhere.
            if name == "subject_id":
                label = variant
            else:
                label = f"{model[1]}.{model[2]}" if model else "pra.host"
            found = world.pk(label)
            if found is None:
                dummy = True
                return DUMMY
            return found
        if name not in FIXED:
            raise AssertionError(f"{route.key}: no value for <{name}>: add one to FIXED")
        found = FIXED[name](world)
        if found is None:
            dummy = True
            return DUMMY
        return found

    # Regex groups first: "(?P<token>...)" also looks like a "<token>" converter.
    path = re.sub(r"\(\?P<(\w+)>[^()]*\)\??", lambda m: value(m[1]), route.key)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: value(m[1]), path)
    path = path.replace("^", "").replace("$", "").replace("/?", "/")
    if route.surface in ("django", "api"):
        path = "/" + path
        match = resolve(path)
        # Django drops the "^" of included regex patterns from ResolverMatch.route.
        assert match.route.replace("^", "") == route.key.replace("^", ""), (
            f"{path} resolved to {match.route}, not {route.key}"
        )
    else:
        path = "/" + path if not path.startswith("/") else path
    if route.key == "admin/autocomplete/":
        field_of = {"host": "app_label=pra&model_name=praaction&field_name=host",
                    "user": "app_label=portal&model_name=apitoken&field_name=user"}  # fmt: skip
        path += "?" + field_of[variant]
    return path, dummy


def bodies(world: World) -> dict[str, dict]:
    action = world.objects["pra.praaction"]
    assert isinstance(action, PRAAction)
    return {
        "/api/pra/actions": {
            "action": "restart_unbound", "host": "matrix-host", "params": {},
            "rationale": RATIONALE,
        },
        "approve": {"fingerprint": action.approval_fingerprint(), "confirmation": "",
                    "comment": "matrix"},
        "reject": {"reason": "the matrix rejects this"},
        "diagnostics": {"name": "system_info", "params": {}},
        "diagnose": {"name": "system_info", "params": "{}"},
        "resolve": {"reason": "fixed by hand in the matrix"},
        "command": {"kind": "config", "version": ""},
        "approve-patch": {"attempt": DUMMY, "confirmation": "", "fingerprint": ""},
        "ack": {"output": "done"},
        "fail": {"output": "failed"},
    }  # fmt: skip


def body_for(path: str, variant: str, world: World) -> dict:
    table = bodies(world)
    if path in table:
        return table[path]
    last = variant or path.rstrip("/").rsplit("/", 1)[-1]
    return table.get(last, {})


# --- evaluation --------------------------------------------------------------------------


def _db_writes() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)"
            " FROM pg_stat_xact_user_tables"
        )
        return cursor.fetchone()[0]


def _redis_probe():
    """One round trip: the key count, and the length of every queue and failed registry."""
    from rq.registry import FailedJobRegistry

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUES]
    redis = queues[0].connection
    keys = [(q.key, FailedJobRegistry(queue=q).key) for q in queues]

    def state() -> tuple:
        # The persistent keys by name (a request that writes one is caught), not the key
        # count: short-lived guards and reservations (enqueue SET NX, verification
        # reservations) expire on their own while the matrix runs.
        names = sorted(redis.keys("*"))
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.ttl(name)
        for queue_key, failed_key in keys:
            pipe.llen(queue_key)
            pipe.zcard(failed_key)
        results = pipe.execute()
        ttls, lengths = results[: len(names)], results[len(names) :]
        persistent = tuple(n for n, ttl in zip(names, ttls, strict=True) if ttl == -1)
        return (persistent, *lengths)

    return state


def judge(status: int, location: str, allowed: bool, rule_: Rule, dummy: bool) -> str | None:
    """None when the response is what the policy says, else what is wrong."""
    to_login = status in (301, 302) and "/admin/login/" in location
    if status >= 500 and status not in rule_.ok_5xx:
        return f"server error {status}"
    if allowed:
        if status in (401, 403) or to_login:
            return f"refused ({status} {location}) but the policy allows it"
        return None
    if 200 <= status < 300:
        return f"{status}: allowed but the policy refuses it"
    if status == 404 and not (dummy or rule_.refusal_404):
        return "404 where a 403 was possible"
    return None


def _client(identity: str, world: World) -> Client:
    headers = {}
    if identity in world.raw_tokens:
        headers["Authorization"] = f"Bearer {world.raw_tokens[identity]}"
    # A crash is a finding like any other: see it as a 500, not as an exception.
    client = Client(headers=headers, raise_request_exception=False)
    if identity in SESSION_ROLES or identity == NOROLE:
        client.force_login(world.users[identity])
    return client


def _logged_in(client: Client) -> bool:
    """From the cookie jar (``client.session`` would cost a query per request)."""
    cookie = client.cookies.get(settings.SESSION_COOKIE_NAME)
    return bool(cookie and cookie.value)


@pytest.mark.django_db
def test_the_state_probes_see_a_write_and_ignore_a_read(viewer):
    """The refusal check is only as good as its probes: they must move on any write."""
    from portal.models import AuditEvent

    redis_state = _redis_probe()
    before = (_db_writes(), redis_state())
    list(AuditEvent.objects.all()[:5])
    assert (_db_writes(), redis_state()) == before
    viewer.first_name = "Vera"
    viewer.save(update_fields=["first_name"])
    assert _db_writes() > before[0]
    django_rq.get_queue("pra", commit_mode="auto").enqueue("builtins.len", "x")
    assert redis_state() != before[1]


@pytest.fixture
def quiet_request_log():
    """Thousands of refusals would each log a warning with its traceback (slow, noisy);
    server errors are still logged, and reported by the matrix itself."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.django_db
@pytest.mark.parametrize("identity", IDENTITIES)
def test_http_matrix(identity, settings, quiet_request_log):
    """Every Django and API route × this identity × each method it accepts."""
    settings.METRICS_ALLOWED_IPS = []
    settings.PRA_CONNECT_ATTEMPTS = 1
    settings.PRA_CONNECT_TIMEOUT = 1
    settings.PRA_RETRY_BACKOFF = 0
    world = build_world()
    client = _client(identity, world)
    redis_state = _redis_probe()
    session = identity in SESSION_ROLES or identity == NOROLE
    failures, count, started, known = [], 0, time.monotonic(), None
    # Log out last: it ends the session the other requests use.
    routes = sorted(
        (r for r in collect_routes() if r.surface in ("django", "api")),
        key=lambda r: r.key == "admin/logout/",
    )
    for route in routes:
        for variant, key in zip(route.variants, route.rule_keys(), strict=True):
            rule_ = POLICY.get(key)
            if rule_ is None:
                failures.append(f"{key}: no declared policy")
                continue
            path, dummy = fill(route, variant, world)
            for method in route.methods:
                if session and not _logged_in(client):
                    client.force_login(world.users[identity])
                    known = None
                allowed = effective_role(identity, route.surface) in rule_.allow[method]
                # The state after a refused request is the state before the next one.
                before = None if allowed else (known or (_db_writes(), redis_state()))
                known = None
                if method == "GET":
                    response = client.get(path)
                elif route.surface == "api" and route.key != "api/docs/assets/<str:name>":
                    body = json.dumps(body_for(path, variant, world))
                    response = client.post(path, body, content_type="application/json")
                else:
                    response = client.post(path, body_for(path, variant, world))
                count += 1
                wrong = judge(
                    response.status_code, response.get("Location", ""), allowed, rule_, dummy
                )
                if before:
                    known = (_db_writes(), redis_state())
                    if wrong is None and known != before:
                        wrong = f"{response.status_code} but state changed"
                if wrong:
                    failures.append(f"{method} {path} [{key}]: {wrong}")
    elapsed = time.monotonic() - started
    print(f"{identity}: {count} requests in {elapsed:.1f} s")
    assert count > 300
    assert not failures, f"{identity}:\n" + "\n".join(failures)


# --- websockets and /mcp (separate processes' view: committed data) ----------------------


def _ws_headers(identity: str, world: World, cookie: bytes | None) -> list:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", cookie))
    if identity in world.raw_tokens:
        headers.append((b"authorization", f"Bearer {world.raw_tokens[identity]}".encode()))
    return headers


def _cookie(identity: str, world: World) -> bytes | None:
    if identity not in SESSION_ROLES and identity != NOROLE:
        return None
    client = Client()
    client.force_login(world.users[identity])
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


@pytest.mark.django_db(transaction=True)
def test_websocket_matrix():
    """Every websocket route (and subject type) × every identity."""
    from portal.asgi import application

    world = build_world(http=False)
    routes = [r for r in collect_routes() if r.surface == "ws"]
    cases = []
    for identity in IDENTITIES:
        cookie = _cookie(identity, world)
        for route in routes:
            for variant, key in zip(route.variants, route.rule_keys(), strict=True):
                if variant == "missing":
                    path = f"/ws/live/{SUBJECTS[0]}/{DUMMY}/"
                    dummy = True
                elif variant == "auth.user":
                    path, dummy = f"/ws/live/auth.user/{world.users['admin'].pk}/", False
                else:
                    path, dummy = fill(route, variant, world)
                # A subject page for an object that does not exist has nothing to follow.
                allowed = not dummy and effective_role(identity, "ws") in POLICY[key].allow["GET"]
                cases.append((identity, path, key, allowed, _ws_headers(identity, world, cookie)))

    async def run_all() -> list[str]:
        failures = []
        for identity, path, key, allowed, headers in cases:
            ws = WebsocketCommunicator(application, path, headers=headers)
            connected, code = await ws.connect(timeout=5)
            if connected:
                await ws.disconnect()
            if connected != allowed:
                failures.append(f"{identity} {path} [{key}]: connected={connected} code={code}")
            elif not connected and code not in (4401, 4403, 4404):
                failures.append(f"{identity} {path}: closed with {code}, not a 44xx reason")
        return failures

    failures = async_to_sync(run_all)()
    assert len(cases) >= 50
    assert 10 < sum(allowed for *_, allowed, _ in cases) < len(cases) - 10
    assert not failures, "\n".join(failures)


INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "matrix", "version": "1"}},
}  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_mcp_matrix():
    """``/mcp`` × every identity × its methods: only an MCP-scope token gets in.

    The app is built as ``portal.asgi`` builds it, with an endpoint of its own: the SDK's
    session manager lives in the event loop of its first request, and this test's loop
    ends with the test.
    """
    from portal.asgi import django_asgi_app
    from portal.mcp import get_server
    from portal.mcp.http import MCPEndpoint, route_mcp

    endpoint = MCPEndpoint(get_server())
    application = route_mcp(endpoint, django_asgi_app)
    world = build_world(http=False)
    [route] = [r for r in collect_routes() if r.surface == "mcp"]
    rule_ = POLICY[route.key]
    cases = []
    for identity in IDENTITIES:
        cookie = _cookie(identity, world)
        for method in route.methods:
            headers = [
                (b"host", b"localhost"),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
            ]
            if cookie:
                headers.append((b"cookie", cookie))
            if identity in world.raw_tokens:
                headers.append((b"authorization", f"Bearer {world.raw_tokens[identity]}".encode()))
            body = json.dumps(INITIALIZE).encode() if method == "POST" else b""
            allowed = effective_role(identity, "mcp") in rule_.allow[method]
            cases.append((identity, method, headers, body, allowed))

    async def request(method: str, headers: list, body: bytes) -> tuple[int, bytes]:
        """Status and the body's first chunk. A GET answered with an event stream stays
        open until the server has something to say: its body is not read."""
        comm = ApplicationCommunicator(
            application,
            {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
             "path": MCP_PATH, "raw_path": MCP_PATH.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
             "server": ("localhost", 80)},
        )  # fmt: skip
        await comm.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await comm.receive_output(timeout=10)
        chunk = {}
        if method != "GET" or start["status"] != 200:
            chunk = await comm.receive_output(timeout=10)
        await comm.send_input({"type": "http.disconnect"})
        with contextlib.suppress(Exception):
            await comm.wait(timeout=1)
        return start["status"], chunk.get("body", b"")

    async def run_all() -> list[str]:
        # One event loop for every request: the MCP session manager lives in it.
        failures = []
        for identity, method, headers, body, allowed in cases:
            status, first = await request(method, headers, body)
            wrong = judge(status, "", allowed, rule_, dummy=False)
            if wrong:
                failures.append(f"{identity} {method} {MCP_PATH}: {wrong}")
            elif allowed and method == "POST" and b'"serverInfo"' not in first:
                failures.append(f"{identity} {method}: no initialize result {first!r}")
        if endpoint._runner is not None:
            endpoint._runner.cancel()
        return failures

    failures = async_to_sync(run_all)()
    assert [(i, m) for i, m, *_, allowed in cases if allowed] == [
        ("mcp_token", "GET"),
        ("mcp_token", "POST"),
    ]
    assert not failures, "\n".join(failures)
