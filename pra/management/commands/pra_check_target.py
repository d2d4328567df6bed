from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.lib import ssh
from pra import transport
from pra.catalog import catalog_fingerprint
from pra.models import Host


class Command(BaseCommand):
    help = "Check that a target's wrappers match the portal's catalog (drift)."

    def add_arguments(self, parser):
        parser.add_argument("host", help="host name, or 'all'")

    def handle(self, *args, host, **options):
        hosts = Host.objects.all() if host == "all" else Host.objects.filter(name=host)
        if not hosts:
            raise CommandError(f"No host {host!r}.")
        expected = catalog_fingerprint()
        drifted = []
        for target in hosts:
            problems = []
            for label, runner in (
                (
                    "pra-exec",
                    lambda t: transport.run_exec(
                        t, "--catalog", command_timeout=settings.PRA_DIAG_TIMEOUT
                    ),
                ),
                ("pra-diag", lambda t: transport.run_diag(t, ["catalog"])),
            ):
                try:
                    result = runner(target)
                except ssh.SSHError as exc:
                    problems.append(f"{label}: {exc}")
                    continue
                found = result.stdout.strip()
                if result.exit_code != 0 or found != expected:
                    problems.append(f"{label}: catalog {found or '(none)'} != portal {expected}")
            if problems:
                drifted.append(target.name)
                self.stdout.write(self.style.ERROR(f"{target.name}: DRIFT"))
                for problem in problems:
                    self.stdout.write(f"  {problem}")
            else:
                self.stdout.write(self.style.SUCCESS(f"{target.name}: in sync ({expected[:16]}…)"))
        if drifted:
            raise CommandError(f"{len(drifted)} host(s) out of sync: {', '.join(drifted)}")
