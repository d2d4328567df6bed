"""Demo data for `make run`: the local loopback target registered as host `demo-target`
(its containers, for restart_container, are created by ``portal.devstack``)."""

from __future__ import annotations

import os

from pra import actions
from pra.models import Host

DEMO_HOST = "demo-target"


def seed(stdout) -> None:
    """Register (or re-point) the demo target started by `make run`, if there is one."""
    address = os.environ.get("PORTAL_DEMO_TARGET")
    key = os.environ.get("PORTAL_DEMO_TARGET_KEY")
    user = os.environ.get("PORTAL_DEMO_TARGET_USER", "root")
    if not address or not key:
        return
    ip, port = address.rsplit(":", 1)
    host = Host.objects.filter(name=DEMO_HOST).first()
    if host is None:
        host = actions.add_host(
            name=DEMO_HOST,
            address=ip,
            port=int(port),
            ssh_user=user,
            host_key=key,
            tags="demo,loopback",
            by="system:demo",
        )
    else:
        # The demo sshd gets a new port each run; its key is ours and stays the same.
        host = actions.update_host(host, by="system:demo", address=ip, port=int(port),
                                   ssh_user=user)  # fmt: skip
        if host.host_key.strip() != key.strip():
            actions.pin_host_key(host, key, by="system:demo")
    containers = os.environ.get("PORTAL_DEMO_CONTAINERS", "")
    stdout.write(
        f"Demo target: host '{DEMO_HOST}' at {address} (unbound starts inactive: "
        "propose restart_unbound on it, approve it as 'approver' and watch it complete"
        + (
            f"; containers for restart_container: {containers.replace(',', ', ')}"
            if containers
            else ""
        )
        + ")."
    )
