from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portal.tokens import create_token


class Command(BaseCommand):
    help = "Create a personal API/MCP token for a user. The token is printed once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="What the token is for, e.g. 'claude'")
        parser.add_argument(
            "--scope",
            choices=["api", "mcp"],
            default="api",
            help="api: the REST API (as the user's role allows, approving included); "
            "mcp: only the MCP server, which can never approve. Give AI assistants mcp.",
        )

    def handle(self, *args, username, name, scope, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user {username!r} (create it with portal_user).")
        try:
            _, raw = create_token(user, name, scope=scope)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(raw)
        self.stderr.write("Store it now: it is not shown again and only its hash is kept.")
