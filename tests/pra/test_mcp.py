"""MCP tools through the official SDK's own client, against the real servers.

Real: ``manage.py mcp_server`` spawned by the SDK's stdio client; daphne serving
``portal.asgi:application`` with the streamable-HTTP endpoint at ``/mcp``; the
portal's admin approve URL (Django test client); PostgreSQL; Redis; the RQ jobs
(``run_jobs``: a burst worker in this process); the loopback sshd target with its
generated forced-command wrappers. Stand-ins: only the end commands on the
target (systemctl, podman, ...), since there is no systemd here
(``pra.devtarget``).

The servers are separate processes, so the tests commit their data
(``transaction=True``). daphne is shared by the module: it authenticates each
request afresh and keeps nothing between them that the flush after each test
invalidates, except Django's content-type cache, which only the approval tally
in tool results reads; these tests sign nothing while daphne serves them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.utils import timezone
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from portal.choices import AuditEventType
from portal.lib.localservices import free_port, port_answers
from portal.models import Approval, AuditEvent
from portal.roles import Role
from portal.tokens import create_token, revoke_token
from pra import actions
from pra.choices import ActionStatus
from pra.models import DiagnosticRun, PRAAction, Source
from tests.conftest import make_user
from tests.jobs import run_jobs
from tests.pra.factories import RATIONALE
from tests.pra.helpers import child_env, restarts
from tests.stack import BASE_DIR, PYTHON, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOOLS = {
    "list_hosts",
    "list_pra_catalog",
    "get_service_status",
    "get_service_logs",
    "analyze_errors",
    "check_service_health",
    "get_system_info",
    "get_memory_info",
    "test_connectivity",
    "propose_pra_action",
    "get_pra_action",
    "list_pending_actions",
    "execute_pra_action",
    "list_incidents",
    "get_incident",
    "backup_status",
}
TIMEOUT = 120.0  # seconds for any one MCP request (execute waits for the run)
STARTUP_TIMEOUT = 30.0


# --- driving the SDK client from synchronous tests ---------------------------------------


@dataclass
class Session:
    """The SDK's ``Client`` living in a background event loop, driven from the test.

    Remembers each call and whether it failed, to compare with the audit log.
    """

    portal: BlockingPortal
    client: Client
    calls: list[tuple[str, str]] = field(default_factory=list)

    def tool_names(self) -> set[str]:
        return {t.name for t in self.portal.call(self.client.list_tools).tools}

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        return self.start(tool, arguments).result(timeout=TIMEOUT + 10)

    def start(self, tool: str, arguments: dict[str, Any] | None = None, on_progress=None):
        """Send the call now; returns a future for its result."""

        async def call() -> CallToolResult:
            result = await self.client.call_tool(
                tool, arguments or {}, read_timeout_seconds=TIMEOUT, progress_callback=on_progress
            )
            self.calls.append((tool, "error" if result.is_error else "ok"))
            return result

        return self.portal.start_task_soon(call)

    def ok(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        result = self.call(tool, arguments)
        assert not result.is_error, text(result)
        return result.structured_content.get("result", result.structured_content)

    def error(self, tool: str, arguments: dict[str, Any] | None = None) -> str:
        result = self.call(tool, arguments)
        assert result.is_error, result.structured_content
        return text(result)


def text(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if block.type == "text")


@contextmanager
def mcp_session(transport, mode: str = "auto") -> Iterator[Session]:
    """``mode="auto"`` negotiates the 2026 protocol; ``"legacy"`` the 2025 handshake that
    most desktop clients still speak."""
    with start_blocking_portal() as portal:
        client = Client(transport, read_timeout_seconds=TIMEOUT, mode=mode)
        with portal.wrap_async_context_manager(client):
            yield Session(portal, client)


def stdio_transport(target, raw_token: str, errlog):
    """``manage.py mcp_server`` as a desktop assistant starts it: token in the environment."""
    env = {**child_env(target), "PORTAL_MCP_TOKEN": raw_token, "PRA_RETRY_BACKOFF_MS": "50"}
    params = StdioServerParameters(
        command=PYTHON, args=["manage.py", "mcp_server"], env=env, cwd=BASE_DIR
    )
    return stdio_client(params, errlog=errlog)


@asynccontextmanager
async def http_transport(url: str, raw_token: str):
    headers = {"Authorization": f"Bearer {raw_token}"}
    timeout = httpx2.Timeout(30.0, read=TIMEOUT)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def post_raw(url: str, token: str | None) -> httpx2.Response:
    """A bare JSON-RPC request, to see the HTTP status the endpoint answers with."""
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx2.post(url, json=body, headers=headers, timeout=30)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def token_of():
    def _token(user) -> tuple[Any, str]:
        return create_token(user, "mcp-tests", scope="mcp")

    return _token


@pytest.fixture
def server_log(tmp_path) -> Iterator[Any]:
    path = tmp_path / "mcp_server.stderr"
    with path.open("w+") as log:
        yield log
    print(f"--- mcp_server stderr ---\n{path.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start_daphne(port: int, env: dict[str, str], log) -> subprocess.Popen | None:
    """daphne on ``port`` once it listens; None if it did not (say, the port was taken)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            env=env,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listening = wait_until(
        lambda: proc.poll() is not None or port_answers("127.0.0.1", port), STARTUP_TIMEOUT
    )
    if listening and proc.poll() is None:
        return proc
    _stop(proc)
    return None


