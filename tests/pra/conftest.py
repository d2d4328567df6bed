"""Fixtures of the remediation tests: a real loopback SSH target (``pra.devtarget``).

sshd, the forced-command key lines, ``pra-exec``, ``sudo`` and ``pra-run`` are
the real thing. The end commands (systemctl, journalctl, podman, resolvectl,
logrotate) are stand-ins because this machine has no systemd: they record each
call (``target.calls()``) and keep unit/container states as files
(``set_unit``, ``add_container``, ``add_journal``, ``fail_command``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pra.devtarget import LocalTarget, start_local_target


@pytest.fixture
def ssh_target(tmp_path) -> Iterator[LocalTarget]:
    """A target of this test's own (its own sshd, keys and state): for tests that
    change the target itself, e.g. ``rotate_host_key()`` or removing a stand-in."""
    target = start_local_target(tmp_path / "target")
    yield target
    target.stop()


@pytest.fixture(scope="session")
def shared_ssh_target(tmp_path_factory) -> Iterator[LocalTarget]:
    """One sshd for the whole session; its stand-in state is reset before each test
    that uses it (see ``_reset_shared_ssh_target``). Do not rotate its host key."""
    target = start_local_target(tmp_path_factory.mktemp("pra-target"))
    yield target
    target.stop()


@pytest.fixture(autouse=True)
def _reset_shared_ssh_target(request):
    """Each test using the shared target (directly or through another fixture) starts
    with no recorded calls, units, containers, journal lines, failures or log lines."""
    if "shared_ssh_target" in request.fixturenames:
        request.getfixturevalue("shared_ssh_target").reset()
    yield


@pytest.fixture
def target_host(shared_ssh_target, settings):
    """The shared loopback sshd registered as host ``dns-1``, its key pinned, and the
    portal's exec/diag key settings pointing at the target's client keys."""
    from tests.pra.helpers import register

    return register(shared_ssh_target, settings)
