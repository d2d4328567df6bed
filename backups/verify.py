"""Is a stored backup usable? Every byte read and decoded, checksum compared (issue 13 §3).

Two levels (``VerifyLevel``):

- **full** (after every backup, "Verify again now", ``backup_verify``): the
  stored bytes are read once, hashed on the way (SHA-256 against the one
  recorded while streaming) and decompressed into the real tool, which
  decodes all of it:

  - pg_dump custom format: ``pg_restore -f /dev/null`` (every data block read
    and turned into SQL; a dump cut short fails), plus ``pg_restore --list``
    on the head of the archive for the table counts;
  - pg_dumpall SQL (a cluster, or a per-database backup's globals): every byte
    decompressed (zstd's content checksum), header and completion trailer;
  - Redis RDB: ``redis-check-rdb`` on the whole stream (it loads every object
    and checks the RDB's CRC64);
  - Kubernetes YAML: a full parse, resources counted by kind.

- **quick** (``backup_verify --quick``): the checksum, and only the head of
  the file: pg_restore's table of contents, the RDB header, the SQL and YAML
  headers. Cheap, and it proves little: a dump truncated after its table of
  contents passes. A quick check never makes a backup VERIFIED; a failed one
  makes it FAILED.

The tools run through ``backups.runner.run_tool``: the stall watchdog applies
(no byte taken by the tool for the stall timeout kills it). Each check records
how long it took.
"""

from __future__ import annotations

import collections
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import yaml

from backups.choices import ArtifactFormat, VerifyLevel
from backups.models import BackupArtifact
from backups.storage import Storage, StorageError
from backups.streaming import CHUNK, UNREADABLE, Reader, open_plain

YamlLoader: type[yaml.CSafeLoader] | type[yaml.SafeLoader]
try:  # libyaml's parser when present: ~10x faster on big resource dumps
    from yaml import CSafeLoader as YamlLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as YamlLoader

HEAD = 4096


@dataclass
class Check:
    ok: bool
    detail: str
    facts: dict = field(default_factory=dict)
    level: str = VerifyLevel.FULL
    seconds: float = 0.0


class _HashingReader:
    """Hashes and counts the stored bytes as they are read; ``close`` is left to the owner
    (the tools' feeders close their input, and the rest is still hashed afterwards)."""

    def __init__(self, raw: Reader) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size and size > 0 else CHUNK)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Prepend:
    """A reader giving ``head`` first, then the rest of ``reader``."""

    def __init__(self, head: bytes, reader: Reader) -> None:
        self.head = head
        self.reader = reader

    def read(self, size: int = CHUNK) -> bytes:
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.reader.read(size)

    def close(self) -> None:
        self.reader.close()


def _read_head(reader: BinaryIO, size: int = HEAD) -> bytes:
    head = b""
    while len(head) < size:
        data = reader.read(size - len(head))
        if not data:
            break
        head += data
    return head


def verify_artifact(
    storage: Storage, artifact: BackupArtifact, level: str = VerifyLevel.FULL
) -> Check:
    """Verify one stored file at ``level``; reads it once (the checksum on the way)."""
    started = time.monotonic()
    try:
        raw = storage.open(artifact.key)
    except StorageError as exc:
        return Check(False, str(exc), level=level, seconds=time.monotonic() - started)
    hashing = _HashingReader(raw)
    try:

        def reopen() -> BinaryIO:
            return open_plain(storage.open(artifact.key), artifact)

        try:
            check = FORMAT_CHECKS[artifact.format](open_plain(hashing, artifact), reopen, level)
        except UNREADABLE + (StorageError,) as exc:
            check = Check(False, f"unreadable: {exc}")
        hashing.drain()  # what the tool did not need is still checksummed
    finally:
        raw.close()
    check.level = level
    digest = hashing.sha.hexdigest()
    if digest != artifact.sha256 or hashing.size != artifact.bytes_stored:
        check = Check(
            False,
            f"checksum mismatch: the stored file has SHA-256 {digest[:16]}… "
            f"({hashing.size} bytes), the backup recorded {artifact.sha256[:16]}… "
            f"({artifact.bytes_stored} bytes)",
            level=level,
        )
    elif check.ok:
        check.detail = f"checksum OK; {check.detail}"
    check.seconds = round(time.monotonic() - started, 3)
    check.detail += f" [{level}, {check.seconds:.1f} s]"
    return check


