"""Demo data for `make run`: an agent watching unbound on the demo target."""

from __future__ import annotations

from django.conf import settings

from incidents import actions
from incidents.models import Agent, OpsPolicy
from pra.models import Host

DEMO_AGENT = "demo-target-agent"


def key_file():
    return settings.VAR_DIR / "demo-agent.key"


def seed(stdout) -> None:
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
        f"Demo agent: '{DEMO_AGENT}' reports unbound's state on the demo target every 15 s; "
        "an inactive unbound opens an incident that proposes restart_unbound."
    )
