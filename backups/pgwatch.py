"""Watch a libpq tool's server session from a second connection: locks and server-side progress.

pg_dump and pg_restore both reset ``lock_timeout`` (a restore script starts
with ``SET lock_timeout = 0``), so ``PGOPTIONS='-c lock_timeout=…'`` does not
bound their lock waits. This watch does: the tool runs with a unique
``application_name``; every poll looks its session up in
``pg_stat_activity``. A session waiting on a lock for ``lock_timeout``
seconds is cancelled (``pg_cancel_backend``: its statement fails, a
single-transaction restore rolls back) and the watched tool is failed with
``lock_timeout``, naming the sessions that hold the lock (pid, application,
user, since when, their query).

The same poll tells the stall watchdog when the server is demonstrably busy
(the session's statement, or its ``pg_stat_progress_*`` counters, changed):
a restore building an index after it has read all of its input is not
stalled. A stopped server changes nothing, so it is not mistaken for busy.
A watch that cannot connect reports nothing; the tool's own timeouts and
the stall watchdog still bound it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg

from backups import faults

if TYPE_CHECKING:
    from backups.runner import ToolProcess

logger = logging.getLogger(__name__)

_SESSIONS = """
SELECT a.pid, a.state, a.wait_event_type, a.query_start::text,
       (SELECT row(p.phase, p.blocks_done, p.tuples_done)::text
          FROM pg_stat_progress_create_index p WHERE p.pid = a.pid),
       (SELECT row(c.bytes_processed, c.tuples_processed)::text
          FROM pg_stat_progress_copy c WHERE c.pid = a.pid),
       pg_blocking_pids(a.pid)
  FROM pg_stat_activity a
 WHERE a.application_name = %s AND a.pid <> pg_backend_pid()
"""
_HOLDERS = """
SELECT pid, usename, application_name, client_addr::text, state,
       to_char(xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
       to_char(query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
       left(regexp_replace(query, '\\s+', ' ', 'g'), 200)
  FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY pid
"""


def describe_holders(rows: list[tuple]) -> str:
    parts = []
    for pid, user, app, addr, state, xact, started, query in rows:
        where = f" from {addr}" if addr else ""
        parts.append(
            f"pid {pid} (application {app or '-'!r}, user {user}{where}, {state}, "
            f"transaction started {xact or '?'} UTC, query started {started or '?'} UTC: {query})"
        )
    return "; ".join(parts)


class PgLockWatch:
    """One watched tool's session on one server (``conninfo``: any database there).

    Give ``env()`` to the tool (it sets ``PGAPPNAME``) and the watch to its
    ``ToolProcess``, which starts and stops it.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        password: str | None = None,
        lock_timeout: float | None = None,
        label: str = "portal-backup",
    ) -> None:
        self.conninfo = conninfo
        self.password = password
        self.lock_timeout = float(lock_timeout or faults.lock_timeout())
        self.application_name = f"{label}-{uuid.uuid4().hex[:12]}"
        self.holders = ""  # who held the lock, as last seen (for the failure message)
        self.fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        return {"PGAPPNAME": self.application_name}

    @property
    def poll(self) -> float:
        return min(1.0, max(0.1, self.lock_timeout / 4))

    def start(self, tool: ToolProcess) -> None:
        self._thread = threading.Thread(target=self._run, args=(tool,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A poll stuck on a stopped server must not hold the run: the thread is a daemon.
            self._thread.join(timeout=self.poll + 0.5)

    def _connect(self) -> psycopg.Connection | None:
        try:
            return psycopg.connect(
                self.conninfo,
                password=self.password,
                connect_timeout=faults.connect_timeout(),
                application_name="portal-lock-watch",
                autocommit=True,
                passfile=os.devnull,
            )
        except psycopg.Error as exc:
            logger.debug("lock watch cannot connect: %s", exc)
            return None

    def _run(self, tool: ToolProcess) -> None:
        conn = None
        seen: dict[int, tuple] = {}
        waiting: dict[int, tuple[str, float]] = {}  # pid -> (statement start, since)
        try:
            while not self._stop.wait(self.poll):
                if conn is None and (conn := self._connect()) is None:
                    continue
                try:
                    rows = conn.execute(_SESSIONS, [self.application_name]).fetchall()
                    if tool.fired is not None:
                        # Killed for another reason: free the server side as well.
                        for row in rows:
                            conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                        return
                    if self._check(conn, tool, rows, seen, waiting):
                        return
                except psycopg.Error as exc:
                    logger.debug("lock watch query failed: %s", exc)
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _check(self, conn, tool, rows, seen: dict, waiting: dict) -> bool:
        now = time.monotonic()
        for pid, state, wait_type, query_start, index_progress, copy_progress, blocking in rows:
            fingerprint = (state, wait_type, query_start, index_progress, copy_progress)
            if wait_type == "Lock" and blocking:
                start = waiting.get(pid)
                if start is None or start[0] != query_start:
                    waiting[pid] = start = (query_start, now)
                held = conn.execute(_HOLDERS, [list(blocking)]).fetchall()
                if held:
                    self.holders = describe_holders(held)
                if now - start[1] >= self.lock_timeout:
                    self._fire(conn, tool, pid)
                    return True
                continue
            waiting.pop(pid, None)
            busy = state == "active" and wait_type not in {"Client", "Lock"}
            if busy and seen.get(pid) not in (None, fingerprint):
                tool.activity.touch()  # the server moved on: a statement or its counters
            seen[pid] = fingerprint
        return False

    def _fire(self, conn, tool: ToolProcess, pid: int) -> None:
        self.fired = True
        message = self.message()
        # Cancel first: the waiting statement fails (a single-transaction restore rolls
        # back) and the tool exits by itself; killing only the client would leave the
        # session queued for the lock.
        conn.execute("SELECT pg_cancel_backend(%s)", [pid])
        tool.fire(faults.FailureCause.LOCK_TIMEOUT, message, let_exit=faults.KILL_GRACE)

    def message(self) -> str:
        held = self.holders or "a session that has ended since"
        return f"waited more than {self.lock_timeout:g} s for a lock held by {held}"

    def details(self) -> dict[str, Any]:
        return {"application_name": self.application_name, "holders": self.holders}
