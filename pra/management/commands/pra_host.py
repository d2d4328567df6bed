import sys

from django.core.management.base import BaseCommand, CommandError

from portal.lib import ssh
from pra import actions
from pra.models import Host


class Command(BaseCommand):
    help = "Manage SSH targets: add (pin the host key after confirmation), repin, list."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        add = sub.add_parser("add", help="add a host, fetching and pinning its host key")
        add.add_argument("name")
        add.add_argument("address")
        add.add_argument("--port", type=int, default=22)
        add.add_argument("--user", default="pra")
        add.add_argument("--tags", default="")
        add.add_argument("--yes", action="store_true", help="pin without asking (scripts)")
        add.add_argument(
            "--fingerprint",
            help="expected SHA256:... fingerprint (from the host's console); refuse any other",
        )
        repin = sub.add_parser("repin", help="fetch and pin a new host key for a known host")
        repin.add_argument("name")
        repin.add_argument("--yes", action="store_true", help="needs --fingerprint")
        repin.add_argument("--fingerprint", help="the new key's expected SHA256:... fingerprint")
        sub.add_parser("list", help="list hosts and their pinned fingerprints")

    def handle(self, *args, verb, **options):
        getattr(self, f"_{verb}")(**options)

    def _confirm(self, prompt: str, yes: bool) -> None:
        if yes:
            return
        if not sys.stdin.isatty():
            raise CommandError("Not confirmed: no terminal to ask on (use --yes in scripts).")
        if input(f"{prompt} [y/N] ").strip().lower() not in {"y", "yes"}:
            raise CommandError("Not confirmed; nothing changed.")

    def _fetch(self, address: str, port: int) -> str:
        try:
            return ssh.fetch_host_key(address, port)
        except ssh.SSHError as exc:
            raise CommandError(str(exc)) from None

    def _check_expected(self, key: str, expected: str | None) -> bool:
        if expected is None:
            return False
        if ssh.fingerprint(key) != expected.strip():
            raise CommandError(
                f"The host presents {ssh.fingerprint(key)}, not the expected {expected}. "
                "Nothing was pinned: check for interception or a re-installed host."
            )
        return True

    def _add(self, name, address, port, user, tags, yes, fingerprint, **options):
        if Host.objects.filter(name=name).exists():
            raise CommandError(f"Host {name!r} already exists (use 'repin' to change its key).")
        key = self._fetch(address, port)
        self.stdout.write(f"{address}:{port} presents {key.split()[0]} key {ssh.fingerprint(key)}")
        matched = self._check_expected(key, fingerprint)
        if yes and not matched:
            self.stderr.write(
                "warning: pinned without comparing fingerprints (--yes without --fingerprint)."
            )
        self._confirm("Compare it with the host's own fingerprint. Pin it?", yes or matched)
        try:
            host = actions.add_host(
                name=name, address=address, port=port, ssh_user=user, host_key=key, tags=tags
            )
        except actions.ActionError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            self.style.SUCCESS(f"Added {host.name}, pinned {host.host_key_fingerprint}.")
        )

    def _repin(self, name, yes, fingerprint, **options):
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise CommandError(f"No host {name!r}.")
        key = self._fetch(host.address, host.port)
        new = ssh.fingerprint(key)
        if new == host.host_key_fingerprint:
            self.stdout.write("The host still presents the pinned key; nothing to do.")
            return
        self.stdout.write(f"Pinned: {host.host_key_fingerprint}\nNow:    {new}")
        matched = self._check_expected(key, fingerprint)
        if yes and not matched:
            raise CommandError("A changed key is only re-pinned unattended with --fingerprint.")
        self._confirm("The key CHANGED. Only continue if you know why. Pin the new key?", matched)
        voiding = host.actions.filter(status="APPROVED").count()
        try:
            actions.update_host(host, by="system:cli", host_key=key)
        except actions.ActionError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"Pinned {new} for {name}."))
        if voiding:
            self.stdout.write(
                f"{voiding} approved action(s) on {name} were voided: propose them again."
            )

    def _list(self, **options):
        for host in Host.objects.all():
            self.stdout.write(
                f"{host.name:<20} {host.ssh_user}@{host.address}:{host.port:<6} "
                f"{host.host_key_fingerprint} {'enabled' if host.enabled else 'disabled'}"
            )
