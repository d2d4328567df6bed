"""Restoring a per-database PostgreSQL dump, exactly (issue 13 §1).

``pg_restore --clean`` into the live database drops only what the archive
contains: objects created since the backup survive, or make the restore fail.
So an overwrite never restores *into* the live database:

1. **Restore into a new database** ``<db>__restore_<random>`` created like the
   target (owner, encoding, locale), with ``pg_restore --single-transaction
   --exit-on-error``.
2. **Validate it** (tables counted against the verified backup) before anything
   else happens. A failure in 1–2 drops the new database: the target was never
   touched.
3. **Swap names under a short lock**: connections to the target are refused
   (``ALLOW_CONNECTIONS false``), its sessions closed (``pg_terminate_backend``,
   at most ``SWAP_TIMEOUT`` seconds, naming the sessions that would not go),
   then both ``ALTER DATABASE … RENAME`` in one transaction. Clients see the
   old database or the new one, never a mix. The old one is then dropped (a
   verified safety backup of it exists).

Database-level properties are those of the database being replaced (owner,
encoding and locale, ``GRANT … ON DATABASE``, ``ALTER DATABASE … SET``,
its comment): a per-database dump does not carry them. The restore's role
needs ``CREATEDB``, ownership of the target (or superuser) and
``pg_signal_backend`` to close other roles' sessions; the server needs room
for a second copy of the database while it runs.

A scratch restore creates the database and restores into it; if that fails,
the database it created is dropped again.

Before either, the roles the backup has and the target lacks are created from
the backup's globals (``backups.pg_globals``; existing roles are never
altered), and dropped again if the restore fails.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from backups import faults, pg_globals
from backups.choices import RestoreMode
from backups.models import BackupArtifact
from backups.pgwatch import PgLockWatch
from backups.restore import PgTarget, RestoreError, _pg_connect
from backups.runner import run_tool
from backups.sources import pg_url
from backups.storage import Storage, StorageError
from backups.streaming import UNREADABLE, open_plain

# How long the swap may wait for the target's sessions to close.
SWAP_TIMEOUT = 15.0
# GUCs whose value is a list: each element is its own literal when copied.
_LIST_SETTINGS = {"search_path", "temp_tablespaces", "local_preload_libraries",
                  "session_preload_libraries"}  # fmt: skip
_PRIVILEGES = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def restore_pg(target: PgTarget, storage: Storage, artifact: BackupArtifact, mode: str) -> dict:
    """Create the roles the target lacks (from the backup's globals), then restore; a failure
    drops what this restore created (the database, the roles)."""
    created = _ensure_roles(target, storage, artifact)
    try:
        if mode == RestoreMode.SCRATCH:
            report = _scratch(target, storage, artifact)
        else:
            report = _overwrite(target, storage, artifact)
    except RestoreError as exc:
        if not created.roles:
            raise
        warnings = _drop_roles(target, created.roles)
        names = ", ".join(created.roles)
        note = (
            f"; the roles it created ({names}) were dropped again"
            if not warnings
            else f"; {'; '.join(warnings)}: drop them by hand"
        )
        raise RestoreError(f"{exc}{note}") from None
    report.update(
        roles_created=created.roles,
        memberships_granted=created.memberships,
        globals_skipped=created.skipped[:20],
    )
    if created.note:
        report.setdefault("warnings", []).append(created.note)
    return report


def _scratch(target: PgTarget, storage: Storage, artifact: BackupArtifact) -> dict:
    _create(target, target.database, like=None)
    try:
        _pg_restore(target, target.database, storage, artifact)
    except RestoreError as exc:
        dropped = _drop(target, target.database)
        note = "the new database was dropped again" if dropped else (
            f"the new database {target.database} could not be dropped: drop it by hand"
        )  # fmt: skip
        raise RestoreError(f"{exc} ({note})") from None
    return validate_pg(target, target.database, artifact)


@dataclass
class _Roles:
    roles: list[str] = field(default_factory=list)
    memberships: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    note: str = ""


def _ensure_roles(target: PgTarget, storage: Storage, artifact: BackupArtifact) -> _Roles:
    stored = pg_globals.globals_of(artifact)
    if stored is None:
        return _Roles(note="this backup has no globals (taken before they were backed up): "
                      "roles the target lacks are not created")  # fmt: skip
    try:
        found = pg_globals.load(storage, stored)
        with _pg_connect(target, "postgres") as conn:
            created = pg_globals.create_missing(conn, found)
    except pg_globals.GlobalsError as exc:
        raise RestoreError(f"{exc}; nothing was changed") from None
    except UNREADABLE + (psycopg.Error, StorageError) as exc:
        raise RestoreError(
            f"cannot read the backup's globals: {exc}; nothing was changed"
        ) from None
    return _Roles(created.roles, created.memberships, created.skipped)


def _drop_roles(target: PgTarget, names: list[str]) -> list[str]:
    try:
        with _pg_connect(target, "postgres") as conn:
            return pg_globals.drop_roles(conn, names)
    except (psycopg.Error, RestoreError) as exc:
        return [f"roles {', '.join(names)} (created by this restore) are left: {exc}"]


def _overwrite(target: PgTarget, storage: Storage, artifact: BackupArtifact) -> dict:
    staging = f"{target.database[:40]}__restore_{secrets.token_hex(4)}"
    properties = _properties(target, target.database)
    _create(target, staging, like=properties)
    try:
        _pg_restore(target, staging, storage, artifact)
        report = validate_pg(target, staging, artifact)
        if not report["ok"]:
            raise RestoreError(
                f"the restored copy has {report['tables']} tables, the backup "
                f"{report['tables_expected']}"
            )
        _copy_properties(target, staging, properties)
        closed = _swap(target, staging)
    except (RestoreError, psycopg.Error) as exc:
        dropped = _drop(target, staging)
        leftover = "" if dropped else f" (drop the unfinished copy {staging} by hand)"
        raise RestoreError(
            f"{exc}; the database {target.database} was not touched: nothing was changed{leftover}"
        ) from None
    old = closed.pop("old")
    warnings = [] if _drop(target, old) else [f"the previous database is left as {old}"]
    report.update(
        target=f"{target.database} on {target.where}",
        method="restored into a new database, validated, then swapped names with the target",
        sessions_closed=closed["sessions"],
        swap_seconds=closed["seconds"],
        warnings=warnings,
    )
    return report


# --- steps ------------------------------------------------------------------------


def _properties(target: PgTarget, database: str) -> dict:
    with _pg_connect(target, "postgres") as conn:
        row = conn.execute(
            "SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
            "shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE datname = %s",
            [database],
        ).fetchone()
        if row is None:
            raise RestoreError(f"database {database} no longer exists on {target.where}")
        info, owner, encoding, comment = row
        settings = conn.execute(
            "SELECT COALESCE(pg_get_userbyid(NULLIF(s.setrole, 0)), ''), s.setconfig "
            "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
            "WHERE d.datname = %s",
            [database],
        ).fetchall()
    return {
        "owner": owner,
        "encoding": encoding,
        "collate": info.get("datcollate"),
        "ctype": info.get("datctype"),
        "provider": info.get("datlocprovider"),
        "icu_locale": info.get("daticulocale") or info.get("datlocale"),
        "acl": info.get("datacl"),
        "comment": comment,
        "settings": settings,
    }


def _create(target: PgTarget, database: str, *, like: dict | None) -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    if like is not None:
        parts = [
            sql.SQL("TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Identifier(like["owner"]),
                sql.Literal(like["encoding"]),
                sql.Literal(like["collate"]),
                sql.Literal(like["ctype"]),
            )
        ]
        if like["provider"] == "i" and like["icu_locale"]:
            parts.append(
                sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like["icu_locale"]))
            )
        query = sql.SQL(" ").join([query, *parts])
    try:
        with _pg_connect(target, "postgres") as conn:
            # Fails if the database exists: a scratch restore never overwrites.
            conn.execute(query)
    except psycopg.Error as exc:
        raise RestoreError(f"cannot create database {database}: {exc}") from None


def _pg_restore(target: PgTarget, database: str, storage: Storage, artifact) -> None:
    # One transaction into a database nobody else uses: a failure leaves nothing half-done.
    argv = ["pg_restore", "--single-transaction", "--exit-on-error",
            "-d", pg_url(target.dsn, database)]  # fmt: skip
    password = target.password()
    env = {"PGPASSWORD": password} if password else {}
    env["PGPASSFILE"] = os.devnull
    env["PGCONNECT_TIMEOUT"] = str(faults.connect_timeout())
    # Bounded like a backup: no byte read and the server idle for the stall timeout
    # kills it; waiting on another session's lock past BACKUP_LOCK_TIMEOUT cancels it,
    # naming the holder. The single transaction then rolls back.
    watch = PgLockWatch(pg_url(target.dsn, database), password=password, label="portal-restore")
    with open_plain(storage.open(artifact.key), artifact) as reader:
        result = run_tool(argv, env, stdin=reader, lock_watch=watch, what="pg_restore")
    if not result.ok:
        what = result.message or f"pg_restore exited {result.code}"
        said = result.stderr.strip()[-1500:]
        raise RestoreError(f"{what}: {said}" if said else what)


def _copy_properties(target: PgTarget, database: str, like: dict) -> None:
    """Give the new database the replaced one's grants, settings and comment."""
    name = sql.Identifier(database)
    with _pg_connect(target, "postgres") as conn:
        if like["acl"] is not None:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
            for item in like["acl"]:
                grantee, _, rest = item.partition("=")
                privileges = [_PRIVILEGES[c] for c in rest.split("/")[0] if c in _PRIVILEGES]
                if not privileges or grantee.strip('"') == like["owner"]:
                    continue
                who = sql.SQL("PUBLIC") if not grantee else sql.Identifier(grantee.strip('"'))
                conn.execute(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges), name, who
                    )
                )
        for role, config in like["settings"]:
            scope = (
                sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), name)
                if role
                else sql.SQL("ALTER DATABASE {}").format(name)
            )
            for entry in config or []:
                key, _, value = entry.partition("=")
                if key in _LIST_SETTINGS:
                    values = [v.strip().strip('"') for v in value.split(",") if v.strip()]
                else:
                    values = [value]
                conn.execute(
                    sql.SQL("{} SET {} TO {}").format(
                        scope,
                        sql.Identifier(key),
                        sql.SQL(", ").join(sql.Literal(v) for v in values),
                    )
                )
        if like["comment"]:
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(like["comment"]))
            )


