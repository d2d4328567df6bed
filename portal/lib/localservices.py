"""Find or start the local services the portal and its tests need.

Used by ``make run`` (Redis) and ``make test`` (PostgreSQL and Redis) before
Django is set up, so this module imports nothing from Django. A service that
answers at the configured URL is used as is; otherwise a private one is
started under ``var/``, installing the Debian package first when missing and
running as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit


class ServiceError(RuntimeError):
    """A service could not be found or started; the message says what to do."""


def is_root() -> bool:
    return os.geteuid() == 0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_apt_updated = False


def apt_install(*packages: str) -> None:
    """Install Debian packages (root only); raise with a clear message otherwise."""
    global _apt_updated
    if not is_root() or shutil.which("apt-get") is None:
        raise ServiceError(
            f"Missing {', '.join(packages)}. Install it (Debian/Ubuntu: "
            f"sudo apt-get install -y {' '.join(packages)}) and run again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"Installing {' '.join(packages)} with apt-get…", file=sys.stderr)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        _apt_updated = True
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServiceError(f"apt-get install {' '.join(packages)} failed:\n{result.stderr[-2000:]}")


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not come up within {timeout:.0f}s.")


# --- Redis -------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(
    var_dir: Path, *, port: int | None = None, daemonize: bool = False
) -> tuple[str, subprocess.Popen[bytes] | None, Path]:
    """Start a private redis-server; returns (url, Popen or None, pidfile)."""
    binary = shutil.which("redis-server")
    if binary is None:
        apt_install("redis-server")
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = port or free_port()
    data = var_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    pidfile = data / "redis.pid"
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data),
        "--pidfile", str(pidfile),
        "--logfile", str(data / "redis.log"),
    ]  # fmt: skip
    if daemonize:
        subprocess.run([*args, "--daemonize", "yes"], check=True)
        proc: subprocess.Popen[bytes] | None = None
    else:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_answers(url), timeout=10, what="redis-server")
    return url, proc, pidfile


# --- PostgreSQL --------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    import psycopg

    parts = urlsplit(url)
    try:
        with psycopg.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=parts.username or "postgres",
            password=parts.password or None,
            dbname="postgres",
            connect_timeout=2,
        ):
            return True
    except psycopg.Error:
        return False


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if is_root() else cmd


def start_postgres(var_dir: Path) -> tuple[str, Path, Path]:
    """Start a throwaway cluster under var_dir; returns (url, pg_ctl, datadir)."""
    bindir = _pg_bindir()
    if bindir is None:
        apt_install("postgresql")
        bindir = _pg_bindir()
        if bindir is None:
            raise ServiceError("PostgreSQL was installed but initdb is not found.")
    root = var_dir / "pgtest"
    datadir = root / "data"
    sockets = root / "run"
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    if is_root():
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    if not (datadir / "PG_VERSION").exists():
        if datadir.exists():
            shutil.rmtree(datadir)
        subprocess.run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            [str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-w",
             "-l", str(root / "postgres.log"), "start"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgres://postgres@127.0.0.1:{port}/portal"
    wait_until(lambda: postgres_answers(url), timeout=20, what="PostgreSQL")
    return url, bindir / "pg_ctl", datadir


def stop_postgres(pg_ctl: Path, datadir: Path) -> None:
    subprocess.run(
        _as_postgres([str(pg_ctl), "-D", str(datadir), "-m", "immediate", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
