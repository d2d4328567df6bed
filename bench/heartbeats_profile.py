"""bench/heartbeats.py's profiles: py-spy on the servers or the sweep, and what the samples say."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy recording processes until stop(); returns raw collapsed stacks.

    ``gil=True`` keeps only the thread holding the GIL in each sample: where the
    CPU goes. Without it every thread is sampled, waits included: where the time goes.
    """

    def __init__(self, pids: Iterable[int], outdir: Path, tag: str, *, gil: bool) -> None:
        self.outputs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        binary = py_spy()
        if binary is None:
            return
        mode = ["--gil"] if gil else ["--idle"]
        for pid in pids:
            out = outdir / f"{tag}-{pid}.txt"
            self.outputs.append(out)
            with (outdir / f"{tag}-{pid}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [binary, "record", "--pid", str(pid), "--rate", "200", *mode]
                        + ["--threads", "--format", "raw", "--output", str(out)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        threading.Event().wait(1.0)  # attached before the work starts

    def stop(self) -> list[tuple[str, list[str], int]]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stacks = []
        for out in self.outputs:
            if out.exists():
                stacks += read_raw(out)
        return stacks


def read_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames root → leaf, count) from py-spy's raw format."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts = stack.split(";")
        thread = next((p.split(":")[0] for p in parts if p.startswith("thread (")), "?")
        frames = [p for p in parts if not p.startswith(("thread (", "process "))]
        stacks.append((thread, frames or ["?"], int(count)))
    return stacks


def _has(frames: list[str], needles: tuple[str, ...]) -> bool:
    return any(n in f for f in frames for n in needles)


def _source_line(frame: str) -> str:
    """``func (incidents/actions/heartbeats.py:21)`` → that source line, stripped."""
    location = frame.rsplit("(", 1)[-1].rstrip(")")
    filename, _, number = location.rpartition(":")
    path = BASE_DIR / filename
    if not number.isdigit() or not path.is_file():
        return ""
    lines = path.read_text().splitlines()
    return lines[int(number) - 1].strip()[:64] if int(number) <= len(lines) else ""


def by_line(stacks, function: str, total: int, scale: float | None, limit: int) -> list[str]:
    """Share of ``total`` samples under each line of ``function`` ("name (path/file.py").

    With ``scale`` (ms per request for all samples), the share in ms too.
    """
    counts: Counter[str] = Counter()
    for _, frames, n in stacks:
        for frame in frames:
            if frame.startswith(function):
                counts[frame] += n
                break
    rows = []
    for frame, n in counts.most_common(limit):
        location = frame.rsplit("(", 1)[-1].rstrip(")")
        ms = "" if scale is None else f" {scale * n / total:6.2f}"
        rows.append(f"    {100 * n / total:5.1f}%{ms}  {location:<26} {_source_line(frame)}")
    return rows


# Exclusive buckets, first match wins: (label, needles, match the leaf frame only).
SERVER_BUCKETS = [
    (
        "open a new PostgreSQL connection (psycopg connect, Django's set-up)",
        ("get_new_connection", "init_connection_state", "BaseDatabaseWrapper.connect "),
        False,
    ),
    (
        "sync/async hand-offs: asgiref, a thread per request, futures, locks",
        ("asgiref/", "concurrent/futures/", "threading.py", "asyncio/futures.py", "queue.py"),
        True,
    ),
    ("signature check: AgentAuth (agent SELECT, unseal, HMAC, nonce)", ("AgentAuth.",), False),
    ("ingest_heartbeat (UPDATE, INSERT, rules, 3 SELECTs)", ("ingest_heartbeat (",), False),
    ("the bare view's UPDATE", ("bare (bench/bareview.py",), False),
    (
        "ninja: parse and validate the body (pydantic)",
        ("_get_values", "pydantic", "ninja/signature", "ninja/params"),
        False,
    ),
    (
        "ninja: build and render the response",
        ("_result_to_response", "create_response", "ninja/responses", "ninja/renderers"),
        False,
    ),
    (
        "middleware hooks and the request metrics",
        ("process_request", "process_response", "process_view", "prometheus_client/"),
        False,
    ),
    ("the rest of Django: request/response objects, URLs, signals", ("django/",), False),
    (
        "HTTP server and event loop (daphne/twisted or uvicorn/h11, asyncio)",
        ("twisted/", "daphne/", "uvicorn/", "h11/", "asyncio/", "selectors.py"),
        False,
    ),
]
CROSSCUTS = [
    ("psycopg (all of it: connect, send queries, read results)", ("psycopg/",)),
    ("Django ORM (build and compile queries, make model rows)", ("django/db/models/",)),
    ("redis client (the nonce SET NX EX)", ("redis/",)),
    ("unseal the agent secret (HKDF + Fernet)", ("secretbox.py",)),
]
SYNC_MARK = ("SyncToAsync.thread_handler",)


def server_profile(stacks, ms_per_request: float) -> list[str]:
    """Where the servers' CPU goes, as shares of the samples and as ms per request."""
    total = sum(n for *_, n in stacks) or 1
    scale = ms_per_request
    threads = {t for t, frames, _ in stacks if _has(frames, SYNC_MARK)}
    lines = [
        f"  {total:,} samples of the thread holding the GIL; share, and ms of server CPU "
        f"per request (of {ms_per_request:.2f}):"
    ]
    left = stacks
    for label, needles, leaf in SERVER_BUCKETS:
        if leaf:
            mine = [s for s in left if any(n in s[1][-1] for n in needles)]
        else:
            mine = [s for s in left if _has(s[1], needles)]
        taken = {id(s) for s in mine}
        left = [s for s in left if id(s) not in taken]
        share = sum(n for *_, n in mine) / total
        if share:
            lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  {label}")
    share = sum(n for *_, n in left) / total
    lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  other")
    lines.append("  across those (a sample can count in several):")
    for label, needles in CROSSCUTS:
        share = sum(n for _, f, n in stacks if _has(f, needles)) / total
        lines.append(f"    {100 * share:5.1f}% {scale * share:6.2f}  {label}")
    for title, function, limit in [
        ("ingest_heartbeat, by line", "ingest_heartbeat (incidents/actions/heartbeats.py", 12),
        ("AgentAuth and signing.verify, by line", "verify (incidents/signing.py", 8),
        ("_check_health / _deliver_commands, by line", "_check_health (incidents/", 2),
        ("", "_deliver_commands (incidents/", 2),
    ]:
        if title:
            lines.append(f"  {title}:")
        lines += by_line(stacks, function, total, scale, limit)
    lines.append(
        f"  Django ran the sync code in {len(threads):,} different threads (one per request: "
        "Django's ASGI handler gives each request its own ThreadSensitiveContext)."
    )
    return lines


def sweep_profile(stacks) -> list[str]:
    main = [s for s in stacks if _has(s[1], ("mark_missing_agents (",))]
    total = sum(n for *_, n in main) or 1
    lines = [
        "  mark_missing_agents, by line (share of its wall time; its `with transaction.atomic()`"
        " line is the COMMIT and the on-commit hooks: live events, RQ enqueues):"
    ]
    lines += by_line(main, "mark_missing_agents (incidents/", total, None, 8)
    lines.append("  _open_or_update (one new incident), by line:")
    lines += by_line(main, "_open_or_update (incidents/", total, None, 10)
    lines.append("  across those:")
    for label, needles in [
        ("psycopg: sending queries, waiting for PostgreSQL", ("psycopg/",)),
        ("Django ORM: building/compiling queries, model rows", ("django/db/models/",)),
        ("audit chain (advisory lock, previous hash, insert)", ("record (portal/audit.py",)),
        ("notify (channel lookup)", ("notify (portal/notify.py",)),
        ("on commit: live events (async_to_sync → channels_redis)", ("_send (portal/live.py",)),
        ("on commit: RQ enqueue of the decider job", ("rq/queue.py",)),
    ]:
        share = sum(n for _, f, n in main if _has(f, needles)) / total
        lines.append(f"    {100 * share:5.1f}%  {label}")
    return lines