@pytest.fixture(scope="module")
def daphne(django_db_setup, shared_ssh_target, tmp_path_factory) -> Iterator[str]:
    """daphne serving the portal's ASGI app on a free loopback port; yields the /mcp URL."""
    log = tmp_path_factory.mktemp("mcp-daphne") / "daphne.log"
    env = {**child_env(shared_ssh_target), "PYTHONUNBUFFERED": "1"}
    for _attempt in range(3):  # another process may take the free port first
        port = free_port()
        proc = _start_daphne(port, env, log)
        if proc is not None:
            break
    else:
        pytest.fail(f"daphne did not start:\n{log.read_text()[-4000:]}")
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)
        print(f"--- daphne log (tail) ---\n{log.read_text()[-4000:]}")


# --- audit ----------------------------------------------------------------------------------


def assert_audited(session: Session, user, raw_token: str) -> None:
    """Exactly one MCP_TOOL_CALL event per call, in order, with its outcome; no token."""
    events = list(AuditEvent.objects.filter(event_type=AuditEventType.MCP_TOOL_CALL).order_by("id"))
    assert [(e.details["tool"], e.details["outcome"]) for e in events] == session.calls
    for event in events:
        assert event.actor == f"mcp:{user.get_username()}"
        assert event.actor_user_id == user.pk
        assert raw_token not in json.dumps(event.details)
        assert ("error" in event.details) == (event.details["outcome"] == "error")


# --- stdio ----------------------------------------------------------------------------------


