"""Anchors: the chain head written outside the database, one HMAC'ed line at a time.

A chain whose newest rows were deleted, or an emptied table, is intact by itself;
an anchor line ``{id, hash, count, time}`` kept elsewhere is what tells. Lines are
appended by the periodic job (portal/cron.py, queue "control") and by
``audit_verify``, each chained to the one before. docs/security.md.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.checks import Error, register
from django.db import connection
from django.utils import timezone

from portal.audit.keys import Keyring, keyring

if TYPE_CHECKING:
    from portal.audit.chain import ChainProblem, ChainReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchor:
    """One line of the anchor file: the chain head at a moment, HMAC'ed."""

    line: int
    event_id: int
    hash: str
    count: int
    time: str
    key_id: str
    prev: str
    mac: str

    def describe(self) -> str:
        return f"event #{self.event_id}, {self.count} events, {self.time}"


def anchor_dir() -> Path:
    """Where anchor files go (AUDIT_ANCHOR_DIR; its default lives in settings)."""
    return Path(settings.AUDIT_ANCHOR_DIR)


def anchor_interval() -> int:
    """Seconds between periodic anchors (AUDIT_ANCHOR_INTERVAL, default 300)."""
    return int(settings.AUDIT_ANCHOR_INTERVAL)


# With no new events, an anchor is still written this often, so its age in /metrics
# tells a stopped anchor job from a quiet portal.
ANCHOR_HEARTBEAT = timedelta(hours=1)


def anchor_file() -> Path:
    """One file per database, so two databases never share (and fail) each other's anchors."""
    name = Path(str(connection.settings_dict["NAME"])).name
    return anchor_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'default'}.anchors"


