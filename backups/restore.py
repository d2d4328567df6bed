"""Restore targets: inspect one (for the plan), back it up first, restore into it, validate.

This is the I/O half of a restore; ``backups.actions`` decides whether it may
run and records what happened. Targets are reached over the network (a DSN,
a Redis URL, a kubeconfig); restoring *into* a pod through kubectl exec is
not supported (use ``kubectl port-forward`` and a DSN).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
import yaml
from psycopg import sql
from pydantic import BaseModel, Field, ValidationError, field_validator

from backups.choices import ArtifactFormat, RestoreMode, SourceKind, Transport
from backups.models import BackupArtifact, BackupSource
from backups.sources import SourceError, kubectl_base, pg_url, read_password
from backups.storage import Storage
from backups.streaming import BoundedText, drain_in_thread, feed, open_decompressed
from backups.verify import decompress_to, load_resources

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
# Server-managed fields that must not be sent back with an apply.
_META_DROP = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
              "selfLink", "ownerReferences")  # fmt: skip


class RestoreError(RuntimeError):
    """A restore refused or failed; the message says why, for people."""


# --- typed targets -------------------------------------------------------------


class Credentials(BaseModel):
    password_env: str = Field(default="", pattern=r"^$|^[A-Z_][A-Z0-9_]{0,127}$")
    password_file: str = ""

    def password(self) -> str | None:
        try:
            return read_password(self.password_env, self.password_file)
        except SourceError as exc:
            raise RestoreError(str(exc)) from None


class PgTarget(Credentials):
    dsn: str
    database: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"postgres", "postgresql"}:
            raise ValueError("use a postgres:// DSN")
        if parts.password:
            raise ValueError("no password in the DSN: use password_env or password_file")
        return value

    @property
    def name(self) -> str:
        return self.database

    @property
    def where(self) -> str:
        parts = urlsplit(self.dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


class RedisTarget(Credentials):
    url: str

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "redis":
            raise ValueError("use a redis://host:port URL")
        if parts.password:
            raise ValueError("no password in the URL: use password_env or password_file")
        return value

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"

    def client(self, db: int = 0) -> redis.Redis:
        parts = urlsplit(self.url)
        return redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=parts.username or None,
            password=self.password(),
            db=db,
            socket_timeout=60,
            socket_connect_timeout=5,
        )


class KubeTarget(BaseModel):
    kubeconfig: str = ""
    context: str = ""
    resources: list[str] = Field(min_length=1)

    @field_validator("resources")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        for item in value:
            parts = item.split("/")
            if not 1 <= len(parts) <= 3 or not all(parts):
                raise ValueError(f"{item!r}: use KIND, KIND/NAMESPACE or KIND/NAMESPACE/NAME")
        return value

    @property
    def name(self) -> str:
        return self.context


def current_context(kubeconfig: str) -> str:
    result = subprocess.run(
        [*kubectl_base(kubeconfig, ""), "config", "current-context"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RestoreError(f"no current kubectl context: {result.stderr.strip()[-300:]}")
    return result.stdout.strip()


def target_for(
    artifact: BackupArtifact, given: dict[str, Any]
) -> PgTarget | RedisTarget | KubeTarget:
    """The restore target: what the user gave, completed with the source's defaults."""
    source = artifact.run.source
    if source.transport == Transport.KUBECTL_EXEC and not given.get("dsn") and not given.get("url"):
        raise RestoreError(
            "this source is read through kubectl exec; give the target's DSN/URL "
            "(e.g. through kubectl port-forward) to restore over the network"
        )
    creds = {"password_env": source.password_env, "password_file": source.password_file}
    try:
        if artifact.format == ArtifactFormat.PG_CUSTOM:
            return PgTarget(**{**creds, "dsn": source.dsn, "database": artifact.component, **given})
        if artifact.format == ArtifactFormat.RDB:
            return RedisTarget(**{**creds, "url": source.dsn, **given})
        if artifact.format == ArtifactFormat.K8S_YAML:
            target = KubeTarget(
                **{"kubeconfig": source.kubeconfig, "context": source.kube_context, **given}
            )
            if not target.context:
                # Name the cluster explicitly: people confirm it, and it is what was approved.
                target.context = current_context(target.kubeconfig)
            return target
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RestoreError(f"bad target: {problems}") from None
    raise RestoreError(
        f"{artifact.get_format_display()} artifacts are restored by hand "
        "(psql -f for a pg_dumpall file); the portal restores per-database dumps"
    )