def test_scenario_1_over_stdio_a_person_approves_in_the_portal(
    operator, approver, target_host, shared_ssh_target, client, token_of, server_log
):
    """Seed scenario 1: unbound is down; the assistant diagnoses and proposes, a person
    approves in the portal, the assistant executes, and the service is back."""
    shared_ssh_target.set_unit("unbound", "inactive")
    _, raw = token_of(operator)
    with mcp_session(stdio_transport(shared_ssh_target, raw, server_log)) as mcp:
        names = mcp.tool_names()
        assert names >= TOOLS
        assert not [n for n in names if "approve" in n or "reject" in n]

        status = mcp.ok("get_service_status", {"host": "dns-1", "unit": "unbound"})
        assert status["output"].splitlines()[0] == "inactive"

        proposed = mcp.ok(
            "propose_pra_action",
            {
                "action": "restart_unbound",
                "host": "dns-1",
                "params": {},
                "rationale": RATIONALE,
                "evidence_ids": [status["id"]],
            },
        )
        assert proposed["status"] == "PROPOSED"
        assert proposed["ai_proposed"] is True
        assert proposed["proposer"] == "AI:otto-operator"
        assert proposed["evidence_ids"] == [status["id"]]
        action = PRAAction.objects.get(pk=proposed["id"])
        assert (action.source, action.proposed_by) == (Source.AI, operator)

        refused = mcp.error("execute_pra_action", {"action_id": action.pk})
        assert f"Action #{action.pk} is PROPOSED" in refused
        assert "human approval" in refused
        assert restarts(shared_ssh_target, "systemctl", "restart", "unbound") == 0

        # A person approves in the portal, with the button's form post.
        client.force_login(approver)
        page = client.post(
            f"/admin/pra/praaction/{action.pk}/approve/",
            {"fingerprint": proposed["fingerprint"]},
        )
        assert page.status_code == 302
        action.refresh_from_db()
        assert action.status == ActionStatus.APPROVED

        # The tool reports progress once it is waiting; the worker runs only then.
        waiting = threading.Event()

        async def on_progress(progress, total, message):
            waiting.set()

        pending = mcp.start(
            "execute_pra_action", {"action_id": action.pk, "wait_seconds": 90}, on_progress
        )
        assert waiting.wait(TIMEOUT), "execute_pra_action never started waiting"
        run_jobs()
        result = pending.result(timeout=TIMEOUT + 10)
        assert not result.is_error, text(result)
        done = result.structured_content
        assert (done["status"], done["verification"], done["exit_code"]) == (
            "COMPLETED",
            "VERIFIED",
            0,
        )
        assert done["finished"] is True

        after = mcp.ok("get_service_status", {"host": "dns-1", "unit": "unbound"})
        assert after["output"].splitlines()[0] == "active"

    assert shared_ssh_target.unit_state("unbound") == "active"
    assert restarts(shared_ssh_target, "systemctl", "restart", "unbound") == 1
    assert_audited(mcp, operator, raw)


def test_stdio_server_needs_a_valid_token_to_start_and_on_every_call(
    operator, target_host, shared_ssh_target, token_of, server_log, tmp_path, monkeypatch
):
    monkeypatch.delenv("PORTAL_MCP_TOKEN", raising=False)
    with pytest.raises(CommandError, match="No token"):
        call_command("mcp_server")
    monkeypatch.setenv("PORTAL_MCP_TOKEN", "opp_not-a-real-token")
    with pytest.raises(CommandError, match="not valid"):
        call_command("mcp_server")

    token, raw = token_of(operator)
    token_file = tmp_path / "token"
    token_file.write_text(raw + "\n")
    revoked, revoked_raw = token_of(operator)
    revoke_token(revoked, by="system:tests")
    token_file.with_name("revoked").write_text(revoked_raw)
    with pytest.raises(CommandError, match="not valid"):
        call_command("mcp_server", token_file=token_file.with_name("revoked"))

    env = {**child_env(shared_ssh_target)}
    env.pop("PORTAL_MCP_TOKEN", None)
    params = StdioServerParameters(
        command=PYTHON,
        args=["manage.py", "mcp_server", "--token-file", str(token_file)],
        env=env,
        cwd=BASE_DIR,
    )
    with mcp_session(stdio_client(params, errlog=server_log)) as mcp:
        assert mcp.ok("list_hosts")[0]["name"] == "dns-1"
        revoke_token(token, by="system:tests")
        refused = mcp.error("list_hosts")
        assert "not valid any more" in refused
    events = list(AuditEvent.objects.filter(event_type=AuditEventType.MCP_TOOL_CALL).order_by("id"))
    assert [e.actor for e in events] == ["mcp:otto-operator", "mcp:unauthenticated"]
    assert [e.details["outcome"] for e in events] == ["ok", "error"]


# --- streamable HTTP --------------------------------------------------------------------------


