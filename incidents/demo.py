"""Demo data for `make run`: an agent watching the demo target, and that agent's process.

``seed`` (run by ``manage.py portal_demo``) registers the agent. ``python -m
incidents.demo --state-dir DIR ...`` is the agent itself: the reference agent
(``incidents.agent_client``) reporting the *demo target's* telemetry (its
``state/telemetry.json``, see ``pra.devtarget``) and unbound's state from the
target's stand-in systemctl, instead of the load of the machine running the demo
(which opened "CPU use 100 %" incidents on a busy laptop). It waits quietly for the
portal to answer before its first heartbeat (daphne starts at the same time), and
reports a lost portal once, not on every beat.

The agent half imports nothing from Django.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEMO_AGENT = "demo-target-agent"
PORTAL_WAIT = 120.0  # seconds the agent waits for the portal to answer at start


def key_file() -> Path:
    from django.conf import settings

    return settings.VAR_DIR / "demo-agent.key"


def seed(stdout) -> None:
    from incidents import actions
    from incidents.models import Agent, OpsPolicy
    from pra.models import Host

    host = Host.objects.filter(name="demo-target").first()
    if host is None:
        return
    agent = Agent.objects.filter(name=DEMO_AGENT).first()
    path = key_file()
    if agent is None:
        agent, secret = actions.create_agent(
            name=DEMO_AGENT, kind=Agent.Kind.HOST, host=host, environment="demo",
            expected_period=15, grace=15, by="system:demo",
        )  # fmt: skip
        OpsPolicy.current().whitelist.add(agent)
    elif not path.exists():
        secret = actions.rotate_agent_secret(agent, by="system:demo")
    else:
        secret = None
    if secret is not None:
        path.write_text(secret)
        path.chmod(0o600)
    stdout.write(
        f"Demo agent: '{DEMO_AGENT}' reports the demo target's load and unbound's state every "
        "15 s; an inactive unbound opens an incident that proposes restart_unbound."
    )


# --- the agent process -------------------------------------------------------------------


def portal_answers(url: str, timeout: float = 2.0) -> bool:
    """Anything HTTP from ``/health`` (even 503: workers may still be starting) counts."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for_portal(url: str, stop: threading.Event, timeout: float = PORTAL_WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if portal_answers(url):
            return True
        if time.monotonic() >= deadline:
            return False
        stop.wait(0.5)
    return False


def _agent_class():
    from incidents.agent_client import Agent

    @dataclass
    class DemoTargetAgent(Agent):
        """The reference agent, with the target's telemetry instead of this machine's."""

        telemetry_file: Path = field(default=Path("telemetry.json"))

        def heartbeat_payload(self) -> dict:
            from pra.devtarget import read_telemetry

            payload = super().heartbeat_payload()
            payload["metrics"] = read_telemetry(self.telemetry_file)
            return payload

    return DemoTargetAgent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The demo target's agent (make run).")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--name", default=DEMO_AGENT)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--state-dir", required=True, help="the demo target's state directory")
    parser.add_argument("--period", type=float, default=15.0)
    parser.add_argument("--watch-service", action="append", default=[])
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if not wait_for_portal(args.url, stop):
        if stop.is_set():
            return 0
        print(f"demo agent: the portal at {args.url} did not answer within {PORTAL_WAIT:.0f} s; "
              "sending heartbeats anyway", file=sys.stderr, flush=True)  # fmt: skip
    agent = _agent_class()(
        url=args.url, name=args.name, secret=Path(args.secret_file).read_text().strip(),
        version=args.version, env="demo", watch_services=args.watch_service,
        telemetry_file=Path(args.state_dir) / "telemetry.json",
    )  # fmt: skip
    failing = False
    while not stop.is_set():
        try:
            agent.beat()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if not failing:
                print(f"demo agent: heartbeat failed ({exc}); retrying every "
                      f"{args.period:g} s", file=sys.stderr, flush=True)  # fmt: skip
            failing = True
        else:
            if failing:
                print("demo agent: heartbeats accepted again", file=sys.stderr, flush=True)
            failing = False
        stop.wait(args.period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
