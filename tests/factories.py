"""Builders of rows that tests of several apps need (one copy, here in tests/)."""

from __future__ import annotations

from backups.choices import Transport
from backups.models import BackupSource
from pra import actions
from pra.models import Host

# A syntactically valid key for hosts that are never contacted.
OFFLINE_HOST_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3mhsK1n2V4Fq0n2V3mYwJ1M3VnYkS5cK3Zq0wq4d4X"
)

RATIONALE = "unbound is inactive on the resolver and clients time out on DNS lookups"


def offline_host(name: str = "dns-1") -> Host:
    return actions.add_host(
        name=name, address="192.0.2.10", port=22, ssh_user="pra", host_key=OFFLINE_HOST_KEY
    )


def propose(by, host, action="restart_unbound", params=None, **kwargs):
    return actions.propose_action(
        action=action,
        host=host,
        params=params or {},
        rationale=kwargs.pop("rationale", RATIONALE),
        by=by,
        **kwargs,
    )


def make_source(name: str, kind: str, **fields) -> BackupSource:
    """A backup source, validated as the admin would (direct transport unless given)."""
    source = BackupSource(name=name, kind=kind, **{"transport": Transport.DIRECT, **fields})
    source.full_clean()
    source.save()
    return source