def test_http_endpoint_takes_a_valid_bearer_token_on_every_request(daphne, operator, token_of):
    token, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw), mode="legacy") as legacy:
        assert legacy.client.protocol_version.startswith("2025-")
        assert legacy.tool_names() >= TOOLS
        assert legacy.ok("list_hosts") == []
    with mcp_session(http_transport(daphne, raw)) as mcp:
        names = mcp.tool_names()
        assert names >= TOOLS
        assert not [n for n in names if "approve" in n or "reject" in n]
        assert mcp.ok("list_hosts") == []
        assert {c["name"] for c in mcp.ok("list_pra_catalog")} >= {"restart_unbound"}

        revoke_token(token, by="system:tests")
        with pytest.raises(MCPError):  # the next request already gets 401 (below)
            mcp.call("list_hosts")
    mcp.calls[:0] = legacy.calls
    assert_audited(mcp, operator, raw)

    assert post_raw(daphne, raw).status_code == 401
    for wrong in (None, "opp_wrong", "not-even-a-portal-token"):
        answer = post_raw(daphne, wrong)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
    with (
        pytest.raises(ExceptionGroup) as wrong_token,
        mcp_session(http_transport(daphne, "opp_wrong")),
    ):
        pass
    assert wrong_token.group_contains(MCPError, depth=None)
    # Only /mcp itself is the MCP endpoint; the rest stays Django's.
    assert httpx2.get(daphne.removesuffix("/mcp") + "/health", timeout=30).status_code in {200, 503}
    assert httpx2.get(daphne + "x", timeout=30).status_code == 404


def test_an_operator_who_also_approves_cannot_approve_through_any_tool(
    daphne, target_host, shared_ssh_target, token_of
):
    both = make_user("bea-both", Role.OPERATOR)
    both.groups.add(Group.objects.get(name=Role.APPROVER))
    assert both.has_perm("portal.approve_action")
    _, raw = token_of(both)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        assert not [n for n in mcp.tool_names() if "approve" in n or "reject" in n]
        proposal = {
            "action": "restart_unbound",  # LOW: auto-approvable for people, not for an AI
            "host": "dns-1",
            "params": {},
            "rationale": "caddy answers 502 on every vhost since the last deploy",
            "auto_approve": True,
        }
        refused_auto = mcp.error("propose_pra_action", proposal)
        assert "a person approves this action" in refused_auto
        assert not PRAAction.objects.exists()
        proposed = mcp.ok("propose_pra_action", proposal | {"auto_approve": False})
        assert proposed["proposer"] == "AI:bea-both"
        unknown = mcp.error("approve_pra_action", {"action_id": proposed["id"]})
        assert "Unknown tool" in unknown
        refused = mcp.error("execute_pra_action", {"action_id": proposed["id"]})
        assert "PROPOSED" in refused
        run_jobs()  # the pre-flight: it may auto-approve only what policy allows
        assert mcp.ok("get_pra_action", {"action_id": proposed["id"]})["status"] == "PROPOSED"
        pending = mcp.ok("list_pending_actions", {"host": "dns-1"})
        assert [a["id"] for a in pending] == [proposed["id"]]
    assert not Approval.objects.exists()
    assert PRAAction.objects.get().status == ActionStatus.PROPOSED
    assert restarts(shared_ssh_target, "systemctl", "restart", "unbound") == 0
    assert_audited(mcp, both, raw)


def test_execute_refuses_an_expired_approval(
    daphne, operator, approver, target_host, shared_ssh_target, token_of
):
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        proposed = mcp.ok(
            "propose_pra_action",
            {"action": "restart_unbound", "host": "dns-1", "params": {}, "rationale": RATIONALE},
        )
        actions.approve_action(proposed["id"], by=approver)
        PRAAction.objects.filter(pk=proposed["id"]).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        refused = mcp.error("execute_pra_action", {"action_id": proposed["id"]})
        assert f"Action #{proposed['id']} is EXPIRED" in refused
        assert "propose it again" in refused
        missing = mcp.error("execute_pra_action", {"action_id": 999999})
        assert "No action #999999" in missing
    assert PRAAction.objects.get().status == ActionStatus.EXPIRED
    assert restarts(shared_ssh_target, "systemctl", "restart", "unbound") == 0
    assert_audited(mcp, operator, raw)


INJECTIONS = ["x; rm -rf /", "$(id)", "`id`", "a\nb", "../etc", "x|reboot", "-rf", ""]