def _sessions(conn, database: str) -> list[tuple]:
    return conn.execute(
        "SELECT pid, usename, application_name, state FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        [database],
    ).fetchall()


def _swap(target: PgTarget, staging: str) -> dict:
    """Close the target's sessions and swap the names in one transaction; returns what it did."""
    live = sql.Identifier(target.database)
    old = f"{target.database[:40]}__replaced_{secrets.token_hex(4)}"
    started = time.monotonic()
    closed = 0
    with _pg_connect(target, "postgres") as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live))
        try:
            while True:
                remaining = _sessions(conn, target.database)
                if not remaining:
                    try:
                        with conn.transaction():
                            conn.execute(
                                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                    live, sql.Identifier(old)
                                )
                            )
                            conn.execute(
                                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                    sql.Identifier(staging), live
                                )
                            )
                        break
                    except psycopg.errors.ObjectInUse:
                        remaining = _sessions(conn, target.database)  # one slipped in: again
                if time.monotonic() - started > SWAP_TIMEOUT:
                    who = ", ".join(f"pid {p} ({u or '?'}, {a or 'no name'}, {s})"
                                    for p, u, a, s in remaining[:5])  # fmt: skip
                    raise RestoreError(
                        f"sessions on {target.database} would not close within "
                        f"{SWAP_TIMEOUT:.0f} s: {who}"
                    )
                for pid, *_ in remaining:
                    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                    closed += 1
                time.sleep(0.05)  # terminated backends take a moment to leave
        except BaseException:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
            raise
    return {"old": old, "sessions": closed, "seconds": round(time.monotonic() - started, 3)}


def _drop(target: PgTarget, database: str) -> bool:
    try:
        with _pg_connect(target, "postgres") as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        return True
    except (psycopg.Error, RestoreError):
        return False


def validate_pg(target: PgTarget, database: str, artifact: BackupArtifact) -> dict:
    with _pg_connect(target, database) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        rows = {}
        for schema, table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            counted = conn.execute(query).fetchone()
            assert counted is not None  # count(*) always returns one row
            rows[f"{schema}.{table}"] = counted[0]
    expected = (artifact.facts or {}).get("tables")
    ok = expected is None or expected == len(tables)
    return {
        "component": artifact.component,
        "target": f"{database} on {target.where}",
        "ok": ok,
        "tables": len(tables),
        "tables_expected": expected,
        "rows": rows,
        "total_rows": sum(rows.values()),
    }
