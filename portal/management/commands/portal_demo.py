import json
import secrets
from collections.abc import Callable

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils.module_loading import import_string

from portal.actions import set_user
from portal.roles import Role

DEMO_USERS = {
    "viewer": Role.VIEWER,
    "operator": Role.OPERATOR,
    "approver": Role.APPROVER,
    "approver2": Role.APPROVER,
    "admin": Role.ADMIN,
}


class Command(BaseCommand):
    help = "Create demo users (one per role, two approvers) and demo data; prints the logins."

    def handle(self, *args, **options):
        logins_file = settings.VAR_DIR / "demo-logins.json"
        logins: dict[str, str] = {}
        if logins_file.exists():
            logins = json.loads(logins_file.read_text())
        with transaction.atomic():
            for username, role in DEMO_USERS.items():
                if username not in logins:
                    logins[username] = secrets.token_urlsafe(9)
                    set_user(username, role=role, password=logins[username], by="system:demo")
                else:
                    set_user(username, role=role, by="system:demo")
            for hook in demo_hooks():
                hook(self.stdout)
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        logins_file.write_text(json.dumps(logins, indent=2))
        logins_file.chmod(0o600)
        self.stdout.write("Demo logins (user / password / role):")
        for username, role in DEMO_USERS.items():
            self.stdout.write(f"  {username:<10} {logins[username]:<14} {role}")


# Demo data contributed by the apps (each app adds its own as it grows).
DEMO_HOOKS = ["pra.demo.seed", "incidents.demo.seed", "backups.demo.seed"]


def demo_hooks() -> list[Callable[..., object]]:
    return [import_string(path) for path in DEMO_HOOKS]