def test_injection_attempts_are_refused_and_change_nothing(
    daphne, operator, target_host, shared_ssh_target, token_of
):
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        for name in INJECTIONS:
            proposal = {
                "action": "restart_container",
                "host": "dns-1",
                "params": {"name": name},
                "rationale": RATIONALE,
            }
            assert "name" in mcp.error("propose_pra_action", proposal)
            assert "name" in mcp.error("get_container_status", {"host": "dns-1", "name": name})
            assert mcp.error("get_service_status", {"host": "dns-1", "unit": name})
        bad = {"action": "restart_unbound", "host": "dns-1", "params": {}, "rationale": RATIONALE}
        assert "unknown action" in mcp.error("propose_pra_action", {**bad, "action": "rm -rf"})
        assert "unknown host" in mcp.error("propose_pra_action", {**bad, "host": "dns-1; id"})
        assert "takes no parameter" in mcp.error(
            "propose_pra_action", {**bad, "params": {"unit": "x"}}
        )
        assert "at least 20" in mcp.error("propose_pra_action", {**bad, "rationale": f"see {raw}"})
        assert "evidence_ids" in mcp.error("propose_pra_action", {**bad, "evidence_ids": [424242]})
    assert not PRAAction.objects.exists()
    assert not DiagnosticRun.objects.exists()
    assert shared_ssh_target.calls() == []
    assert_audited(mcp, operator, raw)
    redacted = AuditEvent.objects.filter(details__arguments__rationale__startswith="see ").get()
    assert redacted.details["arguments"]["rationale"] == "see opp_[redacted]"


def test_incidents_are_readable_through_mcp(daphne, operator, token_of):
    from django.utils import timezone as tz

    from incidents import actions as incident_actions

    agent, _ = incident_actions.create_agent(name="shop-plugin")
    incident, _ = incident_actions.open_or_update_incident(
        agent, cause="webhooks", rule_id=None, severity=3, title="webhooks failing at 30%",
        telemetry={"webhook_fail_rate": 0.3}, detected_at=tz.now(),
    )  # fmt: skip
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        listed = mcp.ok("list_incidents", {})
        assert [(i["id"], i["severity"], i["status"]) for i in listed] == [
            (incident.pk, "High", "OPEN")
        ]
        one = mcp.ok("get_incident", {"incident_id": incident.pk})
        assert one["timeline"][0]["kind"] == "DETECTED"
        assert "No incident #999" in mcp.error("get_incident", {"incident_id": 999})


def test_backup_status_reports_freshness(daphne, operator, token_of):
    from backups.models import BackupSource

    BackupSource.objects.create(name="main-db", kind="postgres", dsn="postgres://x@127.0.0.1/db")
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        status = mcp.ok("backup_status", {})
        assert status == [
            {"source": "main-db", "kind": "postgres", "last_success": None, "age_hours": None,
             "size_bytes": None, "verification": None, "fresh": False, "last_run_status": None}
        ]  # fmt: skip
        assert "No enabled backup source 'nope'" in mcp.error("backup_status", {"source": "nope"})


# --- execute when the portal already started the run ------------------------------------------


def _approve_in_portal(approver, action_id: int) -> None:
    action = PRAAction.objects.get(pk=action_id)
    actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())


