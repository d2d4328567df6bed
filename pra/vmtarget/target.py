"""The VM as a remediation target: the portal's rendered files installed the operator's way.

``install_rendered`` is what the README tells an operator to do on a new host,
done over the harness's root SSH: create the ``pra`` user, copy the rendered
directory in, run its ``install.sh``. ``VMTarget`` adds the keys and the
render for ``make run TARGET=vm`` (the tests render with the management command).

Imports nothing from Django at module level.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pra.vmtarget import recipe
from pra.vmtarget.vm import VM, VMError

REMOTE_DIR = "/root/pra-target"


def install_rendered(vm: VM, render_dir: Path, *, user: str = "pra") -> str:
    """Create ``user``, copy ``render_dir`` into the guest, run its install.sh; its output."""
    vm.root(f"id {user} >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash {user}")
    vm.put_dir(render_dir, REMOTE_DIR)
    _, output = vm.root(f"{REMOTE_DIR}/install.sh")
    return output


class VMTarget:
    """A booted VM with the portal's wrappers installed, for the demo.

    Attributes like :class:`pra.devtarget.LocalTarget`'s: ``address``, ``port``,
    ``user``, ``host_key_line``, ``exec_key_path``, ``diag_key_path``.
    """

    address = "127.0.0.1"
    user = "pra"

    def __init__(self, workdir: Path, *, log=print) -> None:
        self.workdir = Path(workdir).resolve()
        self.keys_dir = self.workdir / "keys"
        self.exec_key_path = self.keys_dir / "exec_ed25519"
        self.diag_key_path = self.keys_dir / "diag_ed25519"
        self.log = log
        self.vm: VM | None = None

    def _vm(self) -> VM:
        if self.vm is None:
            raise VMError("the VM target has not been started")
        return self.vm

    @property
    def port(self) -> int:
        return self._vm().ssh_port

    @property
    def http_port(self) -> int:
        return self._vm().http_port

    @property
    def host_key_line(self) -> str:
        return self._vm().host_key

    def start(self) -> None:
        from pra.target import render_target

        self.keys_dir.mkdir(parents=True, exist_ok=True)
        for key, comment in (
            (self.exec_key_path, "portal-exec"),
            (self.diag_key_path, "portal-diag"),
        ):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    check=True,
                )
        image = recipe.ensure_image(log=self.log)
        if image.built_seconds is not None:
            self.log(f"VM image built in {image.built_seconds:.0f} s: {image.directory}")
        self.vm = VM(image, self.workdir / "vm")
        self.vm.start()
        self.log(f"VM booted in {self.vm.boot_seconds:.0f} s (SSH on 127.0.0.1:{self.port})")
        render_dir = self.workdir / "render"
        render_target(
            render_dir,
            exec_pubkey=self.exec_key_path.with_suffix(".pub").read_text(),
            diag_pubkey=self.diag_key_path.with_suffix(".pub").read_text(),
        )
        install_rendered(self.vm, render_dir)

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.stop()
