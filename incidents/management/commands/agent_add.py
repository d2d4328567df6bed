from django.core.management.base import BaseCommand, CommandError

from incidents import actions
from incidents.models import Agent
from portal.lib.text import UnstorableText, refuse_unstorable
from pra.models import Host


class Command(BaseCommand):
    help = "Register an agent; its secret is printed once (stdout) and stored sealed."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", default="service", choices=Agent.Kind.values)
        parser.add_argument("--owner", default="")
        parser.add_argument("--env", default="production")
        parser.add_argument("--period", type=int, default=120, help="seconds between beats")
        parser.add_argument("--grace", type=int, default=60)
        parser.add_argument("--host", help="pra host for host-level remediations")
        parser.add_argument("--available-version", default="", help="known-good patch version")
        parser.add_argument("--rotate", action="store_true", help="new secret for this agent")

    def handle(self, *args, name, kind, owner, env, period, grace, host, rotate, **options):
        texts = {"name": name, "--owner": owner, "--env": env, "--host": host or "",
                 "--available-version": options["available_version"]}  # fmt: skip
        try:
            for option, value in texts.items():
                refuse_unstorable(value, option)
        except UnstorableText as exc:
            raise CommandError(str(exc)) from None
        if rotate:
            agent = Agent.objects.filter(name=name).first()
            if agent is None:
                raise CommandError(f"No agent {name!r}.")
            self.stdout.write(actions.rotate_agent_secret(agent, by="system:cli"))
            return
        host_obj = None
        if host:
            host_obj = Host.objects.filter(name=host).first()
            if host_obj is None:
                raise CommandError(f"No host {host!r} (add it with pra_host add).")
        if Agent.objects.filter(name=name).exists():
            raise CommandError(f"Agent {name!r} exists (use --rotate for a new secret).")
        try:
            _, secret = actions.create_agent(
                name=name,
                kind=kind,
                owner=owner,
                environment=env,
                expected_period=period,
                grace=grace,
                host=host_obj,
                available_version=options["available_version"],
            )
        except actions.IncidentError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(secret)
        self.stderr.write("Store the secret now (PORTAL_AGENT_SECRET_FILE): it is not shown again.")