def test_execute_waits_for_the_run_the_worker_already_started(
    daphne, operator, approver, target_host, shared_ssh_target, token_of, tmp_path
):
    """Approval enqueues the run; a live worker claims it before the assistant asks. The
    tool waits for that run, reports progress at least every 5 s, and returns the outcome."""
    shared_ssh_target.set_unit("caddy", "inactive")
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        proposed = mcp.ok(
            "propose_pra_action",
            {"action": "restart_caddy", "host": "dns-1", "params": {}, "rationale": RATIONALE},
        )
        run_jobs()  # the pre-flight
        shared_ssh_target.delay_command("systemctl", 12)  # the restart takes 12 s
        _approve_in_portal(approver, proposed["id"])
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [PYTHON, "manage.py", "rqworker", "pra", "--burst"],
            env=child_env(shared_ssh_target), cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert wait_until(
                lambda: restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1, 60
            ), "the worker never started the restart"
            assert PRAAction.objects.get(pk=proposed["id"]).status == ActionStatus.EXECUTING
            shared_ssh_target.delay_command("systemctl", 0)  # only the restart is slow
            progress: list[tuple[float, str]] = []

            async def on_progress(done, total, message):
                progress.append((time.monotonic(), message))

            pending = mcp.start(
                "execute_pra_action", {"action_id": proposed["id"], "wait_seconds": 90}, on_progress
            )
            result = pending.result(timeout=TIMEOUT + 10)
        finally:
            _stop(worker)
            log.close()
        assert not result.is_error, text(result)
        done = result.structured_content
        assert (done["status"], done["verification"], done["finished"]) == (
            "COMPLETED",
            "VERIFIED",
            True,
        )
        assert "had already started" in done["note"] and "runs once" in done["note"]
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1
    messages = [m for _, m in progress]
    executing = [m for m in messages if m.startswith(f"action #{proposed['id']} is EXECUTING; ")]
    assert len(executing) >= 2, messages
    assert all(m.endswith(" bytes of output so far") for m in messages), messages
    gaps = [b - a for (a, _), (b, _) in zip(progress, progress[1:], strict=False)]
    assert max(gaps) < 5 + 2, gaps  # periodic, not only on changes of state
    assert_audited(mcp, operator, raw)


def test_execute_returns_the_outcome_of_a_run_that_already_ended(
    daphne, operator, approver, target_host, shared_ssh_target, token_of
):
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        proposed = mcp.ok(
            "propose_pra_action",
            {"action": "restart_caddy", "host": "dns-1", "params": {}, "rationale": RATIONALE},
        )
        _approve_in_portal(approver, proposed["id"])
        run_jobs()  # pre-flight, run and verification, before the assistant asks
        done = mcp.ok("execute_pra_action", {"action_id": proposed["id"], "wait_seconds": 5})
        assert (done["status"], done["finished"]) == ("COMPLETED", True)
        assert "had already started" in done["note"]
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1
    assert_audited(mcp, operator, raw)


# --- the boundary: arguments, duplicates, internal errors ------------------------------------


def test_unstorable_text_in_any_argument_is_refused_named_and_audited(
    daphne, operator, target_host, shared_ssh_target, token_of
):
    _, raw = token_of(operator)
    good = {"action": "restart_unbound", "host": "dns-1", "params": {}, "rationale": RATIONALE}
    with mcp_session(http_transport(daphne, raw)) as mcp:
        cases = [
            ("propose_pra_action", {**good, "extra": "x\x00y"}, "extra"),
            ("propose_pra_action", {**good, "rationale": RATIONALE + "\x00"}, "rationale"),
            ("propose_pra_action", {**good, "params": {"unit\x00": "x"}}, "params"),
            ("get_service_status", {"host": "dns-1", "unit": "unbound\x00"}, "unit"),
        ]
        for tool, arguments, field_name in cases:
            refused = mcp.error(tool, arguments)
            assert f"argument {field_name}" in refused, refused
            assert "cannot be stored" in refused and "Nothing was done" in refused
            for leak in ("SELECT", "INSERT", "psycopg", "Traceback", "\x00"):
                assert leak not in refused
    with mcp_session(http_transport(daphne, raw), mode="legacy") as legacy:
        assert "argument extra" in legacy.error("list_hosts", {"extra": "\x00"})
    mcp.calls += legacy.calls
    assert not PRAAction.objects.exists()
    assert not DiagnosticRun.objects.exists()
    assert shared_ssh_target.calls() == []
    assert_audited(mcp, operator, raw)
    events = AuditEvent.objects.filter(event_type=AuditEventType.MCP_TOOL_CALL).order_by("id")
    assert events[0].details["arguments"]["extra"] == "x\ufffdy"
    assert "argument extra" in events[0].details["error"]


