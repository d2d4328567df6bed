"""Run the tools of one backup and stream their output into the storage.

This is the I/O half of a backup run; ``backups.actions`` records what
happened. A run's files are committed together (``Staging.commit``) only
when every tool exited 0; otherwise the staging is thrown away.

Every tool runs as a ``ToolProcess``: in a session (process group) of its
own, under a watchdog that kills the whole group (SIGTERM, then SIGKILL
after ``faults.KILL_GRACE``) when no byte moved for its stall timeout, or
when a deadline passes, and optionally with a ``PgLockWatch`` on its server
session. ``run_tool`` is the same for tools whose output is small or
discarded (restores, listing databases, a Redis PING).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from backups import encryption, faults
from backups.faults import FailureCause
from backups.pgwatch import PgLockWatch
from backups.scrub import scrub
from backups.sources import SourceError, SourceTransport, ToolCommand
from backups.storage import Storage, StorageError
from backups.streaming import (
    CHUNK,
    BoundedText,
    Reader,
    StreamResult,
    compress_stream,
    drain_in_thread,
    store_options,
)

__all__ = [
    "Activity",
    "FailureCause",
    "PgLockWatch",
    "RunOutcome",
    "ToolFailed",
    "ToolProcess",
    "ToolResult",
    "execute",
    "run_tool",
]

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ToolFailed(RuntimeError):
    """A backup tool failed (its stderr is kept on the run); ``cause`` says how."""

    def __init__(self, message: str, cause: str = FailureCause.TOOL_ERROR) -> None:
        super().__init__(message)
        self.cause = cause


class Activity:
    """When bytes last moved for a run: the stall watchdog and the job heartbeat both read it."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.last


@dataclass
class ToolResult:
    what: str
    code: int | None
    stderr: str
    cause: str = ""
    message: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    stdout: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.cause


