"""The VM target's image recipe: which Debian packages, which files, and how it is built.

The image is a raw ext4 root filesystem made with ``debootstrap`` and
``mkfs.ext4 -d`` (no loop mount), plus the kernel and initrd for a direct
kernel boot. It is built once and cached under ``~/.cache/ops-portal/``
(``PORTAL_VM_CACHE`` overrides), in a directory named by the recipe's hash:
changing a package, a file under ``data/`` or this module builds a new one.
Runs never write to it: each boots a qcow2 overlay backed by it (``vm.py``).

Only Debian packages, from the mirror the machine's own apt uses. The
container image the VM runs is a tarball made in the chroot from
``busybox-static``: nothing comes from a registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
DATA_DIR = Path(__file__).resolve().parent / "data"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "udev",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "openssh-server",
    "sudo",
    "unbound",
    "dns-root-data",
    "caddy",
    "podman",
    # podman's containers-common needs a "container-network-stack"; debootstrap resolves
    # no virtual packages, so name the provider (the containers run with --network none).
    "netavark",
    "busybox-static",
    "logrotate",
    "iproute2",
    "procps",
)
DISK_SIZE = "3G"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Tools the builder and the runner need on the host, and the Debian package of each.
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "ssh-keygen": "openssh-client",
}


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class Image:
    """A built image in the cache: root filesystem, kernel, initrd, harness key."""

    directory: Path
    built_seconds: float | None  # None: taken from the cache

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def root_key(self) -> Path:
        """Private key of the VM's root (the harness's way in; never the portal's)."""
        return self.directory / "root_ed25519"


def cache_root() -> Path:
    return Path(os.environ.get("PORTAL_VM_CACHE") or Path.home() / ".cache" / "ops-portal")


def recipe_hash() -> str:
    """SHA-256 over the package list, the suite, the build steps (``_build``'s source) and
    every file under ``data/``; not the mirror, not this module's comments."""
    digest = hashlib.sha256()
    digest.update(f"{SUITE}\n{' '.join(PACKAGES)}\n{DISK_SIZE}\n".encode())
    digest.update(inspect.getsource(_build).encode())
    for path in sorted(p for p in DATA_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(DATA_DIR.parent)).encode() + b"\0")
        digest.update(f"{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (one-line or deb822 sources)."""
    candidates = [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            match = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line) or re.match(
                r"URIs:\s*(\S+)", line
            )
            if not match:
                continue
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian") and "security" not in uri:
                return uri
    return DEFAULT_MIRROR


def missing_host_tools() -> list[str]:
    """Debian packages to install for the builder and QEMU (empty: all present)."""
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})


def ensure_image(*, log=print) -> Image:
    """The cached image for this recipe, building it first if needed (root only).

    Two processes asking at once build it once: the second waits on the lock.
    """
    key = recipe_hash()[:16]
    root = cache_root()
    directory = root / f"vm-{SUITE}-{key}"
    image = Image(directory, None)
    if (directory / "ok").exists():
        return image
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"vm-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "ok").exists():
            return image
        started = time.monotonic()
        _build(directory, root, log=log)
        return Image(directory, time.monotonic() - started)


def _run(argv: list[str], what: str, *, timeout: float, env: dict | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError:
        raise ImageBuildError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what}: still running after {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-3000:]
        raise ImageBuildError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _debootstrap_run(tree: Path, argv: list[str], what: str, **kwargs) -> None:
    try:
        _run(argv, what, **kwargs)
    except ImageBuildError as exc:
        log = tree / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise ImageBuildError(f"{exc}\n--- debootstrap.log (tail) ---\n{detail}") from None


def _base_key() -> str:
    return hashlib.sha256(f"{SUITE}\n{' '.join(PACKAGES)}\n".encode()).hexdigest()[:16]


def _bootstrap(tree: Path, root: Path, debs: Path, mirror: str, env: dict, *, log) -> None:
    """The debootstrapped tree: from the base tarball of this package list when there is
    one (a change to data/ then rebuilds in seconds), else debootstrap and keep one."""
    base = root / f"base-{SUITE}-{_base_key()}.tar"
    if base.exists():
        log(f"VM image: unpacking {base.name}")
        _run(["tar", "-C", str(tree), "--numeric-owner", "-xf", str(base)], "tar -x", timeout=600)
        return
    log(f"VM image: debootstrap {SUITE} from {mirror} ({len(PACKAGES)} packages)…")
    t0 = time.monotonic()
    _debootstrap_run(
        tree,
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(tree),
            mirror,
        ],
        "debootstrap",
        timeout=1800,
        env=env,
    )
    log(f"VM image: debootstrap took {time.monotonic() - t0:.0f} s")
    for stale in root.glob(f"base-{SUITE}-*.tar"):
        stale.unlink()
    partial = base.with_suffix(".partial")
    _run(
        ["tar", "-C", str(tree), "--numeric-owner", "-cf", str(partial), "."], "tar -c", timeout=600
    )
    partial.rename(base)


def _build(directory: Path, root: Path, *, log) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the VM image needs root (debootstrap, chroot)")
    missing = missing_host_tools()
    if missing:
        raise ImageBuildError(f"missing host tools: apt-get install -y {' '.join(missing)}")
    work = root / f"{directory.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    tree.mkdir(parents=True)
    debs = root / "debs"  # downloaded .debs, kept across recipe changes
    debs.mkdir(exist_ok=True)
    mirror = debian_mirror()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    try:
        _bootstrap(tree, root, debs, mirror, env, log=log)
        shutil.copytree(DATA_DIR / "rootfs", tree, dirs_exist_ok=True, symlinks=True)
        shutil.copy2(DATA_DIR / "setup.sh", tree / "root" / "pra-setup.sh")
        _run(["chroot", str(tree), "/bin/bash", "/root/pra-setup.sh"], "setup.sh", timeout=300)
        (tree / "root" / "pra-setup.sh").unlink()

        key = work / "root_ed25519"
        _run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pra-vm-harness", "-f", str(key)],
            "ssh-keygen",
            timeout=30,
        )
        ssh_dir = tree / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)

        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        initrds = sorted((tree / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise ImageBuildError("the tree has no /boot/vmlinuz-* or /boot/initrd.img-*")
        shutil.copy2(kernels[-1], work / "vmlinuz")
        shutil.copy2(initrds[-1], work / "initrd.img")

        disk = work / "rootfs.img"
        _run(["truncate", "-s", DISK_SIZE, str(disk)], "truncate", timeout=30)
        _run(
            ["mkfs.ext4", "-q", "-F", "-L", "pra-vm", "-d", str(tree), str(disk)],
            "mkfs",
            timeout=600,
        )
        shutil.rmtree(tree)
        (work / "ok").write_text(f"{SUITE} {mirror}\n")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)
        work.rename(directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
