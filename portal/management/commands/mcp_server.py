import os
from pathlib import Path

import anyio
from django.core.management.base import BaseCommand, CommandError

from portal.tokens import authenticate_token

IDENTITY_ENV = "PORTAL_MCP_TOKEN"


class Command(BaseCommand):
    help = (
        "Serve the portal's MCP tools over stdio (for desktop AI assistants), as the portal "
        f"user owning the token in --token-file or ${IDENTITY_ENV}. The streamable-HTTP "
        "endpoint needs no command: it is /mcp on the running portal."
    )
    # stdout carries the protocol: nothing else may be written there, and system
    # check warnings would be. The token check below is the readiness check.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--token-file",
            type=Path,
            help=f"File holding the token (else ${IDENTITY_ENV}). Never pass a token as an "
            "argument: the command line is visible to every user in `ps`.",
        )

    def handle(self, *args, token_file: Path | None, **options):
        raw = self._read_token(token_file)
        user = authenticate_token(raw, scope="mcp")
        if user is None:
            raise CommandError(
                "The token is not valid for MCP (unknown, revoked, its user inactive, or not "
                "created with --scope mcp)."
            )
        from portal.mcp.server import (
            serve_stdio,
        )  # the SDK takes a while to import: only when serving

        self.stderr.write(f"Serving MCP over stdio as {user.get_username()}.")
        anyio.run(serve_stdio, raw)

    def _read_token(self, token_file: Path | None) -> str:
        if token_file is not None:
            try:
                raw = token_file.read_text().strip()
            except OSError as exc:
                raise CommandError(f"Cannot read {token_file}: {exc.strerror}") from None
        else:
            # Out of the environment once read: nothing this process starts inherits it.
            raw = os.environ.pop(IDENTITY_ENV, "").strip()
        if not raw:
            raise CommandError(
                f"No token: pass --token-file FILE or set {IDENTITY_ENV} "
                "(create one with `manage.py portal_token USER --name NAME`)."
            )
        return raw