def _anchor_mac_input(fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"portal audit anchor\n" + body.encode()


@dataclass
class AnchorFile:
    path: Path
    anchors: list[Anchor] = field(default_factory=list)
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def last(self) -> Anchor | None:
        return self.anchors[-1] if self.anchors else None


def read_anchors(path: Path | None = None, ring: Keyring | None = None) -> AnchorFile:
    """Parse and check every anchor line: MAC, link to the line before, order."""
    from portal.audit.chain import ChainProblem  # chain imports this module

    path = path or anchor_file()
    ring = ring or keyring()
    result = AnchorFile(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return result
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"the anchor file is unreadable ({getattr(exc, 'strerror', None) or exc})"
        result.problems.append(ChainProblem(None, reason, anchor=str(path)))
        return result
    prev: Anchor | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue

        def bad(reason: str, number: int = number) -> None:
            result.problems.append(ChainProblem(None, reason, anchor=f"{path}:{number}"))

        try:
            data = json.loads(raw)
            fields = {k: data[k] for k in ("v", "id", "hash", "count", "time", "key_id", "prev")}
            mac = data["mac"]
            anchor = Anchor(
                number, int(fields["id"]), str(fields["hash"]), int(fields["count"]),
                str(fields["time"]), str(fields["key_id"]), str(fields["prev"]), str(mac),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            bad("damaged line (not an anchor)")
            continue
        key = ring.by_id.get(anchor.key_id)
        if key is None:
            bad(f"signed with key id {anchor.key_id!r}, which is not configured")
            continue
        if not hmac.compare_digest(key.mac(_anchor_mac_input(fields)), anchor.mac):
            bad("MAC does not match (line edited, or written without the key)")
            continue
        if anchor.prev != (prev.mac if prev else ""):
            bad("does not follow the line before it (anchor lines removed or reordered)")
        elif prev and (anchor.event_id < prev.event_id or anchor.count < prev.count):
            bad("goes backwards (lower event id or count than the line before it)")
        result.anchors.append(anchor)
        prev = anchor
    return result


def _last_anchor_line(path: Path) -> str | None:
    """The file's last line, read from its end (metrics must not read the whole file)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = [line for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    return lines[-1].decode("utf-8", "replace") if lines else None


def last_trusted_anchor(path: Path | None = None) -> Anchor | None:
    """The newest anchor line if its MAC checks out (used by /metrics)."""
    path = path or anchor_file()
    raw = _last_anchor_line(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        fields = {k: data[k] for k in ("v", "id", "hash", "count", "time", "key_id", "prev")}
        key = keyring().by_id.get(str(data["key_id"]))
        if key is None or not hmac.compare_digest(key.mac(_anchor_mac_input(fields)), data["mac"]):
            return None
        return Anchor(
            0, int(data["id"]), str(data["hash"]), int(data["count"]), str(data["time"]),
            str(data["key_id"]), str(data["prev"]), str(data["mac"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


class AuditChainBroken(Exception):
    def __init__(self, problem: ChainProblem) -> None:
        super().__init__(problem.message())
        self.problem = problem


def write_anchor(report: ChainReport | None = None) -> Anchor | None:
    """Append the verified chain head to the anchor file; None if the log is empty.

    Without ``report``, first verifies everything since the last anchor (and that
    the last anchor still matches). Refuses, raising AuditChainBroken, to anchor
    a chain that does not verify. Skips the write if the last line already names
    this head and is younger than ANCHOR_HEARTBEAT.
    """
    from portal.audit.chain import scan_chain  # chain imports this module

    path = anchor_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: the lines form a chain
        ring = keyring()
        existing = read_anchors(path, ring)
        if report is None:
            report = scan_chain(from_anchor=True, anchors=existing, ring=ring)
        if report.problems:
            raise AuditChainBroken(report.problems[0])
        last = existing.last
        if report.head_id is None:
            return None
        if last is not None and last.event_id > report.head_id:
            return last  # someone anchored a newer head meanwhile
        now = timezone.now()
        if (
            last is not None
            and last.event_id == report.head_id
            and now - datetime.fromisoformat(last.time) < ANCHOR_HEARTBEAT
        ):
            return last
        head_hash = report.head_hash
        assert head_hash is not None  # scan_chain sets it together with head_id
        time_text = now.astimezone(UTC).isoformat(timespec="seconds")
        prev = last.mac if last else ""
        fields = {
            "v": 1,
            "id": report.head_id,
            "hash": head_hash,
            "count": report.count,
            "time": time_text,
            "key_id": ring.signing.id,
            "prev": prev,
        }
        mac = ring.signing.mac(_anchor_mac_input(fields))
        line = json.dumps({**fields, "mac": mac}, sort_keys=True, separators=(",", ":"))
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
        number = (existing.anchors[-1].line + 1) if existing.anchors else 1
        return Anchor(
            number, report.head_id, head_hash, report.count, time_text,
            ring.signing.id, prev, mac,
        )  # fmt: skip
    finally:
        os.close(fd)


def periodic_anchor() -> dict[str, Any]:
    """RQ job (portal/cron.py, queue "control"): verify since the last anchor, append one.

    A chain that no longer verifies is logged as an error and fails the job
    (visible in the failed-job registry); the anchor age in /metrics then grows.
    """
    try:
        anchor = write_anchor()
    except AuditChainBroken as exc:
        log.error("audit chain does not verify, no anchor written: %s", exc)
        raise
    if anchor is None:
        return {"anchored": None}
    return {"anchored": anchor.event_id, "count": anchor.count, "time": anchor.time}


@register()
def check_anchor_dir(app_configs: object, **kwargs: object) -> list[Error]:
    directory = anchor_dir()
    parent = directory if directory.exists() else directory.parent
    if parent.exists() and not os.access(parent, os.W_OK):
        return [
            Error(
                f"AUDIT_ANCHOR_DIR {directory} is not writable: audit anchors cannot be written.",
                hint="Set AUDIT_ANCHOR_DIR to a directory the portal can append to.",
                id="portal.E031",
            )
        ]
    return []
