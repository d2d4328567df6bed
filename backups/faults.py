"""How a backup or restore tool fails: classified causes, the timeouts bounding each wait.

Every wait of a backup tool is bounded: connecting (``BACKUP_CONNECT_TIMEOUT``,
passed to the tool itself: ``PGCONNECT_TIMEOUT`` for libpq tools, a timed
``redis-cli PING`` before ``--rdb``), one Kubernetes API request
(``BACKUP_KUBECTL_TIMEOUT``, ``kubectl --request-timeout``), a lock
(``BACKUP_LOCK_TIMEOUT``, watched from a second connection because pg_dump and
pg_restore reset ``lock_timeout`` themselves) and progress
(``BACKUP_STALL_TIMEOUT`` or the source's own ``stall_timeout``: no byte moved
for that long kills the tool's process group). Each ends the run FAILED with
one of the causes below.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class FailureCause(models.TextChoices):
    """Why a run (or one of its tools) failed; shown on the run and in the notification."""

    CONNECT_TIMEOUT = "connect_timeout", "Server did not answer (connect timeout)"
    UNREACHABLE = "unreachable", "Server unreachable (refused, unknown host)"
    STALLED = "stalled", "No progress (stall watchdog)"
    LOCK_TIMEOUT = "lock_timeout", "Waited too long for a lock"
    TIMEOUT = "timeout", "Took too long"
    TOOL_ERROR = "tool_error", "Tool failed"
    CONFIG = "config", "Misconfigured source"
    STORAGE = "storage", "Storage error"
    NO_SPACE = "no_space", "Not enough free space (checked before starting)"
    WORKER_LOST = "worker_lost", "Worker lost"
    CRASH = "crash", "Internal error"


# Seconds a tool gets to exit after SIGTERM before its process group is SIGKILLed.
KILL_GRACE = 3.0


def timeout(name: str) -> int:
    """A backups timeout in seconds, from settings (read on each use, so tests and
    long-lived workers see a change at once)."""
    return int(getattr(settings, name))


def connect_timeout() -> int:
    return timeout("BACKUP_CONNECT_TIMEOUT")


def kubectl_timeout() -> int:
    return timeout("BACKUP_KUBECTL_TIMEOUT")


def lock_timeout() -> int:
    return timeout("BACKUP_LOCK_TIMEOUT")


def stall_timeout(source=None) -> int:
    """The source's own stall timeout, else ``BACKUP_STALL_TIMEOUT``."""
    own = getattr(source, "stall_timeout", None)
    return int(own) if own else timeout("BACKUP_STALL_TIMEOUT")


def missed_after() -> int:
    return timeout("BACKUP_MISSED_AFTER")


# What each tool prints when a wait ran out or a server could not be reached (lower case).
_LOCK = ("canceling statement due to lock timeout",)
_CONNECT = (
    "timeout expired",  # libpq: PGCONNECT_TIMEOUT
    "client.timeout exceeded",  # kubectl --request-timeout
    "context deadline exceeded",
    "i/o timeout",
    "connection timed out",
)
_UNREACHABLE = (
    "connection refused",
    "could not translate host name",
    "name or service not known",
    "no route to host",
    "network is unreachable",
    "temporary failure in name resolution",
)


def classify(stderr: str) -> str:
    """The cause a failed tool's stderr points at (``tool_error`` when nothing specific)."""
    text = stderr.lower()
    if any(s in text for s in _LOCK) or (
        "canceling statement due to statement timeout" in text and "lock table" in text
    ):  # pg_dump --lock-wait-timeout is a statement timeout on its LOCK TABLE
        return FailureCause.LOCK_TIMEOUT
    if any(s in text for s in _CONNECT):
        return FailureCause.CONNECT_TIMEOUT
    if any(s in text for s in _UNREACHABLE):
        return FailureCause.UNREACHABLE
    return FailureCause.TOOL_ERROR
