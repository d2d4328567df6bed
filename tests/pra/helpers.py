"""Shared pieces of the remediation tests that talk to the real loopback target."""

from __future__ import annotations

import os

from django.db import connection

from pra import actions
from pra.models import Host
from tests.stack import BASE_DIR


def register(target, settings, name: str = "dns-1") -> Host:
    settings.PRA_SSH_KEY_FILE = target.exec_key_path
    settings.PRA_DIAG_SSH_KEY_FILE = target.diag_key_path
    settings.PRA_RETRY_BACKOFF = 0.05
    return actions.add_host(
        name=name,
        address=target.address,
        port=target.port,
        ssh_user=target.user,
        host_key=target.host_key_line,
    )


def restarts(target, *words: str) -> int:
    return sum(1 for call in target.calls() if call[: len(words)] == list(words))


def child_env(target) -> dict[str, str]:
    """Environment for a separate process working on this test's database and Redis."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "PRA_SSH_KEY_FILE": str(target.exec_key_path),
        "PRA_DIAG_SSH_KEY_FILE": str(target.diag_key_path),
        "PYTHONPATH": str(BASE_DIR),
    }