class ToolProcess:
    """One tool in a process group of its own, watched until it ends.

    ``stdin``: bytes (a password line) or a binary reader streamed in (a
    restore's input), counted as progress. The caller reads ``stdout`` (or
    calls ``read``) and then ``finish``; leaving the ``with`` block early
    (an exception) kills the group.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        stdin: bytes | Reader | None = None,
        stall_timeout: float | None = None,
        deadline: float | None = None,
        deadline_cause: str = FailureCause.TIMEOUT,
        activity: Activity | None = None,
        lock_watch: PgLockWatch | None = None,
        what: str | None = None,
        stderr_max: int | None = None,
    ) -> None:
        self.argv = argv
        self.env = {**(env or {}), **(lock_watch.env() if lock_watch else {})}
        self.stdin = stdin
        self.stall_timeout = float(stall_timeout or faults.stall_timeout())
        self.deadline = deadline
        self.deadline_cause = deadline_cause
        self.activity = activity or Activity()
        self.lock_watch = lock_watch
        self.what = what or argv[0]
        self.errors = BoundedText(stderr_max or settings.BACKUP_STDERR_MAX)
        self.fired: tuple[str, str] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._threads: list[threading.Thread] = []
        self._feed_error: list[BaseException] = []

    # --- life ---------------------------------------------------------------------------

    def __enter__(self) -> ToolProcess:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.proc is not None:
            self._signal(signal.SIGKILL)  # never leave a tool blocked on a pipe nobody reads
            self.proc.wait()
        self._stop_threads()

    def start(self) -> None:
        self.started = time.monotonic()
        self.activity.touch()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **self.env},
                bufsize=0,
                start_new_session=True,  # its own process group: one killpg ends all of it
            )
        except OSError as exc:
            raise ToolFailed(
                f"cannot start {self.argv[0]}: {exc.strerror or exc}", FailureCause.CONFIG
            ) from None
        with contextlib.suppress(OSError):
            # A 1 MiB pipe lets the tool keep writing while the worker compresses a chunk.
            fcntl.fcntl(self._pipe(self.proc.stdout).fileno(), F_SETPIPE_SZ, 1 << 20)
        self._threads.append(drain_in_thread(self._pipe(self.proc.stderr), self.errors))
        if self.stdin is not None:
            self._threads.append(self._spawn(self._feed))
        self._watchdog = self._spawn(self._watch)
        if self.lock_watch is not None:
            self.lock_watch.start(self)

    @property
    def _running(self) -> subprocess.Popen[bytes]:
        """The started process (every caller runs after ``start``)."""
        if self.proc is None:
            raise RuntimeError(f"{self.what}: not started")
        return self.proc

    @staticmethod
    def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
        """A pipe ``start`` opened (stdout and stderr always; stdin when there is input)."""
        assert stream is not None, "opened with subprocess.PIPE"
        return stream

    def _spawn(self, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    @property
    def stdout(self) -> IO[bytes]:
        return self._pipe(self._running.stdout)

    def note_read(self, count: int) -> None:
        """Bytes came out of the tool: progress."""
        self.bytes_out += count
        self.activity.touch()

    def read(self, size: int = CHUNK) -> bytes:
        data = os.read(self.stdout.fileno(), size)
        if data:
            self.note_read(len(data))
        return data

    def _feed(self) -> None:
        pipe = self._pipe(self._running.stdin)
        source = self.stdin
        try:
            if source is None:
                return
            if isinstance(source, bytes | bytearray):
                pipe.write(source)
                self.bytes_in += len(source)
                return
            while data := source.read(CHUNK):
                pipe.write(data)
                self.bytes_in += len(data)
                self.activity.touch()
        except BrokenPipeError:
            pass  # the tool stopped reading; its exit code and stderr say why
        except BaseException as exc:  # reading the input failed: reported by finish()
            self._feed_error.append(exc)
            self._signal(signal.SIGTERM)
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.close()
            if source is not None and not isinstance(source, bytes | bytearray):
                with contextlib.suppress(Exception):
                    source.close()

    # --- the watchdog ---------------------------------------------------------------------

    def _watch(self) -> None:
        limits = [self.stall_timeout] + ([self.deadline] if self.deadline else [])
        poll = max(0.05, min(1.0, min(limits) / 10))
        while not self._ended.wait(poll):
            if self._running.poll() is not None:
                return  # it ended; what follows (compressing the last chunk) is ours
            if self.deadline and time.monotonic() - self.started > self.deadline:
                self.fire(
                    self.deadline_cause,
                    f"{self.what}: no answer within {self.deadline:g} s",
                )
                return
            idle = self.activity.idle()
            if idle > self.stall_timeout:
                self.fire(
                    FailureCause.STALLED,
                    f"no progress for {self.stall_timeout:g} s: {self.what} stopped "
                    f"(process group {self._running.pid} killed)",
                )
                return

    def fire(self, cause: str, message: str, *, let_exit: float = 0.0) -> bool:
        """End the tool for ``cause``; the first reason wins. ``let_exit``: wait that long first."""
        with self._lock:
            if self.fired is not None:
                return False
            self.fired = (cause, message)
        if let_exit:
            self._wait_exit(let_exit)
        self._signal(signal.SIGTERM)
        self._wait_exit(faults.KILL_GRACE)
        self._signal(signal.SIGKILL)  # whatever is left of the group
        return True

    def _wait_exit(self, seconds: float) -> bool:
        try:
            self._running.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    # --- the end --------------------------------------------------------------------------

    def wait_exit(self) -> int:
        """Wait for the tool and its stderr (what ``finish_tail`` needs before the end)."""
        code = self._running.wait()
        self._threads[0].join()
        return code

    def stderr_text(self) -> str:
        return self.errors.text()

    def _stop_threads(self) -> None:
        self._ended.set()
        if self.lock_watch is not None:
            self.lock_watch.stop()
        for thread in self._threads:
            thread.join(timeout=faults.KILL_GRACE)

    def finish(self, stdout: bytes = b"") -> ToolResult:
        code = self.wait_exit()
        self._ended.set()
        if self.fired is not None:
            # Whatever is left of the group (a child that outlived the tool) goes too.
            self._signal(signal.SIGKILL)
        self._stop_threads()
        stderr = self.errors.text().strip()
        result = ToolResult(
            self.what, code, stderr, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            seconds=time.monotonic() - self.started, stdout=stdout,
        )  # fmt: skip
        if self.fired is not None:
            result.cause, result.message = self.fired
            said = faults.classify(stderr)
            never_through = {FailureCause.CONNECT_TIMEOUT, FailureCause.UNREACHABLE}
            if (
                result.cause == FailureCause.STALLED
                and not self.bytes_out
                and said in never_through
            ):
                # Silent because it never got through (kubectl retrying): say that.
                result.cause = said
                result.message += f"; it said: {_last_line(stderr)[:300]}"
        elif self._feed_error:
            result.cause = FailureCause.STORAGE
            result.message = f"reading the input of {self.what} failed: {self._feed_error[0]}"
        elif code != 0:
            result.cause = faults.classify(stderr)
            last = _last_line(stderr)
            result.message = f"{self.what} exited {code}" + (f": {last[:300]}" if last else "")
            if result.cause == FailureCause.LOCK_TIMEOUT and self.lock_watch is not None:
                result.message += f" ({self.lock_watch.message()})"
        return result


def _last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def run_tool(
    argv: list[str],
    env: dict[str, str] | None = None,
    *,
    stdin: bytes | Reader | None = None,
    capture: int = 0,
    stall_timeout: float | None = None,
    deadline: float | None = None,
    deadline_cause: str = FailureCause.TIMEOUT,
    lock_watch: PgLockWatch | None = None,
    activity: Activity | None = None,
    what: str | None = None,
) -> ToolResult:
    """Run a tool to its end under the watchdog; never raises for the tool's own failures.

    stdout is read (it counts as progress) and its first ``capture`` bytes
    kept in ``result.stdout``. Check ``result.ok``; ``result.cause`` and
    ``result.message`` say what went wrong, ``result.stderr`` what the tool said.
    """
    tool = ToolProcess(
        argv, env, stdin=stdin, stall_timeout=stall_timeout, deadline=deadline,
        deadline_cause=deadline_cause, activity=activity, lock_watch=lock_watch, what=what,
    )  # fmt: skip
    kept = bytearray()
    with tool:
        while data := tool.read():
            if len(kept) < capture:
                kept += data[: capture - len(kept)]
        return tool.finish(stdout=bytes(kept))


def run_command(
    command: ToolCommand, *, activity: Activity | None = None, stall_timeout: float | None = None
) -> ToolResult:
    """A transport's small command (listing, PING), with its deadline and expected answer."""
    result = run_tool(
        command.argv, command.env, stdin=command.stdin, capture=1 << 20,
        stall_timeout=stall_timeout, deadline=command.deadline,
        deadline_cause=command.deadline_cause, lock_watch=command.lock_watch,
        activity=activity, what=command.label or command.argv[0],
    )  # fmt: skip
    if result.ok and command.expect is not None and command.expect not in result.stdout:
        said = (result.stdout.decode(errors="replace") + " " + result.stderr).strip()
        result.cause = FailureCause.TOOL_ERROR
        result.message = f"{result.what}: unexpected answer {said[:300]!r}"
    return result