def safety_source(artifact: BackupArtifact, target) -> tuple[BackupSource, list[str] | None]:
    """An unsaved source describing the *target*, to back it up before overwriting it."""
    source = artifact.run.source
    if isinstance(target, PgTarget):
        return BackupSource(
            name=source.name, kind=SourceKind.POSTGRES, dsn=target.dsn,
            password_env=target.password_env, password_file=target.password_file,
        ), [target.database]  # fmt: skip
    if isinstance(target, RedisTarget):
        return BackupSource(
            name=source.name, kind=SourceKind.REDIS, dsn=target.url,
            password_env=target.password_env, password_file=target.password_file,
        ), None  # fmt: skip
    return BackupSource(
        name=source.name, kind=SourceKind.KUBERNETES, kubeconfig=target.kubeconfig,
        kube_context=target.context, kube_kinds=source.kube_kinds,
    ), None  # fmt: skip


# --- inspection (the plan) ---------------------------------------------------------


@dataclass
class TargetState:
    exists: bool
    description: str
    free_bytes: int | None = None
    free_note: str = ""
    facts: dict = field(default_factory=dict)


def _free_at(host: str, directory: str | None) -> tuple[int | None, str]:
    if host not in LOCAL_HOSTS:
        return None, f"unknown: {host} is another machine"
    if not directory or not Path(directory).exists():
        return None, "unknown: the target's data directory is not visible from here"
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize, f"free in {directory}"


def _pg_connect(target: PgTarget, database: str) -> psycopg.Connection:
    return psycopg.connect(
        pg_url(target.dsn, database), password=target.password(), connect_timeout=10,
        autocommit=True,
    )  # fmt: skip


def inspect_pg(target: PgTarget) -> TargetState:
    try:
        with _pg_connect(target, "postgres") as conn:
            row = conn.execute(
                "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s",
                [target.database],
            ).fetchone()
            try:
                directory = conn.execute("SHOW data_directory").fetchone()[0]
            except psycopg.Error:
                directory = None
    except psycopg.Error as exc:
        raise RestoreError(f"cannot reach PostgreSQL at {target.where}: {exc}") from None
    free, note = _free_at(urlsplit(target.dsn).hostname or "", directory)
    if row is None:
        return TargetState(False, f"new database {target.database} on {target.where}", free, note)
    with _pg_connect(target, target.database) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]
    return TargetState(
        True,
        f"database {target.database} on {target.where}: {tables} tables, "
        f"{row[0] / 1e6:.1f} MB — dropped and replaced",
        free,
        note,
        {"tables": tables, "bytes": row[0]},
    )


def _redis_keys(client: redis.Redis) -> dict[str, int]:
    return {db: info["keys"] for db, info in client.info("keyspace").items()}


def inspect_redis(target: RedisTarget) -> TargetState:
    client = target.client()
    try:
        keys = _redis_keys(client)
        try:
            directory = client.config_get("dir").get("dir")
        except redis.ResponseError:
            directory = None
    except (redis.RedisError, OSError) as exc:
        raise RestoreError(f"cannot reach Redis at {target.name}: {exc}") from None
    finally:
        client.close()
    free, note = _free_at(urlsplit(target.url).hostname or "", directory)
    total = sum(keys.values())
    if total == 0:
        return TargetState(False, f"empty Redis at {target.name}", free, note, {"keys": keys})
    return TargetState(
        True,
        f"Redis at {target.name}: {total} keys in {len(keys)} database(s) — flushed and replaced",
        free,
        note,
        {"keys": keys},
    )


def select_resources(items: list[dict], selectors: list[str]) -> list[dict]:
    """Objects matching any ``KIND[/NAMESPACE[/NAME]]`` selector (kind case-insensitive)."""
    chosen = []
    for obj in items:
        kind = obj.get("kind", "").lower()
        meta = obj.get("metadata") or {}
        if meta.get("ownerReferences"):
            continue  # made by a controller (pods of a deployment): restoring the owner suffices
        for selector in selectors:
            parts = selector.split("/")
            if parts[0].lower() not in {kind, kind + "s"}:
                continue
            if len(parts) > 1 and parts[1] != meta.get("namespace", ""):
                continue
            if len(parts) > 2 and parts[2] != meta.get("name"):
                continue
            chosen.append(obj)
            break
    return chosen


