"""The demo tells the truth: what `make run` seeds, what its agent sends, and what it says
when the demo target cannot be installed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command

from backups.choices import RunStatus
from backups.models import BackupRun, BackupSource
from incidents.models import Agent
from portal import devstack
from portal.lib.localservices import ServiceError, free_port
from pra.devtarget import DEFAULT_TELEMETRY, LocalTarget, read_telemetry
from pra.models import Host
from tests.factories import OFFLINE_HOST_KEY
from tests.stack import BASE_DIR, PYTHON, wait_for

LOCKED = ServiceError(
    "apt-get install openssh-server failed:\nE: Could not get lock /var/lib/dpkg/lock-frontend. "
    "It is held by process 4242 (apt-get)"
)


@pytest.mark.django_db
def test_the_demo_seeds_a_host_an_agent_and_a_backup_source_with_one_first_run(
    monkeypatch, settings, tmp_path
):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("PORTAL_DEMO_TARGET", "127.0.0.1:2222")
    monkeypatch.setenv("PORTAL_DEMO_TARGET_KEY", OFFLINE_HOST_KEY)
    monkeypatch.setenv("PORTAL_DEMO_CONTAINERS", "shop-web,shop-worker")
    out = StringIO()
    call_command("portal_demo", stdout=out)
    call_command("portal_demo", stdout=out)  # a second `make run`: nothing doubles
    assert Host.objects.get().name == "demo-target"
    assert Agent.objects.get().name == "demo-target-agent"
    source = BackupSource.objects.get()
    assert (source.name, source.kind, source.dsn.startswith("redis://")) == (
        "demo-redis", "redis", True)  # fmt: skip
    assert list(BackupRun.objects.values_list("status", flat=True)) == [RunStatus.QUEUED]
    text = out.getvalue()
    assert "containers for restart_container: shop-web, shop-worker" in text
    assert "first run queued" in text and "the demo target's load" in text


class _Portal(BaseHTTPRequestHandler):
    """Stands in for the portal's heartbeat endpoint (its own tests cover the real one):
    here the point is what the demo agent sends, and when."""

    beats: list[dict] = []

    def do_GET(self):  # /health
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.beats.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"commands": []}')

    def log_message(self, *args):
        pass


def test_the_demo_agent_waits_for_the_portal_and_reports_the_targets_load(tmp_path):
    """A real agent process started before anything listens (as daphne is still starting
    under `make run`): no error is printed, and once the portal answers, the heartbeat
    carries the target's telemetry file, not this machine's load."""
    target = LocalTarget(tmp_path / "target")
    target.setup()
    target.set_telemetry(cpu_pct=3.5)
    secret = tmp_path / "agent.key"
    secret.write_text("s" * 43)
    port = free_port()
    agent = subprocess.Popen(
        [PYTHON, "-m", "incidents.demo", "--url", f"http://127.0.0.1:{port}",
         "--secret-file", str(secret), "--state-dir", str(target.state_dir), "--period", "30"],
        cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        threading.Event().wait(1.5)  # the portal is not there yet: the agent must stay quiet
        assert agent.poll() is None
        _Portal.beats = []
        server = ThreadingHTTPServer(("127.0.0.1", port), _Portal)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            wait_for(lambda: bool(_Portal.beats), timeout=10, what="a heartbeat")
        finally:
            server.shutdown()
            server.server_close()
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=10)
    assert err == "", err
    assert _Portal.beats[0]["metrics"] == {**DEFAULT_TELEMETRY, "cpu_pct": 3.5}


def test_a_broken_telemetry_file_reads_as_a_quiet_machine(tmp_path):
    path = tmp_path / "telemetry.json"
    path.write_text("{not json")
    assert read_telemetry(path) == DEFAULT_TELEMETRY
    path.write_text('{"cpu_pct": 97, "note": "x", "flag": true}')
    assert read_telemetry(path) == {"cpu_pct": 97.0}


def test_make_run_waits_for_the_dpkg_lock_then_installs(capsys):
    attempts, pauses = [], []

    def install():
        attempts.append(1)
        if len(attempts) < 3:
            raise LOCKED

    assert devstack._install_sshd(install, wait=60, sleep=pauses.append) == ""
    assert len(attempts) == 3 and pauses == [5.0, 10.0]
    assert "holds the dpkg lock; retrying" in capsys.readouterr().err


def test_make_run_says_plainly_why_the_demo_target_is_missing(capsys):
    def locked():
        raise LOCKED

    why = devstack._install_sshd(locked, wait=0, sleep=lambda s: None)
    assert why == (
        "openssh-server could not be installed: another apt/dpkg process held the dpkg lock "
        "for 0 s (PORTAL_DEMO_APT_WAIT)"
    )

    def broken():
        raise ServiceError("apt-get install openssh-server failed:\nE: Unable to locate package")

    why = devstack._install_sshd(broken, wait=60, sleep=lambda s: pytest.fail("no retry"))
    assert why.startswith("openssh-server could not be installed:")
    assert "Unable to locate package" in why
    devstack._say_missing(why)
    err = capsys.readouterr().err
    assert "The demo target is missing: openssh-server could not be installed" in err
    assert "no host 'demo-target', no demo agent" in err


def test_the_demo_agent_module_imports_no_django():
    """Checked in a child process: this one has Django loaded already."""
    code = "import sys, incidents.demo; sys.exit('django' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR).returncode == 0