@dataclass
class ArtifactResult:
    component: str
    format: str
    key: str
    stream: StreamResult


@dataclass
class RunOutcome:
    ok: bool
    run_key: str = ""
    artifacts: list[ArtifactResult] = field(default_factory=list)
    manifest_sha256: str = ""
    stderr: str = ""
    error: str = ""
    cause: str = ""
    duration_s: float = 0.0

    @property
    def bytes_raw(self) -> int:
        return sum(a.stream.bytes_raw for a in self.artifacts)

    @property
    def bytes_stored(self) -> int:
        return sum(a.stream.bytes_stored for a in self.artifacts)


@dataclass(frozen=True)
class SpaceNeeded:
    """About how much a backup will store, and from what that estimate comes."""

    bytes: int
    basis: str


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def check_space(storage: Storage, needed: SpaceNeeded | None) -> None:
    """Fail early, naming the path, when the storage has less room than the estimate."""
    if needed is None or needed.bytes <= 0:
        return
    free = storage.free_bytes()
    if free is not None and free < needed.bytes:
        raise ToolFailed(
            f"not enough free space in {storage.location}: {human_bytes(free)} free, about "
            f"{human_bytes(needed.bytes)} needed ({needed.basis}); nothing was started",
            FailureCause.NO_SPACE,
        )


