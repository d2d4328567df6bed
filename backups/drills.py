"""Restore drills, the I/O half (issue 13 §8): restore the newest good backup of a source
into its registered drill target, validate it, time it, clean up.

For each restorable artifact of the backup (a PostgreSQL database, a Redis RDB):

- **PostgreSQL**: a scratch restore into a new database ``<db>__drill_<random>``
  on the target (roles the target lacks are created first, as in any restore);
  validated by table count, row counts, and checksums of the largest
  ``BACKUP_DRILL_SAMPLE_TABLES`` tables compared with the backup's own data
  (``pg_restore --data-only`` of those tables from the archive against ``COPY …
  TO STDOUT`` from the restored copy, order-independent); then the database and
  the roles the drill created are dropped.
- **Redis**: a scratch restore into the (empty) target, keys per database compared
  with the backup's; then the target is flushed, empty again for the next drill.

The restore time per component is what the drill measures (the RTO); validation
and clean-up are timed apart. ``backups.actions`` records the result and compares
it with the source's target.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from backups.choices import ArtifactFormat, RestoreMode
from backups.models import BackupArtifact, BackupRun, BackupSource, RestoreTarget
from backups.restore import (
    PgTarget,
    RedisTarget,
    RestoreError,
    _pg_connect,
    _pg_dsn,
    _redis_url,
    check_artifact,
)
from backups.storage import Storage
from backups.streaming import open_plain

DRILLED = (ArtifactFormat.PG_CUSTOM, ArtifactFormat.RDB)
_COPY = re.compile(rb"^COPY (?P<name>.+?) (?:\((?P<cols>.*)\) )?FROM stdin;$")
_COLUMNS = re.compile(r'^\s*("([^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)(\s*,\s*("([^"]|"")+"|'
                      r"[A-Za-z_][A-Za-z0-9_$]*))*\s*$")  # fmt: skip
_MOD = 1 << 256


def drill_artifacts(run: BackupRun) -> list[BackupArtifact]:
    return list(run.artifacts.filter(format__in=DRILLED).order_by("component"))


def _split_qualified(name: str) -> tuple[str, str]:
    """``public.orders`` / ``"My Schema"."T"`` → (schema, table), unquoted."""
    parts, current, quoted, i = [], "", False, 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and name.startswith('""', i):
                current += '"'
                i += 2
                continue
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])


class _Digest:
    """An order-independent digest of lines (a sum of their SHA-256), and their count."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def add(self, line: bytes) -> None:
        self.total = (self.total + int.from_bytes(hashlib.sha256(line).digest(), "big")) % _MOD
        self.count += 1

    def hexdigest(self) -> str:
        return f"{self.total:064x}"[:32]


def _archive_digests(
    storage: Storage, artifact: BackupArtifact, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[_Digest, bytes]]:
    """The sampled tables' data as the backup holds it: digest and the COPY column list."""
    from backups.runner import ToolProcess

    names = sorted({table for _, table in wanted})
    argv = ["pg_restore", "--data-only", "-f", "-", *[a for n in names for a in ("-t", n)]]
    found: dict[tuple[str, str], tuple[_Digest, bytes]] = {}
    current: _Digest | None = None
    pending = b""
    reader = open_plain(storage.open(artifact.key), artifact)
    with ToolProcess(argv, stdin=reader, what="pg_restore --data-only (drill sample)") as tool:
        while data := tool.read():
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if current is not None:
                    if line == b"\\.":
                        current = None
                    else:
                        current.add(line)
                elif match := _COPY.match(line):
                    key = _split_qualified(match.group("name").decode())
                    if key in wanted:
                        current = _Digest()
                        found[key] = (current, match.group("cols") or b"")
        result = tool.finish()
    if not result.ok:
        raise RestoreError(f"reading the sampled tables from the backup failed: {result.message}")
    return found


def _restored_digest(conn: psycopg.Connection, key: tuple[str, str], cols: bytes) -> _Digest:
    columns = cols.decode()
    if columns and not _COLUMNS.match(columns):
        raise RestoreError(f"unexpected column list in the backup for {key[0]}.{key[1]}")
    query = sql.SQL("COPY {}.{} {} TO STDOUT").format(
        sql.Identifier(key[0]),
        sql.Identifier(key[1]),
        sql.SQL(f"({columns})") if columns else sql.SQL(""),
    )
    digest, pending = _Digest(), b""
    with conn.cursor().copy(query) as copy:
        for block in copy:
            lines = (pending + bytes(block)).split(b"\n")
            pending = lines.pop()
            for line in lines:
                digest.add(line)
    if pending:
        digest.add(pending)
    return digest