def test_an_identical_open_action_is_returned_instead_of_a_second_one(
    daphne, operator, target_host, token_of
):
    rule = actions.propose_action(
        action="restart_unbound", host="dns-1", params={}, rationale=RATIONALE,
        by=actions.Proposer.rule("service:unbound"),
    )  # fmt: skip
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        proposal = {"action": "restart_unbound", "host": "dns-1", "params": {}}
        again = mcp.ok("propose_pra_action", {**proposal, "rationale": RATIONALE})
        assert (again["id"], again["created"], again["proposer"]) == (
            rule.pk,
            False,
            "rule:service:unbound",
        )
        assert again["note"].startswith(f"Not proposed again: action #{rule.pk} ")
        other = mcp.ok("propose_pra_action", {**proposal, "action": "restart_caddy",
                                              "rationale": RATIONALE})  # fmt: skip
        assert other["created"] is True and other["id"] != rule.pk
    assert PRAAction.objects.count() == 2
    assert_audited(mcp, operator, raw)


def test_an_unexpected_failure_shows_a_reference_never_its_text(
    operator, target_host, monkeypatch, caplog
):
    """In-process (the SDK's in-memory client) so the failure can be injected: the
    identity lookup is swapped for the operator (no token transport in memory)."""
    from portal.mcp import core as mcp_core
    from portal.mcp import get_server

    async def identify(request):
        return operator

    def broken(**kwargs):
        raise RuntimeError('relation "x" violates: INSERT INTO pra_praaction VALUES (...)')

    monkeypatch.setattr(mcp_core, "_identify", identify)
    monkeypatch.setattr(actions, "submit_proposal", broken)
    with start_blocking_portal() as portal:
        client = Client(get_server(), read_timeout_seconds=TIMEOUT)
        with portal.wrap_async_context_manager(client):
            result = portal.call(
                client.call_tool,
                "propose_pra_action",
                {"action": "restart_unbound", "host": "dns-1", "params": {},
                 "rationale": RATIONALE},
            )  # fmt: skip
    assert result.is_error
    message = text(result)
    assert "Internal error, see the portal log (ref " in message
    assert "INSERT" not in message and "relation" not in message
    ref = message.split("(ref ")[1].split(")")[0]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)
    event = AuditEvent.objects.get(event_type=AuditEventType.MCP_TOOL_CALL)
    assert (event.details["outcome"], event.actor) == ("error", "mcp:otto-operator")
    assert ref in event.details["error"]
    assert not PRAAction.objects.exists()


def test_a_tool_that_acts_commits_with_its_audit_or_not_at_all(operator, target_host, monkeypatch):
    """In-process, to make the audit write fail: the proposal it would have audited is
    rolled back with it, and the client gets the generic error."""
    from portal.mcp import core as mcp_core
    from portal.mcp import get_server

    async def identify(request):
        return operator

    def audit_fails(call, outcome, error):
        raise RuntimeError("audit table unavailable: INSERT INTO portal_auditevent ...")

    monkeypatch.setattr(mcp_core, "_identify", identify)
    monkeypatch.setattr(mcp_core, "_audit", audit_fails)
    with start_blocking_portal() as portal:
        client = Client(get_server(), read_timeout_seconds=TIMEOUT)
        with portal.wrap_async_context_manager(client):
            result = portal.call(
                client.call_tool,
                "propose_pra_action",
                {"action": "restart_unbound", "host": "dns-1", "params": {},
                 "rationale": RATIONALE},
            )  # fmt: skip
    assert result.is_error
    assert "Internal error, see the portal log (ref " in text(result)
    assert "INSERT" not in text(result)
    assert not PRAAction.objects.exists()  # no unaudited action


