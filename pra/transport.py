"""How the pra app reaches a host: endpoints and keys from settings, over portal.lib.ssh."""

from __future__ import annotations

from django.conf import settings

from portal.lib import ssh
from pra.models import Host


def endpoint(host: Host) -> ssh.Endpoint:
    return ssh.Endpoint(
        address=host.address, port=host.port, user=host.ssh_user, host_key=host.host_key
    )


def run_exec(host: Host, command: str, **kwargs) -> ssh.CommandResult:
    """Send a whitelisted ``ACTION ARG…`` line on the exec key (forced ``pra-exec``)."""
    kwargs.setdefault("connect_timeout", settings.PRA_CONNECT_TIMEOUT)
    kwargs.setdefault("max_output", settings.PRA_MAX_OUTPUT)
    return ssh.run_command(endpoint(host), settings.PRA_SSH_KEY_FILE, command, **kwargs)


def open_exec_session(host: Host) -> ssh.Session:
    """Connect and authenticate on the exec key; the command is sent later (``exec``)."""
    return ssh.Session(endpoint(host), settings.PRA_SSH_KEY_FILE, settings.PRA_CONNECT_TIMEOUT)


def run_diag(host: Host, argv: list[str], *, timeout: float | None = None) -> ssh.CommandResult:
    """Run a read-only ``pra-diag`` command on the diag key (PRA_DIAG_TIMEOUT by default)."""
    return ssh.run_command(
        endpoint(host),
        settings.PRA_DIAG_SSH_KEY_FILE,
        " ".join(argv),
        connect_timeout=settings.PRA_CONNECT_TIMEOUT,
        command_timeout=timeout or settings.PRA_DIAG_TIMEOUT,
        max_output=settings.PRA_MAX_OUTPUT,
    )