def sample_checksums(
    target: PgTarget, database: str, storage: Storage, artifact: BackupArtifact, rows: dict, limit
) -> dict:
    """Checksums of the largest ``limit`` tables: the restored copy against the backup."""
    sampled = sorted(rows, key=lambda name: (-rows[name], name))[:limit]
    wanted = {_split_qualified_plain(name) for name in sampled}
    if not wanted:
        return {"tables": {}, "ok": True}
    expected = _archive_digests(storage, artifact, wanted)
    tables, ok = {}, True
    with _pg_connect(target, database) as conn:
        for key in sorted(wanted):
            name = f"{key[0]}.{key[1]}"
            if key not in expected:
                tables[name] = {"ok": False, "detail": "no data for it in the backup"}
                ok = False
                continue
            digest, cols = expected[key]
            got = _restored_digest(conn, key, cols)
            same = got.total == digest.total and got.count == digest.count
            ok = ok and same
            tables[name] = {
                "ok": same,
                "rows": got.count,
                "rows_in_backup": digest.count,
                "checksum": got.hexdigest(),
                "checksum_in_backup": digest.hexdigest(),
            }
    return {"tables": tables, "ok": ok}


def _split_qualified_plain(name: str) -> tuple[str, str]:
    schema, _, table = name.partition(".")
    return schema, table


def _drill_target(source: BackupSource) -> RestoreTarget:
    registered = source.drill_target
    if registered is None:
        raise RestoreError(f"source {source.name} has no restore target for drills")
    return registered


def pg_drill_target(source: BackupSource, database: str) -> PgTarget:
    registered = _drill_target(source)
    return PgTarget(
        dsn=_pg_dsn(registered), database=database, password_env=registered.password_env,
        password_file=registered.password_file, registered=registered.name,
        revision=registered.revision,
    )  # fmt: skip


def redis_drill_target(source: BackupSource) -> RedisTarget:
    registered = _drill_target(source)
    return RedisTarget(
        url=_redis_url(registered), password_env=registered.password_env,
        password_file=registered.password_file, registered=registered.name,
        revision=registered.revision,
    )  # fmt: skip


def _drill_pg(source, storage, artifact, sample: int) -> dict:
    from backups.postgres_restore import _drop, _drop_roles, restore_pg

    database = f"{artifact.component[:30]}__drill_{secrets.token_hex(4)}"
    target = pg_drill_target(source, database)
    started = time.monotonic()
    report = restore_pg(target, storage, artifact, RestoreMode.SCRATCH)
    restore_s = time.monotonic() - started
    started = time.monotonic()
    try:  # the restore counted tables and rows; now compare data with the backup's
        checks = sample_checksums(target, database, storage, artifact, report["rows"], sample)
        report["sampled_tables"] = checks["tables"]
        report["ok"] = bool(report["ok"] and checks["ok"])
    finally:
        validate_s = time.monotonic() - started
        warnings = report.setdefault("warnings", [])
        if not _drop(target, database):
            warnings.append(f"the drill's database {database} could not be dropped")
        warnings += _drop_roles(target, report.get("roles_created") or [])
    report.update(restore_seconds=round(restore_s, 3), validate_seconds=round(validate_s, 3))
    return report


def _drill_redis(source, storage, artifact) -> dict:
    from backups.redis_restore import restore_redis

    target = redis_drill_target(source)
    started = time.monotonic()
    report = restore_redis(target, storage, artifact, RestoreMode.SCRATCH)
    restore_s = time.monotonic() - started
    client = target.client()
    try:
        client.flushall()  # it was empty (a scratch restore checks): empty again
    finally:
        client.close()
    report.update(restore_seconds=round(restore_s, 3), validate_seconds=0.0)
    return report


def perform(
    source: BackupSource,
    run: BackupRun,
    storage: Storage,
    *,
    sample: int = 3,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Drill every restorable artifact of ``run``; returns the report (raises RestoreError)."""
    artifacts = drill_artifacts(run)
    if not artifacts:
        raise RestoreError(f"backup #{run.pk} has nothing a drill can restore")
    for artifact in artifacts:
        check_artifact(storage, artifact)
    components = []
    for number, artifact in enumerate(artifacts, start=1):
        if on_step is not None:
            on_step(f"restoring {artifact.component}", number - 1, len(artifacts))
        if artifact.format == ArtifactFormat.PG_CUSTOM:
            components.append(_drill_pg(source, storage, artifact, sample))
        else:
            components.append(_drill_redis(source, storage, artifact))
    if on_step is not None:
        on_step("done", len(artifacts), len(artifacts))
    return {
        "run": run.pk,
        "target": _drill_target(source).name,
        "components": components,
        "ok": all(c.get("ok") for c in components),
        "rto_seconds": round(sum(c["restore_seconds"] for c in components), 3),
        "verify_seconds": run.verify_seconds,
    }
