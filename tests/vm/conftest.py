"""The VM tier: every catalog action against a real Debian host with systemd under QEMU.

One VM for the whole tier (``pra.vmtarget``): the image is built once and cached
(keyed by the recipe's hash), each session boots its own qcow2 overlay. The
build starts in a thread as soon as pytest has collected a ``vm`` test, so it
overlaps the tests that run before this folder; the guest boots (~15 s) when the
tier's first test needs it. If the image cannot be
built or the guest does not boot, every test of the tier FAILS with the reason:
the tier is never skipped.

The portal's side is the real thing as well: keys rendered into the target files
with ``pra_render_target``, copied into the guest and installed by their
``install.sh`` as root (as an operator would), the host key pinned with
``pra_host add --fingerprint`` (the fingerprint read off the guest's console),
and the actions run by a real RQ worker and daphne on this test's PostgreSQL
and Redis.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.management import call_command

from pra.vmtarget import recipe
from pra.vmtarget.target import install_rendered
from pra.vmtarget.vm import VM
from tests.stack import LiveStack
from tests.vm.portal import Portal, make_portal, pin_vm, portal_env

BASE_DIR = Path(__file__).resolve().parents[2]
BUILD_AND_BOOT_TIMEOUT = 1500.0  # a cold image build (~2-3 min) plus a TCG boot, with margin
VM_DIR = Path(__file__).resolve().parent


@dataclass
class _Boot:
    """The tier's image, built in a background thread; its VM, booted when first needed
    (an idle guest under TCG still takes a third of a core: not during the other tests)."""

    thread: threading.Thread | None = None
    image: recipe.Image | None = None
    vm: VM | None = None
    error: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    workdir: Path | None = None

    def build(self) -> None:
        started = time.monotonic()
        try:
            image = recipe.ensure_image(log=lambda msg: None)
            self.figures["image_build_s"] = (
                image.built_seconds if image.built_seconds is not None else 0.0
            )
            self.figures["image_cached"] = float(image.built_seconds is None)
            self.figures["image_lookup_s"] = time.monotonic() - started
            self.image = image
        except Exception as exc:  # reported by the `vm` fixture, which fails every test
            self.error = f"{exc.__class__.__name__}: {exc}"

    def boot(self) -> None:
        assert self.image is not None and self.workdir is not None, "built, set at collection"
        try:
            vm = VM(self.image, self.workdir)
            vm.start()
            self.figures["boot_s"] = vm.boot_seconds
            self.vm = vm
        except Exception as exc:
            self.error = f"{exc.__class__.__name__}: {exc}"


_BOOT = _Boot()


def _in_tier(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(VM_DIR)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _BOOT.thread is None and any(_in_tier(item) for item in session.items):
        factory = session.config._tmp_path_factory  # type: ignore[attr-defined]  # pytest's own
        _BOOT.workdir = Path(factory.mktemp("vm"))
        _BOOT.thread = threading.Thread(target=_BOOT.build, name="vm-image", daemon=True)
        _BOOT.thread.start()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_tier(item):
            item.add_marker(pytest.mark.vm)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def vm() -> Iterator[VM]:
    """The booted guest (waits for the background boot). Fails, never skips."""
    if _BOOT.thread is None:
        pytest.fail("the VM boot was never started (pytest_collection_finish did not run)")
    _BOOT.thread.join(BUILD_AND_BOOT_TIMEOUT)
    if _BOOT.thread.is_alive():
        pytest.fail(f"the VM image was not built within {BUILD_AND_BOOT_TIMEOUT:.0f} s")
    if _BOOT.image is not None and _BOOT.vm is None and not _BOOT.error:
        _BOOT.boot()
    if _BOOT.vm is None:
        pytest.fail(f"the VM tier cannot run: {_BOOT.error}")
    print(f"VM figures: {_BOOT.figures}")
    yield _BOOT.vm
    _BOOT.vm.stop()


def vm_figures() -> dict[str, float]:
    return _BOOT.figures


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


@dataclass
class Installed:
    """The guest with the portal's target files installed; the portal's key files."""

    vm: VM
    exec_key: Path
    diag_key: Path
    render_dir: Path
    install_output: str


@pytest.fixture(scope="session")
def installed(vm, tmp_path_factory, django_db_blocker) -> Installed:
    """Render with the portal's command, copy in, run install.sh as root in the guest."""
    keys = tmp_path_factory.mktemp("vm-keys")
    exec_key, diag_key = keys / "exec_ed25519", keys / "diag_ed25519"
    _keygen(exec_key, "portal-exec")
    _keygen(diag_key, "portal-diag")
    render_dir = tmp_path_factory.mktemp("vm-render")
    with django_db_blocker.unblock():
        call_command(
            "pra_render_target",
            str(render_dir),
            "--exec-pubkey",
            str(exec_key.with_suffix(".pub")),
            "--diag-pubkey",
            str(diag_key.with_suffix(".pub")),
            stdout=open("/dev/null", "w"),  # noqa: SIM115
        )
    # Boot finished (an event: systemd says so), and with nothing failed.
    _, state = vm.root("systemctl is-system-running --wait", check=False, timeout=900)
    if state.strip() != "running":
        _, failed = vm.root("systemctl --failed --no-legend", check=False)
        pytest.fail(f"the VM booted {state.strip()!r}; failed units:\n{failed}")
    # The operator's steps on the target (the README's): the user, then install.sh.
    output = install_rendered(vm, render_dir)
    return Installed(vm, exec_key, diag_key, render_dir, output)


# Latency of each action on the VM (pre-flight; approval → verdict), printed at the end.
TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture
def vm_host(installed, settings, db):
    """The guest registered as ``vm-1`` with ``pra_host add`` (console fingerprint)."""
    host, _ = pin_vm(installed.vm, installed, settings)
    return host


@pytest.fixture
def portal(
    transactional_db, installed, settings, operator, approver, approver2, tmp_path
) -> Iterator[Portal]:
    """daphne + an RQ worker on this test's database and Redis, the guest as ``vm-1``."""
    pin_vm(installed.vm, installed, settings)
    with LiveStack(portal_env(installed, tmp_path), tmp_path) as stack:
        running = make_portal(stack, operator, approver, approver2)
        yield running
        TIMINGS.update(running.timings)
    worker_log = tmp_path / "worker.log"
    if worker_log.exists():
        print(f"--- worker log (tail) ---\n{worker_log.read_text()[-3000:]}")


def pytest_terminal_summary(terminalreporter) -> None:
    if _BOOT.thread is None:
        return
    terminalreporter.section("VM tier figures")
    for key, value in _BOOT.figures.items():
        terminalreporter.write_line(f"{key}: {value:.1f}")
    for action, figures in sorted(TIMINGS.items()):
        shown = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
        terminalreporter.write_line(f"{action}: {shown}")
