"""The VM target's figures: image build (cold and cached), boot, and each catalog action's
latency on the guest, next to the reference measured by hand on an idle machine of this
kind (../shared/FIELD-NOTES.md: debootstrap ~60 s, boot to SSH ~18 s, one SSH command
~1.1 s, reboot ~30 s).

`make bench-vm` runs this (``--cold`` also builds the image from scratch in a temporary
cache, which takes minutes). Each action is sent over the portal's exec key exactly as the
worker sends it (``ACTION ARG``: pra-exec → sudo → pra-run), then its verification probe
runs over the diag key; both through ``portal.lib.ssh`` with the pinned host key. A
benchmark that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from portal.lib import ssh  # noqa: E402
from pra.catalog import CATALOG, parse_before  # noqa: E402
from pra.vmtarget import recipe  # noqa: E402
from pra.vmtarget.target import VMTarget  # noqa: E402

REFERENCE = {
    "image build (cold)": "~60 s debootstrap + ~2 s mkfs (idle machine)",
    "image (cached)": "-",
    "boot to SSH": "~18 s",
    "one action": "~1.1 s per SSH round trip",
    "reboot_system": "~30 s to a new boot id",
}
ACTIONS: tuple[tuple[str, dict[str, str]], ...] = (
    ("restart_unbound", {}),
    ("reload_caddy", {}),
    ("restart_caddy", {}),
    ("flush_dns_cache", {}),
    ("rotate_logs", {}),
    ("restart_container", {"name": "web-1"}),
    ("reboot_system", {}),
)


def _row(name: str, seconds: float, ref: str) -> None:
    print(f"{name:<28} {seconds:>9.1f} s   reference: {ref}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="also time a build from scratch")
    args = parser.parse_args()

    if args.cold:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["PORTAL_VM_CACHE"] = cache
            image = recipe.ensure_image(log=lambda msg: print(msg, file=sys.stderr))
            _row("image build (cold)", image.built_seconds or 0.0, REFERENCE["image build (cold)"])
        os.environ.pop("PORTAL_VM_CACHE")
    started = time.monotonic()
    image = recipe.ensure_image(log=lambda msg: print(msg, file=sys.stderr))
    if image.built_seconds is not None:
        _row("image build (cold)", image.built_seconds, REFERENCE["image build (cold)"])
    else:
        _row("image (cached)", time.monotonic() - started, REFERENCE["image (cached)"])

    with tempfile.TemporaryDirectory() as work:
        target = VMTarget(Path(work), log=lambda msg: print(msg, file=sys.stderr))
        try:
            target.start()
            vm = target.vm
            assert vm is not None, "started"
            _row("boot to SSH (console READY)", vm.boot_seconds, REFERENCE["boot to SSH"])
            vm.root("systemctl is-system-running --wait", check=False, timeout=900)
            vm.root("systemctl start pra-demo-containers.service", timeout=900)
            endpoint = ssh.Endpoint(
                address=target.address,
                port=target.port,
                user=target.user,
                host_key=target.host_key_line,
            )
            for name, params in ACTIONS:
                spec = CATALOG[name]
                t0 = time.monotonic()
                result = ssh.run_command(
                    endpoint, target.exec_key_path, spec.wire_command(params),
                    connect_timeout=90, command_timeout=spec.timeout,
                )  # fmt: skip
                ran = time.monotonic() - t0
                verified = "no probe"
                if spec.probe is not None:
                    argv = spec.probe.argv(params, parse_before(result.stdout))
                    deadline = time.monotonic() + max(spec.probe.within, 60)
                    while True:
                        try:
                            probe = ssh.run_command(
                                endpoint, target.diag_key_path, " ".join(argv),
                                connect_timeout=90, command_timeout=120,
                            )  # fmt: skip
                            if probe.exit_code == 0 or time.monotonic() > deadline:
                                verified = probe.stdout.strip().splitlines()[0]
                                break
                        except ssh.SSHError as exc:
                            if time.monotonic() > deadline:
                                verified = f"unreachable: {exc}"
                                break
                total = time.monotonic() - t0
                ref = REFERENCE["reboot_system" if name == "reboot_system" else "one action"]
                print(
                    f"{name:<28} {ran:>9.1f} s   verified after {total:.1f} s "
                    f"(exit {result.exit_code}; {verified[:70]})   reference: {ref}"
                )
        finally:
            target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
