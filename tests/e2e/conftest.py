"""Fixtures of the browser tests: a real running portal and headless Chromium.

Real: daphne serving ``portal.asgi:application`` (HTTP and websockets) on a
loopback port, one ``manage.py rqworker pra default`` (not burst), both on the
test database and the test Redis; the loopback sshd target of
``tests/pra/conftest.py``; Chromium driven by Playwright. Only the end commands
on the target (systemctl, ...) are stand-ins (no systemd here, see
``pra.devtarget``).

Data must be committed to be seen by those processes, so the tests use
``django_db(transaction=True)``; pytest-django then empties the database after
each test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.db import connections
from django.test import Client
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from portal.lib.localservices import free_port
from pra.devtarget import LocalTarget
from pra.models import Host
from tests.conftest import TEST_PASSWORD
from tests.pra import conftest as pra_fixtures
from tests.pra.helpers import child_env, register
from tests.stack import BASE_DIR, PYTHON, wait_for, wait_until

# The remediation tests' loopback target and its reset before each test that uses it.
shared_ssh_target = pra_fixtures.shared_ssh_target
_reset_shared_ssh_target = pra_fixtures._reset_shared_ssh_target

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_TIMEOUT = 30.0  # seconds for daphne to listen (imports Django, ~2 s here)
STOP_TIMEOUT = 10.0
WORKER_QUEUES = ("pra", "default")

T = TypeVar("T")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the rq worker forks a work horse), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stack_env(target: LocalTarget, var_dir: Path) -> dict[str, str]:
    env = child_env(target)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # see the browser fixture
    return {
        **env,
        # settings.py makes the session and CSRF cookies Secure whenever DEBUG is off
        # (no variable switches them), and this server speaks plain http. DEBUG=1 keeps
        # the cookies usable without leaning on Chromium's localhost exceptions.
        "DEBUG": "1",
        # This process's key: sessions made here (force_login) must be valid there.
        "SECRET_KEY": django_settings.SECRET_KEY,
        # Debug mode may write its files (static root, a generated key) under the var
        # dir: a temporary one keeps the checkout's var/ out of it.
        "PORTAL_VAR_DIR": str(var_dir),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "STATIC_MANIFEST": "0",  # whitenoise serves the apps' static files (admin CSS)
        # No connection outlives its request or job: the flush after each test needs
        # the tables unlocked.
        "DB_CONN_MAX_AGE": "0",
        "PRA_RETRY_BACKOFF_MS": "50",
        "PYTHONUNBUFFERED": "1",
    }


def _start_daphne(
    port: int, env: dict[str, str], log: Path, *, append: bool = False
) -> subprocess.Popen | None:
    """daphne on ``port``, once it listens; None if it exited first (port taken)."""
    with log.open("a" if append else "w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            env=env,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(lambda: proc.poll() is not None or _port_open(port), STARTUP_TIMEOUT)
    if proc.poll() is None and _port_open(port):
        return proc
    _stop(proc)
    return None


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-stack")


@pytest.fixture(scope="module")
def rq_worker(django_db_setup, shared_ssh_target, stack_dir) -> Iterator[subprocess.Popen]:
    """One real ``rqworker pra default`` for the module. It holds no database
    connection between jobs (each job runs in a forked work horse), so the flush
    after each test does not affect it; the per-test Redis flush only removes its
    registration, and it keeps waiting on the queues."""
    log = stack_dir / "rqworker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PYTHON, "manage.py", "rqworker", *WORKER_QUEUES],
            env=_stack_env(shared_ssh_target, stack_dir / "var"),
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield proc
    _stop(proc)
    print(f"--- rqworker log (tail) ---\n{_tail(log)}")


@dataclass
class Stack:
    base_url: str
    host: Host
    target: LocalTarget
    worker: subprocess.Popen
    log_dir: Path
    daphne: subprocess.Popen
    port: int
    env: dict[str, str]

    def restart_daphne(self, while_down: Callable[[], object] | None = None) -> None:
        """Stop daphne (every websocket drops), run ``while_down``, start it again on the
        same port. Pages must reconnect by themselves and catch up."""
        _stop(self.daphne)
        if while_down is not None:
            while_down()
        log = self.log_dir / "daphne.log"
        wait_until(lambda: _bindable(self.port), STOP_TIMEOUT)
        proc = _start_daphne(self.port, self.env, log, append=True)
        if proc is None:
            pytest.fail(f"daphne did not restart:\n{_tail(log)}")
        self.daphne = proc

    @contextlib.contextmanager
    def worker_paused(self, settle: float = 120.0) -> Iterator[None]:
        """Freeze the worker (SIGSTOP to its process group) once it is idle; it goes on
        where it was on exit. Jobs enqueued meanwhile wait in Redis.

        Idle first: a worker frozen inside a job's transaction (a pre-flight recording
        its result) would hold that row's lock and the audit chain's for the whole pause,
        and every audited save behind it would hang."""
        wait_for(_worker_idle, settle, "the rq worker to finish the jobs already queued")
        os.killpg(self.worker.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.worker.pid, signal.SIGCONT)


def _queues_empty() -> bool:
    from django_rq import get_queue

    return all(
        get_queue(name).count == 0 and get_queue(name).started_job_registry.count == 0
        for name in WORKER_QUEUES
    )


def _worker_idle() -> bool:
    """Nothing queued and nothing started on the worker's queues, twice 100 ms apart (a
    job popped from its queue is in the started registry a moment later)."""
    return _queues_empty() and not wait_until(lambda: not _queues_empty(), 0.1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def stack(transactional_db, rq_worker, shared_ssh_target, stack_dir, settings) -> Iterator[Stack]:
    """daphne on a free loopback port, the module's worker, and the target as ``dns-1``.

    daphne is started per test on purpose: the flush after each test recreates the
    content types under new ids, and a long-lived server process would keep the old
    ids in Django's ContentType cache (approvals reference content types).
    """
    if rq_worker.poll() is not None:
        pytest.fail(f"the rq worker exited:\n{_tail(stack_dir / 'rqworker.log')}")
    host = register(shared_ssh_target, settings)
    env = _stack_env(shared_ssh_target, stack_dir / "var")
    log = stack_dir / "daphne.log"
    for _attempt in range(3):  # another process may take the free port first
        port = free_port()
        proc = _start_daphne(port, env, log)
        if proc is not None:
            break
    else:
        pytest.fail(f"daphne did not start:\n{_tail(log)}")
    stack = Stack(
        f"http://127.0.0.1:{port}", host, shared_ssh_target, rq_worker, stack_dir, proc, port, env
    )
    try:
        yield stack
    finally:
        _stop(stack.daphne)
        print(f"--- daphne log (tail) ---\n{_tail(log)}")
        _quiesce_before_flush()


def _quiesce_before_flush() -> None:
    """Leave no other process inside a transaction when pytest-django empties the tables.

    The module's worker outlives the test: a job this test enqueued could still be
    running (or start) during the flush, and its locks against the flush's TRUNCATE
    ended once in a PostgreSQL deadlock. So this test's queued jobs are dropped, a
    running one may finish, and any other session of the test database still inside
    a transaction is ended (an idle session holds no lock and is left alone)."""
    from django_rq import get_queue

    for name in WORKER_QUEUES:
        get_queue(name).empty()
    wait_until(
        lambda: all(get_queue(n).started_job_registry.count == 0 for n in WORKER_QUEUES),
        STOP_TIMEOUT,
    )
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state IS DISTINCT FROM 'idle'"
        )
        ended = len(cursor.fetchall())
    if ended:
        print(f"--- ended {ended} database session(s) still in a transaction ---")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian's package (``playwright install`` cannot download
    browsers here).

    Playwright's sync API leaves its event loop marked as running in this thread
    between calls, and Django then refuses ORM calls here, pytest-django's flush
    included (SynchronousOnlyOperation). Nothing runs on that loop while test code
    runs, so the check is off in this process while the browser lives; the servers
    under test never get the variable (``_stack_env``). Code that sends live events
    goes through ``in_thread``.
    """
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def in_thread(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a short-lived thread, for code that publishes live
    events: asgiref's ``async_to_sync`` refuses a thread whose event loop is marked as
    running, as Playwright's is in the test's thread. Closes the thread's connection."""

    def call() -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result(timeout=60)


@pytest.fixture
def open_page(browser, stack) -> Iterator[Callable[..., Page]]:
    """``open_page(user=None, *, login_form=False)``: a page in a fresh browser context
    (its own cookies). With a user it is signed in: through the admin login form when
    ``login_form``, otherwise with a session made in the database (``force_login``), which
    daphne loads like any other."""
    contexts: list[BrowserContext] = []

    def _open(user=None, *, login_form: bool = False) -> Page:
        context = browser.new_context(base_url=stack.base_url)
        context.set_default_timeout(10_000)
        contexts.append(context)
        if user is not None and not login_form:
            client = Client()
            client.force_login(user)
            session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
            context.add_cookies(
                [
                    {
                        "name": django_settings.SESSION_COOKIE_NAME,
                        "value": session,
                        "url": stack.base_url,
                    }
                ]
            )
        page = context.new_page()
        if user is not None and login_form:
            _give_real_password_hash(user)
            page.goto("/admin/login/")
            page.fill("input[name=username]", user.get_username())
            page.fill("input[name=password]", TEST_PASSWORD)
            with page.expect_navigation():
                page.click("input[type=submit]")
            assert page.url == f"{stack.base_url}/admin/", f"login of {user} failed"
        return page

    yield _open
    for context in contexts:
        context.close()


def _give_real_password_hash(user) -> None:
    """tests/conftest.py hashes the personas' passwords with MD5 for speed, which the
    server under test (the project's default hashers) does not accept."""
    user.password = make_password(TEST_PASSWORD, hasher=PBKDF2PasswordHasher())
    user.save(update_fields=["password"])
