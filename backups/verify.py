"""Is a stored backup usable? Checksum re-read, then a format check with the real tool.

- every artifact: SHA-256 of the stored bytes must match the one recorded
  while streaming;
- pg_dump custom format: ``pg_restore --list`` must read the whole archive;
- pg_dumpall SQL: header and completion trailer present;
- Redis RDB: ``REDISnnnn`` header and ``redis-check-rdb`` passes;
- Kubernetes YAML: parses, and the resources are counted by kind.
"""

from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import zstandard

from backups.choices import ArtifactFormat
from backups.models import BackupArtifact
from backups.storage import Storage, StorageError
from backups.streaming import (
    CHUNK,
    BoundedText,
    drain_in_thread,
    feed,
    open_decompressed,
    sha256_of,
)

try:  # libyaml's parser when present: ~10x faster on big resource dumps
    from yaml import CSafeLoader as YamlLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as YamlLoader


@dataclass
class Check:
    ok: bool
    detail: str
    facts: dict = field(default_factory=dict)


def verify_artifact(storage: Storage, artifact: BackupArtifact) -> Check:
    try:
        with storage.open(artifact.key) as stored:
            digest, size = sha256_of(stored)
    except StorageError as exc:
        return Check(False, str(exc))
    if digest != artifact.sha256 or size != artifact.bytes_stored:
        return Check(
            False,
            f"checksum mismatch: the stored file has SHA-256 {digest[:16]}… ({size} bytes), "
            f"the backup recorded {artifact.sha256[:16]}… ({artifact.bytes_stored} bytes)",
        )
    try:
        check = FORMAT_CHECKS[artifact.format](storage, artifact)
    except (zstandard.ZstdError, OSError, StorageError) as exc:
        return Check(False, f"unreadable: {exc}")
    if check.ok:
        check.detail = f"checksum OK; {check.detail}"
    return check


def _pg_custom(storage: Storage, artifact: BackupArtifact) -> Check:
    proc = subprocess.Popen(
        ["pg_restore", "--list"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    errors = BoundedText(4096)
    drainer = drain_in_thread(proc.stderr, errors)
    failures: list[BaseException] = []
    feeder = feed(open_decompressed(storage.open(artifact.key)), proc, failures)
    counts: collections.Counter[str] = collections.Counter()
    entries = 0
    for raw in proc.stdout:
        line = raw.decode(errors="replace").strip()
        if not line or line.startswith(";"):
            continue
        entries += 1
        # "215; 1259 39767 TABLE public t postgres", "3344; 0 39767 TABLE DATA public t postgres"
        parts = line.split(" ", 3)
        what = parts[3] if len(parts) == 4 else ""
        if what.startswith("TABLE DATA "):
            counts["TABLE DATA"] += 1
        elif what.startswith("TABLE "):
            counts["TABLE"] += 1
    code = proc.wait()
    feeder.join()
    drainer.join()
    if failures:
        return Check(False, f"could not decompress: {failures[0]}")
    if code != 0:
        return Check(False, f"pg_restore --list failed: {errors.text().strip()[-500:]}")
    facts = {"toc_entries": entries, "tables": counts["TABLE"], "table_data": counts["TABLE DATA"]}
    return Check(True, f"pg_restore --list: {entries} entries, {counts['TABLE']} tables", facts)


def _pg_sql(storage: Storage, artifact: BackupArtifact) -> Check:
    head = b""
    tail = b""
    with open_decompressed(storage.open(artifact.key)) as reader:
        while True:
            data = reader.read(CHUNK)
            if not data:
                break
            if len(head) < 4096:
                head += data[: 4096 - len(head)]
            tail = (tail + data)[-4096:]
    if b"PostgreSQL database cluster dump" not in head:
        return Check(False, "not a pg_dumpall file (header missing)")
    if b"PostgreSQL database cluster dump complete" not in tail:
        return Check(False, "pg_dumpall file is truncated (completion trailer missing)")
    databases = len(re.findall(rb"\\connect", head + tail))
    return Check(True, "pg_dumpall SQL: header and trailer present", {"connects_seen": databases})


def _rdb(storage: Storage, artifact: BackupArtifact) -> Check:
    with tempfile.TemporaryDirectory(prefix="rdbcheck-") as tmp:
        path = Path(tmp) / "dump.rdb"
        decompress_to(storage, artifact.key, path)
        with open(path, "rb") as fh:
            header = fh.read(9)
        if not re.fullmatch(rb"REDIS\d{4}", header):
            return Check(False, f"not an RDB file (header {header[:9]!r})")
        result = subprocess.run(
            ["redis-check-rdb", str(path)], capture_output=True, text=True, timeout=3600
        )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "RDB looks OK" not in output:
        return Check(False, f"redis-check-rdb failed: {output[-500:]}")
    keys = re.search(r"(\d+) keys read", output)
    facts = {"rdb_version": header[5:].decode(), "keys": int(keys.group(1)) if keys else None}
    return Check(True, f"redis-check-rdb OK, {facts['keys']} keys", facts)


def load_resources(storage: Storage, key: str) -> list[dict]:
    """The Kubernetes objects of a YAML artifact (a ``List`` or several documents)."""
    items: list[dict] = []
    with open_decompressed(storage.open(key)) as reader:
        for doc in yaml.load_all(reader, Loader=YamlLoader):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "List" or doc.get("kind", "").endswith("List"):
                items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            else:
                items.append(doc)
    return items


def _k8s_yaml(storage: Storage, artifact: BackupArtifact) -> Check:
    try:
        items = load_resources(storage, artifact.key)
    except yaml.YAMLError as exc:
        return Check(False, f"YAML does not parse: {str(exc)[:300]}")
    if any("kind" not in i or "metadata" not in i for i in items):
        return Check(False, "YAML parses but holds objects without kind/metadata")
    by_kind = collections.Counter(i["kind"] for i in items)
    facts = {"resources": len(items), "by_kind": dict(sorted(by_kind.items()))}
    return Check(True, f"YAML parses: {len(items)} resources", facts)


def decompress_to(storage: Storage, key: str, path: Path) -> int:
    """Write the original bytes of an artifact to ``path`` (for tools that need a file)."""
    size = 0
    with open_decompressed(storage.open(key)) as reader, open(path, "xb") as out:
        while True:
            data = reader.read(CHUNK)
            if not data:
                break
            out.write(data)
            size += len(data)
    return size


FORMAT_CHECKS = {
    ArtifactFormat.PG_CUSTOM: _pg_custom,
    ArtifactFormat.PG_SQL: _pg_sql,
    ArtifactFormat.RDB: _rdb,
    ArtifactFormat.K8S_YAML: _k8s_yaml,
}