Reopen = Callable[[], BinaryIO]


def _tool_failed(result, what: str) -> Check:
    said = result.stderr.strip()[-500:]
    message = result.message or f"{what} exited {result.code}"
    return Check(False, f"{what} failed: {message}" + (f": {said}" if said else ""))


def _pg_list(reader: BinaryIO) -> tuple[Check, dict]:
    """``pg_restore --list`` over the head of an archive: the table of contents, counted."""
    from backups.runner import ToolProcess

    counts: collections.Counter[str] = collections.Counter()
    entries = 0
    pending = b""
    with ToolProcess(["pg_restore", "--list"], stdin=reader, what="pg_restore --list") as tool:
        while data := tool.read():
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if not line or line.startswith(";"):
                    continue
                entries += 1
                # "215; 1259 39767 TABLE public t postgres", "3344; 0 39767 TABLE DATA …"
                parts = line.split(" ", 3)
                what = parts[3] if len(parts) == 4 else ""
                if what.startswith("TABLE DATA "):
                    counts["TABLE DATA"] += 1
                elif what.startswith("TABLE "):
                    counts["TABLE"] += 1
        result = tool.finish()
    if not result.ok:
        return _tool_failed(result, "pg_restore --list"), {}
    facts = {"toc_entries": entries, "tables": counts["TABLE"], "table_data": counts["TABLE DATA"]}
    return Check(True, f"pg_restore --list: {entries} entries, {counts['TABLE']} tables"), facts


def _pg_custom(main: BinaryIO, reopen: Reopen, level: str) -> Check:
    if level == VerifyLevel.QUICK:
        check, facts = _pg_list(main)
        check.facts = facts
        return check
    from backups.runner import run_tool

    check, facts = _pg_list(reopen())  # reads only the head: the table of contents
    if not check.ok:
        return check
    # Every data block read and decoded into SQL (thrown away): a dump cut short fails here.
    result = run_tool(["pg_restore", "-f", "/dev/null"], stdin=main, what="pg_restore -f /dev/null")
    if not result.ok:
        return _tool_failed(result, "pg_restore -f /dev/null")
    facts["bytes_decoded"] = result.bytes_in
    return Check(
        True,
        f"pg_restore read all {result.bytes_in} bytes ({facts['toc_entries']} entries, "
        f"{facts['tables']} tables)",
        facts,
    )


_DUMP_HEADER = b"PostgreSQL database cluster dump"
_DUMP_TRAILER = b"PostgreSQL database cluster dump complete"


_COUNTED = (
    (re.compile(rb"(?m)^CREATE ROLE "), "roles"),
    (re.compile(rb"(?m)^\\connect "), "connects"),
)


def _sql_scan(main: BinaryIO, level: str) -> tuple[bytes, bytes, int, dict]:
    """Head, tail, size of a pg_dumpall file (quick: the head only), and what it counted."""
    head = _read_head(main)
    if level == VerifyLevel.QUICK:
        return head, b"", len(head), {}
    counts = dict.fromkeys((name for _, name in _COUNTED), 0)
    tail, size, pending, data = b"", 0, b"", head
    while data:
        size += len(data)
        tail = (tail + data)[-HEAD:]
        buffer = pending + data
        cut = buffer.rfind(b"\n") + 1
        for pattern, name in _COUNTED:  # whole lines only: a match starts a line
            counts[name] += len(pattern.findall(buffer, 0, cut))
        pending = buffer[cut:]
        if len(pending) > HEAD:
            pending = b"\0"  # inside a long line (COPY data): no line starts until its end
        data = main.read(CHUNK)
    return head, tail, size, counts


def _pg_sql(main: BinaryIO, reopen: Reopen, level: str) -> Check:
    head, tail, size, counts = _sql_scan(main, level)
    if _DUMP_HEADER not in head:
        return Check(False, "not a pg_dumpall file (header missing)")
    if level == VerifyLevel.QUICK:
        return Check(True, "pg_dumpall SQL: header present")
    if _DUMP_TRAILER not in tail:
        return Check(False, "pg_dumpall file is truncated (completion trailer missing)")
    facts = {"bytes_decoded": size, **counts}
    return Check(
        True,
        f"pg_dumpall SQL: all {size} bytes decompressed, header and trailer present, "
        f"{counts['roles']} roles",
        facts,
    )


