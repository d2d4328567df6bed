"""Live pages left open: reconnects over N minutes, and whether an event still arrives.

Runs two daphne servers side by side on the same Redis for the same time:
  portal   the portal's channel layer settings (portal/settings.py)
  legacy   the channel layer as it was configured before issue 10 (hosts=[REDIS_URL],
           redis-py 8's 5 s default read timeout), for reference
Each gets a headless Chromium dashboard, an incident page and a raw websocket
client (tests/wsclient.py), all idle. At the end one incident is resolved and the
script reports, per server and client: reconnects during the idle period, and
whether (and how fast) the RESOLVED event reached it.

    .venv/bin/python bench/live_idle.py              # 10 minutes
    .venv/bin/python bench/live_idle.py --seconds 60

Needs Redis (REDIS_URL, default redis://127.0.0.1:6379/7: a database no test flushes)
and Chromium. Uses a throwaway SQLite database under a temporary directory. Prints
figures; not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

TMP = Path(tempfile.mkdtemp(prefix="live-idle-"))
ENV = {
    **os.environ,
    "DEBUG": "1",
    "PORTAL_VAR_DIR": str(TMP),
    "DATABASE_URL": f"sqlite:///{TMP}/bench.sqlite3",
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"),
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "PYTHONPATH": str(BASE_DIR),
    "DJANGO_SETTINGS_MODULE": "portal.settings",
}
os.environ.update(ENV)
# Playwright's sync API leaves an event loop marked running in this thread; Django
# calls made here between browser calls are still synchronous (see tests/e2e/conftest.py).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from incidents import actions as incident_actions  # noqa: E402
from portal.actions import set_user  # noqa: E402
from portal.lib.localservices import free_port  # noqa: E402
from tests.wsclient import Closed, WSClient  # noqa: E402

LEGACY_SETTINGS = """
from portal.settings import *  # noqa: F403
CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                  "CONFIG": {"hosts": [REDIS_URL], "prefix": "portal:live"}}}  # noqa: F405
"""


class RawClient(threading.Thread):
    """A websocket client that reconnects when dropped and counts it."""

    def __init__(self, url: str, cookies: dict[str, str], incident_id: int) -> None:
        super().__init__(daemon=True)
        self.url, self.cookies, self.incident_id = url, cookies, str(incident_id)
        self.reconnects = 0
        self.received_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            try:
                ws = WSClient(self.url, cookies=self.cookies)
            except (Closed, OSError):
                self.stop.wait(1)
                continue
            if not first:
                self.reconnects += 1
            first = False
            try:
                while not self.stop.is_set():
                    try:
                        msg = ws.recv_json(timeout=1)
                    except TimeoutError:
                        continue
                    event = msg.get("event", {})
                    if event.get("subject_id") == self.incident_id and event.get("status") == (
                        "RESOLVED"
                    ):
                        self.received_at = time.monotonic()
            except (Closed, OSError):
                continue
            finally:
                ws.close()


def start_daphne(port: int, settings_module: str, log: Path) -> subprocess.Popen:
    env = {**ENV, "DJANGO_SETTINGS_MODULE": settings_module}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "portal.asgi:application"],
        env=env, cwd=BASE_DIR, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"daphne did not start: {log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()

    (TMP / "bench_legacy_settings.py").write_text(LEGACY_SETTINGS)
    ENV["PYTHONPATH"] = f"{TMP}:{BASE_DIR}"
    call_command("migrate", verbosity=0)
    user, _ = set_user("bench-viewer", role="viewer", password="bench-pw-1", check_password=False)
    admin, _ = set_user("bench-admin", role="admin", password="bench-pw-1", check_password=False)
    client = Client()
    client.force_login(user)
    cookie = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}

    servers = {"portal": "portal.settings", "legacy": "bench_legacy_settings"}
    procs, incidents, raw, pages = {}, {}, {}, {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"]
        )
        for name, module in servers.items():
            port = free_port()
            procs[name] = start_daphne(port, module, TMP / f"daphne-{name}.log")
            agent, _ = incident_actions.create_agent(name=f"agent-{name}", kind="plugin")
            incidents[name], _ = incident_actions.open_or_update_incident(
                agent, cause="service_down", rule_id=None, severity=3, title="down",
                telemetry={}, detected_at=timezone.now(),
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            context = browser.new_context(base_url=base)
            context.add_cookies([{"name": k, "value": v, "url": base} for k, v in cookie.items()])
            dash = context.new_page()
            dash.goto("/")
            inc = context.new_page()
            inc.goto(f"/admin/incidents/incident/{incidents[name].pk}/change/")
            pages[name] = (dash, inc)
            raw[name] = RawClient(f"ws://127.0.0.1:{port}/ws/live/", cookie, incidents[name].pk)
            raw[name].start()

        print(f"idle for {args.seconds:.0f} s …", flush=True)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            time.sleep(min(30, args.seconds - (time.monotonic() - started)))
            line = "  ".join(
                f"{n}: page {pages[n][1].locator('#incident').get_attribute('data-reconnects')}"
                f" / raw {raw[n].reconnects}"
                for n in servers
            )
            print(f"  t+{time.monotonic() - started:4.0f}s reconnects  {line}", flush=True)

        resolved_at = {}
        for name in servers:
            resolved_at[name] = time.monotonic()
            # In a thread: publishing uses async_to_sync, refused in Playwright's thread.
            worker = threading.Thread(
                target=incident_actions.resolve_incident,
                args=(incidents[name],),
                kwargs={"by": admin, "reason": "bench"},
            )
            worker.start()
            worker.join()
        time.sleep(5)  # time for the event to arrive (measured below), then report

        print(f"\n{'server':8} {'client':14} {'reconnects in idle':>19}  RESOLVED arrived")
        for name in servers:
            dash, inc = pages[name]
            status = inc.locator("#inc-status").text_content()
            rec_page = inc.locator("#incident").get_attribute("data-reconnects")
            rec_dash = dash.evaluate("document.body.dataset.reconnects")
            got = raw[name].received_at
            arrived = f"yes, {1000 * (got - resolved_at[name]):.0f} ms" if got else "NO"
            print(f"{name:8} {'raw websocket':14} {raw[name].reconnects:>19}  {arrived}")
            print(f"{name:8} {'incident page':14} {rec_page:>19}  shows {status}")
            print(f"{name:8} {'dashboard':14} {rec_dash:>19}")
            logs = (TMP / f"daphne-{name}.log").read_text(errors="replace")
            print(f"{name:8} daphne 'Timeout reading from' lines: {logs.count('Timeout reading')}")
        for client_ in raw.values():
            client_.stop.set()
        browser.close()
    for proc in procs.values():
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
