import getpass
import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from portal.actions import set_user
from portal.roles import Role

STDIN = "-"


class Command(BaseCommand):
    help = "Create or update a portal user with one role (viewer, operator, approver, admin)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-file",
            help="Read the password from this file ('-' for stdin) instead of prompting.",
        )
        parser.add_argument(
            "--keep-password",
            action="store_true",
            help="Update the role of an existing user without touching the password.",
        )

    def handle(self, *args, username, role, email, password_file, keep_password, **options):
        password = None
        if not keep_password:
            password = self._read_password(password_file)
        try:
            user, created = set_user(username, role=role, password=password, email=email)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        verb = "Created" if created else "Updated"
        self.stdout.write(self.style.SUCCESS(f"{verb} {user.get_username()} with role {role}."))

    def _read_password(self, password_file: str | None) -> str:
        if password_file == STDIN:
            password = sys.stdin.readline().rstrip("\n")
        elif password_file:
            try:
                password = Path(password_file).read_text().rstrip("\n")
            except OSError as exc:
                raise CommandError(f"Cannot read {password_file}: {exc.strerror}") from None
        else:
            if not sys.stdin.isatty():
                raise CommandError("No terminal to prompt on: use --password-file.")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("Passwords do not match.")
        if not password:
            raise CommandError("The password is empty.")
        return password
