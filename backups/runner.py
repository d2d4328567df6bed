"""Run the tools of one backup and stream their output into the storage.

This is the I/O half of a backup run; ``backups.actions`` records what
happened. A run's files are committed together (``Staging.commit``) only
when every tool exited 0; otherwise the staging is thrown away.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from backups.sources import SourceError, SourceTransport
from backups.storage import Storage
from backups.streaming import BoundedText, StreamResult, compress_stream, drain_in_thread

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ToolFailed(RuntimeError):
    """A backup tool exited non-zero (its stderr is kept on the run)."""


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
    duration_s: float = 0.0

    @property
    def bytes_raw(self) -> int:
        return sum(a.stream.bytes_raw for a in self.artifacts)

    @property
    def bytes_stored(self) -> int:
        return sum(a.stream.bytes_stored for a in self.artifacts)


def start_tool(argv: list[str], env: dict[str, str], stdin: bytes | None) -> subprocess.Popen:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        bufsize=0,
    )
    with contextlib.suppress(OSError):
        # A 1 MiB pipe lets the tool keep writing while the worker compresses a chunk.
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
    if stdin is not None:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the tool exited early; its exit code and stderr say why
    return proc


def execute(
    run_key: str,
    transport: SourceTransport,
    storage: Storage,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Back up every component of ``transport`` into ``run_key``; never raises for tool errors."""
    started = time.monotonic()
    outcome = RunOutcome(ok=False, run_key=run_key)
    stderr_parts: list[str] = []
    staging = None
    try:
        components = transport.components()
        if not components:
            raise SourceError("nothing to back up (no database found)")
        staging = storage.begin(run_key)
        done = 0
        for component in components:
            command = transport.command(component)
            out = staging.create(component.filename)
            proc = start_tool(command.argv, command.env, command.stdin)
            errors = BoundedText(settings.BACKUP_STDERR_MAX)
            drainer = drain_in_thread(proc.stderr, errors)

            def finish_tail(tail: bytes, proc=proc, drainer=drainer, errors=errors, cmd=command):
                proc.wait()
                drainer.join()
                return cmd.finish_tail(tail, errors.text())

            def progress(raw: int, base=done) -> None:
                if on_progress is not None:
                    on_progress(base + raw)

            try:
                result = compress_stream(
                    proc.stdout,
                    out,
                    level=settings.BACKUP_ZSTD_LEVEL,
                    threads=settings.BACKUP_ZSTD_THREADS,
                    holdback=command.holdback,
                    finish_tail=finish_tail,
                    on_progress=progress,
                )
            except BaseException:
                proc.kill()  # never leave a tool blocked on a pipe nobody reads
                raise
            finally:
                code = proc.wait()
                drainer.join()
            text = errors.text().strip()
            if text:
                stderr_parts.append(f"[{component.name}] {text}")
            if code != 0:
                raise ToolFailed(f"{command.argv[0]} for {component.name} exited {code}")
            out.close()
            done += result.bytes_raw
            outcome.artifacts.append(
                ArtifactResult(
                    component.name, component.format, f"{run_key}/{component.filename}", result
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
                }
                for a in outcome.artifacts
            },
        }
        data = staging.commit(manifest)

        outcome.manifest_sha256 = hashlib.sha256(data).hexdigest()
        outcome.ok = True
    except (ToolFailed, SourceError, OSError, subprocess.SubprocessError) as exc:
        outcome.error = str(exc)
        if staging is not None:
            staging.abort()
    except BaseException:
        if staging is not None:
            staging.abort()
        raise
    finally:
        outcome.duration_s = time.monotonic() - started
        outcome.stderr = "\n".join(stderr_parts)[-settings.BACKUP_STDERR_MAX :]
    return outcome
