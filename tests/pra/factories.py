"""Builders for remediation tests (shared with the other apps' tests: ``tests.factories``)."""

from tests.factories import OFFLINE_HOST_KEY, RATIONALE, offline_host, propose

__all__ = ["OFFLINE_HOST_KEY", "RATIONALE", "offline_host", "propose"]
