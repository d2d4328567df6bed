"""Read-only diagnostics run on a host through the target's pra-diag wrapper."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib import ssh
from pra import transport
from pra.actions.common import ActionError, _require_perm, _storable
from pra.catalog import CatalogError
from pra.diagnostics import get_diagnostic
from pra.models import DiagnosticRun, Host

DIAGNOSE_PERMISSION = "portal.run_diagnostics"


def run_diagnostic(
    host: Host | str,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    by: User | Actor,
) -> DiagnosticRun:
    """Run one read-only diagnostic over SSH and keep its result (usable as evidence)."""
    actor = Actor.of(by)
    _require_perm(actor.user, DIAGNOSE_PERMISSION, "run diagnostics")
    _storable(host=host if isinstance(host, str) else "", name=name, params=params)
    try:
        argv = get_diagnostic(name).argv(params)
    except CatalogError as exc:
        raise ActionError("invalid", str(exc)) from None
    if isinstance(host, str):
        found = Host.objects.filter(name=host).first()
        if found is None:
            raise ActionError("invalid", f"unknown host {host!r}")
        host = found
    if name == "test_connectivity":
        argv = _connectivity_argv(host, argv, actor)
    exit_code, output, error = None, "", ""
    try:
        result = transport.run_diag(host, argv)
        exit_code, output = result.exit_code, result.stdout + result.stderr
    except ssh.SSHError as exc:
        error = str(exc)
    with transaction.atomic():
        run = DiagnosticRun.objects.create(
            host=host,
            command=" ".join(argv),
            exit_code=exit_code,
            output=output,
            error=error,
            requested_by=actor.label,
        )
        record(
            AuditEventType.DIAGNOSTIC_RUN,
            actor=actor,
            subject=run,
            details={
                "host": host.name,
                "command": run.command,
                "exit_code": exit_code,
                "error": error,
            },
        )
    return run


def connectivity_ports() -> tuple[int, ...]:
    """Ports ``test_connectivity`` may probe, besides each registered host's SSH port."""
    return tuple(settings.PRA_CONNECTIVITY_PORTS)


def _connectivity_argv(host: Host, argv: list[str], actor: Actor) -> list[str]:
    """Only registered hosts, on allowed ports: a target is not a port scanner.

    The destination is a registered host's name or address (a name is sent as its
    address); the port is one of ``PRA_CONNECTIVITY_PORTS`` or that host's SSH port.
    A refusal is audited like a run.
    """
    verb, destination, port = argv[0], argv[1], int(argv[2])
    target = Host.objects.filter(name=destination).first() or (
        Host.objects.filter(address=destination).order_by("pk").first()
    )
    allowed = set(connectivity_ports())
    if target is not None:
        allowed |= set(Host.objects.filter(address=target.address).values_list("port", flat=True))
    if target is not None and port in allowed:
        return [verb, target.address, str(port)]
    if target is None:
        why = f"{destination} is not a registered host's name or address"
    else:
        why = (
            f"port {port} is not allowed for {destination} (allowed: "
            + ", ".join(str(p) for p in sorted(allowed))
            + ")"
        )
    with transaction.atomic():
        record(
            AuditEventType.DIAGNOSTIC_RUN,
            actor=actor,
            subject=host,
            details={
                "host": host.name,
                "command": " ".join(argv),
                "refused": why,
            },
        )
    raise ActionError(
        "invalid",
        f"test_connectivity refused: {why}. It reaches only registered hosts, on their SSH "
        "port or the ports the admin allows (PRA_CONNECTIVITY_PORTS).",
    )