def execute(
    run_key: str,
    transport: SourceTransport,
    storage: Storage,
    *,
    on_progress: Callable[[int], None] | None = None,
    activity: Activity | None = None,
    stall_timeout: float | None = None,
    space_needed: SpaceNeeded | None = None,
) -> RunOutcome:
    """Back up every component of ``transport`` into ``run_key``; never raises for tool errors.

    What is kept of the tools' stderr and errors is scrubbed of secrets (the source's
    password, credentials in DSNs, tokens: ``backups.scrub``).
    """
    started = time.monotonic()
    activity = activity or Activity()
    stall_timeout = stall_timeout or faults.stall_timeout(getattr(transport, "source", None))
    outcome = RunOutcome(ok=False, run_key=run_key)
    stderr_parts: list[str] = []
    staging = None
    try:
        try:  # no key while encryption is on: nothing is written in the clear
            encryption.encrypting_key()
        except (encryption.EncryptionError, ImproperlyConfigured) as exc:
            raise ToolFailed(str(exc), FailureCause.CONFIG) from None
        check_space(storage, space_needed)
        for check in transport.preflight() if hasattr(transport, "preflight") else []:
            result = run_command(check, activity=activity, stall_timeout=stall_timeout)
            if not result.ok:
                if result.stderr:
                    stderr_parts.append(f"[{result.what}] {result.stderr}")
                raise ToolFailed(result.message, result.cause)
        components = transport.components()
        if not components:
            raise SourceError("nothing to back up (no database found)")
        staging = storage.begin(run_key)
        done = 0
        for component in components:
            command = transport.command(component)
            out = staging.create(component.filename)
            label = command.label or command.argv[0]

            def progress(raw: int, base=done) -> None:
                if on_progress is not None:
                    on_progress(base + raw)

            with ToolProcess(
                command.argv, command.env, stdin=command.stdin, stall_timeout=stall_timeout,
                activity=activity, lock_watch=command.lock_watch,
                what=f"{label} for {component.name}",
            ) as tool:  # fmt: skip

                def finish_tail(tail: bytes, tool=tool, cmd=command) -> bytes:
                    tool.wait_exit()
                    return cmd.finish_tail(tail, tool.stderr_text())

                stream = compress_stream(
                    tool.stdout,
                    out,
                    **store_options(),
                    holdback=command.holdback,
                    finish_tail=finish_tail,
                    on_progress=progress,
                    on_read=tool.note_read,
                )
                result = tool.finish()
            if result.stderr:
                stderr_parts.append(f"[{component.name}] {result.stderr}")
            if not result.ok:
                raise ToolFailed(result.message, result.cause)
            out.close()
            done += stream.bytes_raw
            outcome.artifacts.append(
                ArtifactResult(
                    component.name, component.format, f"{run_key}/{component.filename}", stream
                )
            )
        manifest = {
            "run": run_key,
            "files": {
                a.key.rsplit("/", 1)[1]: {
                    "component": a.component,
                    "format": a.format,
                    "sha256": a.stream.sha256,
                    "bytes_raw": a.stream.bytes_raw,
                    "bytes_stored": a.stream.bytes_stored,
                    "encryption": (
                        {"scheme": encryption.SCHEME, "key_id": a.stream.key_id}
                        if a.stream.key_id
                        else None
                    ),
                }
                for a in outcome.artifacts
            },
        }
        data = staging.commit(manifest)

        outcome.manifest_sha256 = hashlib.sha256(data).hexdigest()
        outcome.ok = True
    except (ToolFailed, SourceError, StorageError, OSError, subprocess.SubprocessError) as exc:
        outcome.error = str(exc)
        outcome.cause = getattr(exc, "cause", "") or (
            FailureCause.STORAGE
            if isinstance(exc, OSError | StorageError)
            else FailureCause.TOOL_ERROR
        )
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            outcome.cause = FailureCause.NO_SPACE
            outcome.error = f"the storage ran out of space in {storage.location}: {exc}"
        if staging is not None:
            staging.abort()
    except BaseException:
        if staging is not None:
            staging.abort()
        raise
    finally:
        outcome.duration_s = time.monotonic() - started
        known = [getattr(transport, "password", None)]
        outcome.stderr = scrub("\n".join(stderr_parts), known)[-settings.BACKUP_STDERR_MAX :]
        outcome.error = scrub(outcome.error, known)
    return outcome