def _kubectl(target: KubeTarget, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*kubectl_base(target.kubeconfig, target.context), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ref(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"


def inspect_kube(target: KubeTarget, storage: Storage, artifact: BackupArtifact) -> TargetState:
    chosen = select_resources(load_resources(storage, artifact.key), target.resources)
    if not chosen:
        raise RestoreError("no resource of the backup matches the selection")
    with tempfile.TemporaryDirectory(prefix="kube-plan-") as tmp:
        manifest = write_manifest(chosen, Path(tmp))
        result = _kubectl(target, "get", "-f", str(manifest), "-o", "name", "--ignore-not-found")
    if result.returncode != 0:
        raise RestoreError(f"kubectl get failed: {result.stderr.strip()[-500:]}")
    existing = [line for line in result.stdout.splitlines() if line.strip()]
    names = [_ref(o) for o in chosen]
    description = (
        f"{len(chosen)} resource(s) on {target.name}: {len(existing)} exist and are replaced, "
        f"{len(chosen) - len(existing)} created"
    )
    return TargetState(
        bool(existing),
        description,
        None,
        "not applicable",
        {"resources": names, "existing": existing},
    )


def inspect(target, storage: Storage, artifact: BackupArtifact) -> TargetState:
    if isinstance(target, PgTarget):
        return inspect_pg(target)
    if isinstance(target, RedisTarget):
        return inspect_redis(target)
    return inspect_kube(target, storage, artifact)


def mode_for(state: TargetState) -> str:
    return RestoreMode.OVERWRITE if state.exists else RestoreMode.SCRATCH


# --- restore + validation ------------------------------------------------------------


def _run_with_input(argv: list[str], env: dict[str, str], reader) -> tuple[int, str]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    errors = BoundedText(16384)
    drainer = drain_in_thread(proc.stderr, errors)
    failures: list[BaseException] = []
    feeder = feed(reader, proc, failures)
    code = proc.wait()
    feeder.join()
    drainer.join()
    if failures:
        return 1, f"reading the backup failed: {failures[0]}"
    return code, errors.text().strip()


def restore_pg(target: PgTarget, storage: Storage, artifact: BackupArtifact, mode: str) -> dict:
    password = target.password()
    if mode == RestoreMode.SCRATCH:
        try:
            with _pg_connect(target, "postgres") as conn:
                # Fails if the database appeared since the plan: a scratch restore never overwrites.
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
        except psycopg.Error as exc:
            raise RestoreError(f"cannot create scratch database {target.database}: {exc}") from None
    # One transaction: if anything fails, the target is left exactly as it was.
    argv = ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
            "-d", pg_url(target.dsn, target.database)]  # fmt: skip
    env = {"PGPASSWORD": password} if password else {}
    code, stderr = _run_with_input(argv, env, open_decompressed(storage.open(artifact.key)))
    if code != 0:
        raise RestoreError(f"pg_restore exited {code}: {stderr[-1500:]}")
    return validate_pg(target, artifact)


def validate_pg(target: PgTarget, artifact: BackupArtifact) -> dict:
    with _pg_connect(target, target.database) as conn:
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
            rows[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    expected = (artifact.facts or {}).get("tables")
    ok = expected is None or expected == len(tables)
    return {
        "component": artifact.component,
        "target": f"{target.database} on {target.where}",
        "ok": ok,
        "tables": len(tables),
        "tables_expected": expected,
        "rows": rows,
        "total_rows": sum(rows.values()),
    }


class _TempRedis:
    """A private redis-server on a unix socket, loading an RDB file (to read it key by key)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket),
             "--dir", str(directory), "--dbfilename", "dump.rdb", "--save", "",
             "--appendonly", "no", "--loglevel", "notice"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        log = []
        for line in self.proc.stdout:  # wait for the server to say it is ready (or die)
            log.append(line)
            if "ready to accept connections" in line.lower():
                break
        else:
            self.proc.wait()
            raise RestoreError("redis-server could not load the RDB: " + "".join(log)[-800:])
        # Keep reading its log so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), db=db)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def restore_redis(
    target: RedisTarget, storage: Storage, artifact: BackupArtifact, mode: str
) -> dict:
    with tempfile.TemporaryDirectory(prefix="redis-restore-") as tmp:
        decompress_to(storage, artifact.key, Path(tmp) / "dump.rdb")
        loaded = _TempRedis(Path(tmp))
        try:
            return _copy_keys(loaded, target, mode, artifact)
        finally:
            loaded.stop()


def _copy_keys(loaded: _TempRedis, target: RedisTarget, mode: str, artifact) -> dict:
    source_keys = {int(db[2:]): n for db, n in _redis_keys(loaded.client()).items()}
    dest = target.client()
    try:
        existing = sum(_redis_keys(dest).values())
        if mode == RestoreMode.SCRATCH and existing:
            raise RestoreError(
                f"the scratch Redis {target.name} now holds {existing} keys; nothing was changed"
            )
        if mode == RestoreMode.OVERWRITE:
            dest.flushall()
    finally:
        dest.close()
    for db in source_keys:
        src, out = loaded.client(db), target.client(db)
        try:
            batch: list[bytes] = []
            for key in src.scan_iter(count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    _move_batch(src, out, batch)
                    batch = []
            if batch:
                _move_batch(src, out, batch)
        finally:
            src.close()
            out.close()
    dest = target.client()
    try:
        restored = {int(db[2:]): n for db, n in _redis_keys(dest).items()}
    finally:
        dest.close()
    return {
        "component": artifact.component,
        "target": target.name,
        "ok": restored == source_keys,
        "keys": {str(k): v for k, v in sorted(restored.items())},
        "keys_expected": {str(k): v for k, v in sorted(source_keys.items())},
    }


def _move_batch(src: redis.Redis, out: redis.Redis, keys: list[bytes]) -> None:
    read = src.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.pttl(key)
    values = read.execute()
    write = out.pipeline(transaction=False)
    for i, key in enumerate(keys):
        payload, ttl = values[2 * i], values[2 * i + 1]
        if payload is None or ttl == -2:
            continue  # expired while we read it
        write.restore(key, max(ttl, 0), payload, replace=True)
    write.execute()


def write_manifest(objects: list[dict], directory: Path) -> Path:
    """Objects cleaned of server-managed fields, as a private YAML file (it may hold secrets)."""
    cleaned = []
    for obj in objects:
        obj = {k: v for k, v in obj.items() if k != "status"}
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _META_DROP}
        annotations = {
            k: v
            for k, v in (meta.get("annotations") or {}).items()
            if k != "kubectl.kubernetes.io/last-applied-configuration"
        }
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations", None)
        obj["metadata"] = meta
        if obj.get("kind") == "Service":
            spec = dict(obj.get("spec") or {})
            for key in ("clusterIP", "clusterIPs"):
                spec.pop(key, None)
            obj["spec"] = spec
        cleaned.append(obj)
    path = directory / "restore.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump_all(cleaned, out, sort_keys=False)
    return path


def restore_kube(target: KubeTarget, storage: Storage, artifact: BackupArtifact, mode: str) -> dict:
    chosen = select_resources(load_resources(storage, artifact.key), target.resources)
    if not chosen:
        raise RestoreError("no resource of the backup matches the selection")
    apply = ["apply", "--server-side", "--force-conflicts", "--validate=false", "-o", "name"]
    with tempfile.TemporaryDirectory(prefix="kube-restore-") as tmp:
        manifest = write_manifest(chosen, Path(tmp))
        dry = _kubectl(target, *apply, "--dry-run=server", "-f", str(manifest))
        if dry.returncode != 0:
            raise RestoreError(f"server-side dry run refused it: {dry.stderr.strip()[-1500:]}")
        real = _kubectl(target, *apply, "-f", str(manifest))
        if real.returncode != 0:
            raise RestoreError(f"kubectl apply failed: {real.stderr.strip()[-1500:]}")
        check = _kubectl(target, "get", "-f", str(manifest), "-o", "name")
    found = [line for line in check.stdout.splitlines() if line.strip()]
    return {
        "component": artifact.component,
        "target": target.name,
        "ok": check.returncode == 0 and len(found) == len(chosen),
        "applied": [line for line in real.stdout.splitlines() if line.strip()],
        "resources_expected": len(chosen),
        "resources_found": len(found),
    }


def run_restore(target, storage: Storage, artifact: BackupArtifact, mode: str) -> dict:
    if isinstance(target, PgTarget):
        return restore_pg(target, storage, artifact, mode)
    if isinstance(target, RedisTarget):
        return restore_redis(target, storage, artifact, mode)
    return restore_kube(target, storage, artifact, mode)


def parse_target(artifact: BackupArtifact, stored: dict) -> PgTarget | RedisTarget | KubeTarget:
    """Rebuild the typed target of a saved request."""
    return target_for(artifact, stored)
