"""`make test`: find or start PostgreSQL and Redis, then run pytest against them.

Uses DATABASE_URL / REDIS_URL (default: the machine's 127.0.0.1:5432 and
127.0.0.1:6379) when they answer; otherwise starts throwaway servers under
var/ and stops them afterwards. Exits with pytest's status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from portal.lib.localservices import (
    ServiceError,
    apt_install,
    postgres_answers,
    redis_answers,
    start_postgres,
    start_redis,
    stop_postgres,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Tests use their own Redis database so a developer's local queues are untouched.
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/portal"


# Programs the suite drives for real, and the Debian package providing each.
TEST_TOOLS = {
    "/usr/sbin/sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "sudo": "sudo",
    "/usr/sbin/visudo": "sudo",
    "shellcheck": "shellcheck",
    "jq": "jq",
    "/usr/bin/chromium": "chromium",
    "kubectl": "kubernetes-client",
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "redis-cli": "redis-tools",
    "redis-check-rdb": "redis-tools",
    # The VM tier (tests/vm): a real Debian target built with debootstrap, run under QEMU.
    "debootstrap": "debootstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "/usr/sbin/mkfs.ext4": "e2fsprogs",
}


def ensure_test_tools() -> None:
    missing = sorted(
        {
            pkg
            for tool, pkg in TEST_TOOLS.items()
            if not (shutil.which(tool) or os.path.exists(tool))
        }
    )
    if missing:
        apt_install(*missing)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    var_dir = BASE_DIR / "var" / "test-services"
    var_dir.mkdir(parents=True, exist_ok=True)
    cleanups: list[Callable[[], object]] = []
    try:
        ensure_test_tools()
        database_url = env.get("TEST_DATABASE_URL") or env.get("DATABASE_URL") or DEFAULT_DATABASE
        if not database_url.startswith("postgres") or not postgres_answers(database_url):
            database_url, pg_ctl, datadir = start_postgres(var_dir)
            cleanups.append(lambda: stop_postgres(pg_ctl, datadir))
            print(f"Started a throwaway PostgreSQL: {database_url}")
        redis_url = env.get("TEST_REDIS_URL") or env.get("REDIS_URL") or DEFAULT_REDIS
        if not redis_answers(redis_url):
            redis_url, proc, _ = start_redis(var_dir)
            assert proc is not None  # not daemonized: a child of this process
            redis_proc = proc

            def stop_redis() -> None:
                redis_proc.terminate()
                redis_proc.wait()

            cleanups.append(stop_redis)
            print(f"Started a throwaway Redis: {redis_url}")
        # Always a Redis database of its own: the suite flushes it between tests.
        redis_db = env.get("TEST_REDIS_DB", "15")
        redis_url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{redis_db}"))
        # A PostgreSQL database name of its own too (Django tests in "test_<name>"),
        # so two runs on one server never drop each other's test database.
        database_url = urlunsplit(urlsplit(database_url)._replace(path=f"/portal_{os.getpid()}"))
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            DEBUG="0",
            SECRET_KEY="test-only-" + "x" * 60,
            AUDIT_HMAC_KEYS="test:" + "k" * 64,
            BACKUP_ENCRYPTION_KEYS="test:cG9ydGFsLXRlc3QtYmFja3VwLWtleS0zMi1ieXRlcyE=",
            SECURE_SSL_REDIRECT="0",
            STATIC_MANIFEST="0",
            DB_CONN_MAX_AGE="0",  # threads in tests must not keep the test database open
            ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
            PORTAL_VAR_DIR=str(BASE_DIR / "var" / "test-var"),
            PORTAL_TEST_REDIS_FLUSH="1",
        )
        result = subprocess.run([sys.executable, "-m", "pytest", *argv], env=env, cwd=BASE_DIR)
        return result.returncode
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
