"""Environment plumbing the benchmarks share: services, databases, processes, machine lines.

Import as ``from bench._env import ...`` once ``BASE_DIR`` is on ``sys.path``; the
benches do that before importing it, so ``python bench/x.py`` and
``python -m bench.x`` both work. Nothing here measures anything.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))


class BenchError(RuntimeError):
    """The bench could not set up or a run went wrong; the message says what."""


# --- waiting and ports ------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return
        event.wait(pause)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL and Redis -----------------------------------------------------------------


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def start_private_postgres(
    workdir: Path, stack: contextlib.ExitStack, *, max_connections: int = 300
) -> str:
    """A PostgreSQL cluster of the bench's own, stopped by ``stack``; returns its URL.

    fsync and synchronous_commit stay on, as in production. Started as the
    ``postgres`` user (it refuses root).
    """
    from portal.lib.localservices import apt_install, is_root, postgres_answers, wait_until

    def bindir() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        return Path(initdb).parent if initdb else None

    if bindir() is None:
        apt_install("postgresql")
    binaries = bindir()
    if binaries is None:
        raise BenchError("PostgreSQL is installed but initdb is not found")
    root = workdir / "postgres"
    (root / "run").mkdir(parents=True)
    as_postgres = ["runuser", "-u", "postgres", "--"] if is_root() else []
    if is_root():
        workdir.chmod(0o711)  # the postgres user must reach its directory
        for path in (root, root / "run"):
            shutil.chown(path, "postgres")
    initdb = [str(binaries / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"]
    subprocess.run(
        [*as_postgres, *initdb, "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL
    )
    port = free_port()
    options = (
        f"-p {port} -k {root / 'run'} -c listen_addresses=127.0.0.1"
        f" -c max_connections={max_connections}"
    )
    pg_ctl = [*as_postgres, str(binaries / "pg_ctl"), "-D", str(root / "data")]
    subprocess.run(
        [*pg_ctl, "-o", options, "-w", "-l", str(root / "log"), "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stack.callback(
        subprocess.run,
        [*pg_ctl, "-m", "fast", "stop"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    wait_until(lambda: postgres_answers(url), timeout=30, what="PostgreSQL")
    return url


def throwaway_postgres(directory: Path, stack: contextlib.ExitStack) -> str:
    """``portal.lib.localservices``' throwaway server (as ``make test``), stopped by ``stack``."""
    from portal.lib.localservices import start_postgres, stop_postgres

    database_url, pg_ctl, datadir = start_postgres(directory)
    stack.callback(stop_postgres, pg_ctl, datadir)
    return database_url


def private_redis(directory: Path, stack: contextlib.ExitStack) -> tuple[str, int]:
    """A redis-server child of this process, stopped by ``stack``: its URL and pid."""
    from portal.lib.localservices import start_redis

    redis_url, proc, _ = start_redis(directory)
    assert proc is not None  # not daemonized: a child of this process
    redis_proc = proc

    def stop_redis() -> None:
        redis_proc.terminate()
        redis_proc.wait()

    stack.callback(stop_redis)
    return redis_url, proc.pid


def admin_connection(database_url: str):
    """An autocommit psycopg connection to the ``postgres`` database of that server."""
    import psycopg

    parts = urlsplit(database_url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname="postgres",
        autocommit=True,
    )


def drop_database(database_url: str, name: str) -> None:
    """DROP DATABASE name WITH (FORCE), Django's connections closed first if it is set up."""
    from django.apps import apps
    from django.db import connections
    from psycopg import sql

    if apps.ready:
        connections.close_all()
    with admin_connection(database_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def recreate_database(database_url: str, name: str) -> None:
    from psycopg import sql

    drop_database(database_url, name)
    with admin_connection(database_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def flush_redis(redis_url: str) -> None:
    import redis

    with contextlib.suppress(redis.RedisError, OSError):
        redis.Redis.from_url(redis_url).flushdb()


def portal_env(database_url: str, redis_url: str, workdir: Path) -> dict[str, str]:
    """The settings every bench gives the portal: production mode, throwaway secrets."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-" + secrets.token_urlsafe(48),
        # Backups encrypted at rest is the default without DEBUG; with no key the system
        # checks (manage.py rqworker runs them) stop the process (backups.E002).
        "BACKUP_ENCRYPTION_KEYS": "bench:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "STATIC_MANIFEST": "0",
        "PORTAL_VAR_DIR": str(workdir / "var"),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }


# --- processes ------------------------------------------------------------------------------


def spawn_logged(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``python argv`` from the project directory, in its own session, output to log_path."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM each; after ``timeout`` SIGKILL its session (only what the bench started)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
            proc.wait()


def log_tail(paths: Iterable[Path], lines: int) -> str:
    """The last ``lines`` lines of each log."""
    found: list[str] = []
    for path in paths:
        found += path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(found)


# --- what the figures ran on ---------------------------------------------------------------


def platform_line() -> str:
    """``nproc N, Python X.Y.Z, Linux R``."""
    return (
        f"nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def service_versions() -> tuple[str, str]:
    """The PostgreSQL and Redis server versions Django's settings point at."""
    from django.db import connection

    from portal.lib.redis import get_redis

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0].split()[0]
    return pg_version, str(get_redis().info("server").get("redis_version", "?"))


def code_line() -> str:
    code = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=BASE_DIR, capture_output=True, text=True
    ).stdout.strip()
    return f"code: {code or '?'} (the working tree as it was when this ran)"


def load_line(when: str, *, fifteen: bool = True) -> str:
    one, five, last = os.getloadavg()
    tail = f", {last:.2f} (15 min)" if fifteen else ""
    return f"load average {when}: {one:.2f} (1 min), {five:.2f} (5 min){tail}"