def _rdb(main: BinaryIO, reopen: Reopen, level: str) -> Check:
    header = _read_head(main, 9)
    if not re.fullmatch(rb"REDIS\d{4}", header):
        return Check(False, f"not an RDB file (header {header[:9]!r})")
    facts: dict = {"rdb_version": header[5:].decode()}
    if level == VerifyLevel.QUICK:
        return Check(True, f"RDB header {header.decode()}", facts)
    from backups.runner import run_tool

    # redis-check-rdb reads a pipe as well as a file: no temporary copy of the RDB.
    result = run_tool(
        ["redis-check-rdb", "/dev/stdin"],
        stdin=_Prepend(header, main),
        capture=1 << 22,
        what="redis-check-rdb",
    )
    output = (result.stdout.decode(errors="replace") + "\n" + result.stderr).strip()
    if not result.ok or "RDB looks OK" not in output:
        return Check(False, f"redis-check-rdb failed: {result.message} {output[-500:]}".strip())
    keys = re.search(r"(\d+) keys read", output)
    facts.update(keys=int(keys.group(1)) if keys else None, bytes_decoded=result.bytes_in)
    return Check(
        True, f"redis-check-rdb read all {result.bytes_in} bytes, {facts['keys']} keys", facts
    )


def iter_resources(reader: BinaryIO) -> Iterator[dict]:
    """The Kubernetes objects of a YAML stream (a ``List`` or several documents)."""
    for doc in yaml.load_all(reader, Loader=YamlLoader):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" or doc.get("kind", "").endswith("List"):
            yield from (i for i in doc.get("items") or [] if isinstance(i, dict))
        else:
            yield doc


def load_resources(storage: Storage, artifact: BackupArtifact) -> list[dict]:
    """The Kubernetes objects of a YAML artifact."""
    with open_plain(storage.open(artifact.key), artifact) as reader:
        return list(iter_resources(reader))


def _k8s_yaml(main: BinaryIO, reopen: Reopen, level: str) -> Check:
    if level == VerifyLevel.QUICK:
        head = _read_head(main)
        if not re.search(rb"(?m)^(apiVersion|kind|items):", head):
            return Check(False, "not a Kubernetes YAML file (no apiVersion/kind/items)")
        return Check(True, "YAML header present")
    by_kind: collections.Counter[str] = collections.Counter()
    try:
        for item in iter_resources(main):
            if "kind" not in item or "metadata" not in item:
                return Check(False, "YAML parses but holds objects without kind/metadata")
            by_kind[item["kind"]] += 1
    except yaml.YAMLError as exc:
        return Check(False, f"YAML does not parse: {str(exc)[:300]}")
    total = sum(by_kind.values())
    facts = {"resources": total, "by_kind": dict(sorted(by_kind.items()))}
    return Check(True, f"YAML parses: {total} resources", facts)


def decompress_to(storage: Storage, artifact: BackupArtifact, path) -> int:
    """Write the original bytes of an artifact to ``path`` (for tools that need a file)."""
    size = 0
    with open_plain(storage.open(artifact.key), artifact) as reader, open(path, "xb") as out:
        while data := reader.read(CHUNK):
            out.write(data)
            size += len(data)
    return size


def _tfstate(main: BinaryIO, reopen: Reopen, level: str) -> Check:
    from backups.terraform import check_state

    return check_state(main, level)


FORMAT_CHECKS: dict[str, Callable[[BinaryIO, Callable[[], BinaryIO], str], Check]] = {
    ArtifactFormat.PG_CUSTOM: _pg_custom,
    ArtifactFormat.PG_SQL: _pg_sql,
    ArtifactFormat.PG_GLOBALS: _pg_sql,
    ArtifactFormat.RDB: _rdb,
    ArtifactFormat.K8S_YAML: _k8s_yaml,
    ArtifactFormat.TFSTATE: _tfstate,
}