def test_tools_say_when_an_action_waits_for_a_window_or_a_freeze_blocks_it(
    daphne, monkeypatch, operator, approver, admin_user, target_host, token_of
):
    """Windows and freezes are rows the daphne process reads; the catalog entry that
    needs a window is patched in this process only, where the action is approved."""
    from dataclasses import replace

    from pra import windows
    from pra.catalog import CATALOG

    now = timezone.now()
    windows.save_freeze(None, by=admin_user, reason="quarter close freeze",
                        starts_at=now - timedelta(minutes=1),
                        ends_at=now + timedelta(minutes=30))  # fmt: skip
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        blocked = mcp.ok(
            "propose_pra_action",
            {"action": "restart_unbound", "host": "dns-1", "params": {}, "rationale": RATIONALE},
        )
        assert blocked["maintenance"]["freeze"]["reason"] == "quarter close freeze"
        assert blocked["maintenance"]["on_approval"].startswith(
            "approval is refused now: A change freeze until"
        )
        assert "cannot be approved now" in blocked["note"]

        PRAAction.objects.all().delete()
        windows.delete_freeze(windows.ChangeFreeze.objects.get(), by=admin_user)
        opens = (now + timedelta(hours=1)).replace(second=0, microsecond=0)
        windows.save_window(None, by=admin_user, name="sunday-night", weekday=opens.weekday(),
                            start_time=opens.time(), duration_minutes=120)  # fmt: skip
        monkeypatch.setitem(
            CATALOG, "restart_caddy", replace(CATALOG["restart_caddy"], requires_window=True)
        )
        waiting = actions.propose_action(action="restart_caddy", host=target_host, params={},
                                         rationale=RATIONALE, by=operator)  # fmt: skip
        actions.approve_action(waiting, by=approver)
        seen = mcp.ok("get_pra_action", {"action_id": waiting.pk})
        assert seen["status"] == "WAITING"
        assert seen["hold_reason"].startswith("approved for the window starting ")
        assert seen["maintenance"]["window"]["name"] == "sunday-night"
        refused = mcp.error("execute_pra_action", {"action_id": waiting.pk})
        assert f"Action #{waiting.pk} is WAITING: it is approved for the window starting" in (
            refused
        )
        assert "it runs by itself when the window opens" in refused


def test_maintenance_outlook_names_the_host_s_next_window_and_the_freezes(
    daphne, operator, admin_user, token_of
):
    """Read-only and audited like the other read tools; an unknown host is a tool error."""
    from pra import windows
    from tests.pra.factories import offline_host

    host = offline_host()
    now = timezone.now()
    opens = (now + timedelta(hours=1)).replace(second=0, microsecond=0)
    windows.save_window(None, by=admin_user, name="sunday-night", weekday=opens.weekday(),
                        start_time=opens.time(), duration_minutes=120)  # fmt: skip
    windows.save_freeze(None, by=admin_user, reason="quarter close freeze",
                        starts_at=now - timedelta(minutes=1),
                        ends_at=now + timedelta(minutes=30))  # fmt: skip
    windows.save_freeze(None, by=admin_user, reason="year-end change freeze",
                        starts_at=now + timedelta(days=3),
                        ends_at=now + timedelta(days=4))  # fmt: skip
    _, raw = token_of(operator)
    with mcp_session(http_transport(daphne, raw)) as mcp:
        assert "maintenance_outlook" in mcp.tool_names()
        out = mcp.ok("maintenance_outlook", {"host": host.name})
        assert (out["host"], out["windows"]) == ("dns-1", ["sunday-night"])
        assert out["window"]["window"] == "sunday-night" and out["window"]["open_now"] is False
        assert out["window"]["label"] == f"{opens:%a %H:%M} UTC ({opens:%Y-%m-%d})"
        assert out["freeze"]["reason"] == "quarter close freeze"
        assert [f["reason"] for f in out["upcoming_freezes"]] == [
            "quarter close freeze",
            "year-end change freeze",
        ]
        assert "The next maintenance window for dns-1 is sunday-night" in out["summary"]
        assert "quarter close freeze" in out["summary"]
        assert "year-end change freeze" in out["summary"]
        assert "requires_window" in {k for c in mcp.ok("list_pra_catalog") for k in c}

        unknown = mcp.error("maintenance_outlook", {"host": "nope"})
        assert "No host 'nope'" in unknown and "list_hosts" in unknown
        assert "Traceback" not in unknown
    events = AuditEvent.objects.filter(event_type=AuditEventType.MCP_TOOL_CALL).order_by("id")
    assert events.first().details["tool"] == "maintenance_outlook"
    assert_audited(mcp, operator, raw)
