"""Hung hosts end in a classified state within the connect timeout, never as a lost worker.

Real: TCP listeners on loopback that accept and then say nothing (or only a
banner), the loopback sshd target frozen with SIGSTOP after authentication,
PostgreSQL, Redis and an in-process RQ worker. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.lib import ssh
from pra import actions, transport
from pra.catalog import CATALOG
from pra.choices import ActionStatus, FailureCause
from pra.models import DiagnosticRun, PRAAction, PreflightStatus
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.helpers import register
from tests.stack import _descendants, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CONNECT_TIMEOUT = 1.5
SLACK = 2.0  # scheduling slack on a loaded 2-core machine


class Blackhole:
    """Accepts TCP connections and never answers (optionally after sending ``greeting``)."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.greeting:
                conn.sendall(self.greeting)
            self.accepted.append(conn)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture(params=[b"", b"SSH-2.0-OpenSSH_9.2p1\r\n"], ids=["silent", "banner-only"])
def blackhole(request) -> Iterator[Blackhole]:
    hole = Blackhole(request.param)
    yield hole
    hole.close()


@pytest.fixture
def hung_host(blackhole, shared_ssh_target, settings):
    """A registered host whose address accepts TCP and never completes SSH."""
    settings.PRA_CONNECT_TIMEOUT = CONNECT_TIMEOUT
    settings.PRA_CONNECT_ATTEMPTS = 2
    host = register(shared_ssh_target, settings, name="hung-1")
    host.port = blackhole.port
    host.save(update_fields=["port"])
    return host


def test_run_command_raises_unreachable_within_the_connect_timeout(blackhole, shared_ssh_target):
    endpoint = ssh.Endpoint("127.0.0.1", blackhole.port, "root", shared_ssh_target.host_key_line)
    started = time.monotonic()
    with pytest.raises(ssh.Unreachable, match="no SSH handshake|handshake"):
        ssh.run_command(
            endpoint, shared_ssh_target.exec_key_path, "true", connect_timeout=CONNECT_TIMEOUT
        )
    assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK


def test_fetch_host_key_raises_unreachable_within_the_timeout(blackhole):
    started = time.monotonic()
    with pytest.raises(ssh.Unreachable):
        ssh.fetch_host_key("127.0.0.1", blackhole.port, timeout=CONNECT_TIMEOUT)
    assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK


def test_execution_on_a_hung_host_fails_unreachable_not_worker_lost(
    operator, approver, hung_host, settings
):
    settings.PRA_PREFLIGHT = False  # the execution's own path is under test
    action = propose(operator, hung_host, "restart_container", {"name": "web-1"})
    actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    started = time.monotonic()
    run_jobs()
    elapsed = time.monotonic() - started
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert action.failure_cause == FailureCause.UNREACHABLE, action.failure_detail
    assert "handshake" in action.failure_detail
    # Two connection attempts, each bounded by the connect timeout.
    assert elapsed < 2 * CONNECT_TIMEOUT + 2 * SLACK


def test_preflight_on_a_hung_host_ends_failed_with_the_reason(operator, hung_host):
    action = propose(operator, hung_host, "restart_unbound")
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.FAILED
    assert "handshake" in action.preflight_output


def test_diagnostics_on_a_hung_host_record_the_failure(operator, hung_host):
    started = time.monotonic()
    run = actions.run_diagnostic(hung_host, "service_status", {"unit": "unbound"}, by=operator)
    assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK
    stored = DiagnosticRun.objects.get(pk=run.pk)
    assert stored.exit_code is None
    assert "handshake" in stored.error


def test_a_host_that_freezes_after_authentication_times_out(shared_ssh_target, settings):
    """Authenticated, then the target's sshd session process is frozen (SIGSTOP): the
    command request gets no answer. The command deadline ends it as a timeout."""
    host = register(shared_ssh_target, settings)
    before = set(_descendants(shared_ssh_target._proc.pid))
    session = transport.open_exec_session(host)
    sessions = [pid for pid in _descendants(shared_ssh_target._proc.pid) if pid not in before]
    assert sessions, "no sshd session process found for the open connection"
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ssh.CommandTimeout):
            session.exec("status unbound", command_timeout=1.5)
        assert time.monotonic() - started < 1.5 + SLACK
    finally:
        for pid in sessions:
            os.kill(pid, signal.SIGCONT)
        session.close()
    assert PRAAction.objects.count() == 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_connection_lost_mid_command_ends_at_once_as_lost(shared_ssh_target, settings):
    """The target's sshd session and the command under it are killed while the command
    runs: seen from the portal, a host that loses power or its network (the TCP connection
    ends). The run ends ConnectionLost at once, not at its deadline, without spinning."""
    host = register(shared_ssh_target, settings)
    shared_ssh_target.delay_command("systemctl", 30)
    before = set(_descendants(shared_ssh_target._proc.pid))
    session = transport.open_exec_session(host)

    def cut() -> None:
        wait_for(
            lambda: any(call[:2] == ["systemctl", "restart"] for call in shared_ssh_target.calls()),
            10,
            "the command to start on the target",
        )
        # sshd first: the connection ends with no exit status (the command's own death
        # would be reported as one), then the command it left behind.
        pids = set(_descendants(shared_ssh_target._proc.pid)) - before
        for pid in sorted(pids, key=lambda pid: _comm(pid) != "sshd"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=cut)
    killer.start()
    started, cpu = time.monotonic(), time.process_time()
    try:
        with pytest.raises(ssh.ConnectionLost, match="outcome is unknown"):
            session.exec(CATALOG["restart_unbound"].wire_command({}), command_timeout=60)
    finally:
        killer.join()
        session.close()
    assert time.monotonic() - started < 10 + SLACK  # the deadline was 60 s
    assert time.process_time() - cpu < 2.0, "the wait spun on a closed channel"
