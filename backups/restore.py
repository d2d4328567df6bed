"""Restore targets: resolve one (for the plan), back it up first, restore into it, validate.

This is the I/O half of a restore; ``backups.actions`` decides whether it may
run and records what happened. A restore goes to the backup's own source or
to a registered ``RestoreTarget``, and nowhere else: what people give (admin
form, CLI) is a ``TargetSpec`` naming one, never a host, DSN or credential,
so no plan, preview or restore ever authenticates to a server an
administrator did not register. Credentials are resolved by
``backups.credentials`` (environment variables, or files under
``BACKUP_SECRETS_DIR``). Targets are reached over the network; restoring
*into* a pod through kubectl exec is not supported (register a target
reachable through ``kubectl port-forward``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import quote, urlsplit

import psycopg
import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backups import credentials
from backups.choices import ArtifactFormat, RestoreMode, SourceKind, Transport
from backups.models import BackupArtifact, BackupSource, RestoreTarget
from backups.sources import kubectl_base, pg_url
from backups.storage import Storage
from backups.verify import load_resources

if TYPE_CHECKING:
    from backups.terraform import TfTarget

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
# Server-managed fields that must not be sent back with an apply.
_META_DROP = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
              "selfLink", "ownerReferences")  # fmt: skip
# What a restore target may *not* be given as: a free-form host, DSN or credential.
FREE_FORM_KEYS = frozenset({"dsn", "url", "host", "port", "user", "username", "password",
                            "password_env", "password_file", "kubeconfig", "context"})  # fmt: skip
KIND_OF_FORMAT: dict[str, SourceKind] = {
    ArtifactFormat.PG_CUSTOM: SourceKind.POSTGRES,
    ArtifactFormat.RDB: SourceKind.REDIS,
    ArtifactFormat.K8S_YAML: SourceKind.KUBERNETES,
    ArtifactFormat.TFSTATE: SourceKind.TERRAFORM,
}
REGISTER_HINT = (
    "restores go only to the backup's own source or to a registered restore target "
    "(an administrator adds them under Backups › Restore targets)"
)


class RestoreError(RuntimeError):
    """A restore refused or failed; the message says why, for people."""


# --- what people ask for --------------------------------------------------------


class TargetSpec(BaseModel):
    """The only input a restore target is made from (admin form, CLI, stored requests)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(default="", max_length=63)
    database: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
    resources: list[str] = Field(default_factory=list, max_length=200)
    # Terraform states (backups.terraform): a restore that changes lineage / goes back.
    force_lineage: bool = False
    allow_older_serial: bool = False

    @field_validator("target")
    @classmethod
    def _a_name(cls, value: str) -> str:
        value = value.strip()
        if value and not all(c.isalnum() or c in "_.-" for c in value):
            raise ValueError(f"a free-form host, DSN or URL is not accepted: {REGISTER_HINT}")
        return value

    @field_validator("resources")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        for item in value:
            parts = item.split("/")
            if not 1 <= len(parts) <= 3 or not all(parts):
                raise ValueError(f"{item!r}: use KIND, KIND/NAMESPACE or KIND/NAMESPACE/NAME")
        return value


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'target'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def parse_spec(given: Any) -> TargetSpec:
    """Validate what a person gave; a host, DSN or credential is refused here, at input."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise RestoreError('bad target: give an object such as {"target": "scratch-pg"}')
    free = sorted(set(given) & FREE_FORM_KEYS)
    if free:
        raise RestoreError(f"bad target: {', '.join(free)} not accepted: {REGISTER_HINT}")
    try:
        return TargetSpec(**given)
    except ValidationError as exc:
        raise RestoreError(f"bad target: {_problems(exc)}") from None
    except TypeError as exc:
        raise RestoreError(f"bad target: {exc}") from None


# --- typed targets (resolved by the portal, never typed by people) ------------------


class Credentials(BaseModel):
    password_env: str = Field(default="", pattern=r"^$|^[A-Z_][A-Z0-9_]{0,127}$")
    password_file: str = ""
    #: the registered target's name and revision; blank / 0: the backup's own source
    registered: str = ""
    revision: int = 0

    def password(self) -> str | None:
        try:
            return credentials.read_password(self.password_env, self.password_file)
        except credentials.CredentialError as exc:
            raise RestoreError(str(exc)) from None

    def check_references(self) -> None:
        try:
            credentials.check_references(password_file=self.password_file)
        except credentials.CredentialError as exc:
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

    def client(self, db: int = 0, *, single: bool = False) -> redis.Redis:
        """A client that never retries by itself: a restore decides what a lost reply means."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parts = urlsplit(self.url)
        return redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=parts.username or None,
            password=self.password(),
            db=db,
            socket_timeout=60,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=single,
        )


class KubeTarget(BaseModel):
    kubeconfig: str = ""
    context: str = ""
    resources: list[str] = Field(min_length=1)
    registered: str = ""
    revision: int = 0

    @property
    def name(self) -> str:
        return self.context

    def check_references(self) -> None:
        try:
            credentials.check_references(kubeconfig=self.kubeconfig)
        except credentials.CredentialError as exc:
            raise RestoreError(str(exc)) from None


Target = Union[PgTarget, RedisTarget, KubeTarget, "TfTarget"]


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


def _registered(spec: TargetSpec, kind: str) -> RestoreTarget | None:
    if not spec.target:
        return None
    found = RestoreTarget.objects.filter(name=spec.target).first()
    if found is None:
        raise RestoreError(
            f"no registered restore target {spec.target!r}: {REGISTER_HINT}. Nothing was contacted."
        )
    if not found.enabled:
        raise RestoreError(f"restore target {found.name} is disabled. Nothing was contacted.")
    if found.kind != kind:
        raise RestoreError(
            f"restore target {found.name} is a {found.get_kind_display()} target; "
            f"this backup needs a {SourceKind(kind).label} one"
        )
    return found


def _pg_dsn(target: RestoreTarget) -> str:
    user = quote(target.username or "postgres", safe="")
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"postgres://{user}@{host}:{target.port or 5432}"


def _redis_url(target: RestoreTarget) -> str:
    user = f"{quote(target.username, safe='')}@" if target.username else ""
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"redis://{user}{host}:{target.port or 6379}"


def target_for(artifact: BackupArtifact, given: Any) -> Target:
    """The restore target a person asked for: the backup's own source, or a registered one.

    Validates everything (spec, registered target, credential references) without
    contacting any server or reading any secret.
    """
    spec = parse_spec(given)
    kind = KIND_OF_FORMAT.get(artifact.format)
    if artifact.format == ArtifactFormat.PG_GLOBALS:
        raise RestoreError(
            "the globals (roles) are restored with each database of the same backup: "
            "restore a database, and the roles it lacks are created first"
        )
    if kind is None:
        raise RestoreError(
            f"{artifact.get_format_display()} artifacts are restored by hand "
            "(psql -f for a pg_dumpall file); the portal restores per-database dumps"
        )
    if (spec.force_lineage or spec.allow_older_serial) and kind != SourceKind.TERRAFORM:
        raise RestoreError("bad target: force_lineage/allow_older_serial: Terraform states only")
    if kind == SourceKind.TERRAFORM:
        from backups import terraform

        if spec.database or spec.resources:
            raise RestoreError("bad target: a Terraform state has no database or resources")
        return terraform.target_for(artifact.run.source, spec)
    registered = _registered(spec, kind)
    source = artifact.run.source
    if registered is None and source.transport == Transport.KUBECTL_EXEC:
        raise RestoreError(
            "this source is read through kubectl exec; restore over the network into a "
            "registered restore target (e.g. one reached through kubectl port-forward)"
        )
    if kind != SourceKind.KUBERNETES and spec.resources:
        raise RestoreError("bad target: resources: only for Kubernetes backups")
    if kind != SourceKind.POSTGRES and spec.database:
        raise RestoreError("bad target: database: only for PostgreSQL backups")
    origin: Any = registered or source
    name = registered.name if registered else ""
    revision = registered.revision if registered else 0
    creds = {"password_env": origin.password_env, "password_file": origin.password_file}
    try:
        if kind == SourceKind.POSTGRES:
            pinned = registered.database if registered else ""
            if pinned and spec.database and spec.database != pinned:
                raise RestoreError(f"restore target {name} accepts only database {pinned}")
            database = pinned or spec.database or artifact.component
            dsn = _pg_dsn(registered) if registered else source.dsn
            typed: Target = PgTarget(
                **creds, registered=name, revision=revision, dsn=dsn, database=database
            )
        elif kind == SourceKind.REDIS:
            url = _redis_url(registered) if registered else source.dsn
            typed = RedisTarget(**creds, registered=name, revision=revision, url=url)
        else:
            kubeconfig = registered.kubeconfig if registered else source.kubeconfig
            context = registered.kube_context if registered else source.kube_context
            typed = KubeTarget(
                registered=name,
                revision=revision,
                kubeconfig=kubeconfig,
                context=context,
                resources=spec.resources,
            )
    except ValidationError as exc:
        raise RestoreError(f"bad target: {_problems(exc)}") from None
    typed.check_references()
    if isinstance(typed, KubeTarget) and not typed.context:
        # Name the cluster explicitly: people confirm it, and it is what was approved.
        typed.context = current_context(typed.kubeconfig)
    return typed


def stored_target(spec: TargetSpec | dict, typed: Target) -> dict:
    """What a restore request keeps: what was asked and what it resolved to (no secrets)."""
    asked = spec.model_dump() if isinstance(spec, TargetSpec) else parse_spec(spec).model_dump()
    return {"spec": asked, "resolved": typed.model_dump()}


def parse_target(artifact: BackupArtifact, stored: dict) -> Target:
    """Resolve a saved request's target again; refuse it if it changed since the plan.

    Approvals bind to what was shown: a registered target edited since (another
    host, other credentials) or disabled, or a source whose DSN changed, is
    refused before anything is contacted.
    """
    if not isinstance(stored, dict) or "spec" not in stored or "resolved" not in stored:
        raise RestoreError(
            "this restore names its target free-form (planned before restore targets were "
            "registered); it is refused and nothing was contacted: plan it again"
        )
    typed = target_for(artifact, stored["spec"])
    if typed.model_dump() != stored["resolved"]:
        which = f"restore target {typed.registered}" if typed.registered else "the source"
        raise RestoreError(
            f"{which} changed since this restore was planned and approved; "
            "nothing was contacted: plan it again"
        )
    return typed


def safety_source(artifact: BackupArtifact, target) -> tuple[BackupSource, list[str] | None]:
    """An unsaved source describing the *target*, to back it up before overwriting it.

    Credential files are passed on as their checked real path.
    """
    source = artifact.run.source
    if getattr(target, "force_lineage", None) is not None:  # a terraform.TfTarget
        from backups import terraform

        return terraform.safety_source(source, target), None
    if isinstance(target, PgTarget | RedisTarget):
        password_file = ""
        if target.password_file:
            try:
                password_file = str(credentials.check_file_reference(target.password_file))
            except credentials.CredentialError as exc:
                raise RestoreError(str(exc)) from None
        if isinstance(target, PgTarget):
            return BackupSource(
                name=source.name, kind=SourceKind.POSTGRES, dsn=target.dsn,
                password_env=target.password_env, password_file=password_file,
            ), [target.database]  # fmt: skip
        return BackupSource(
            name=source.name, kind=SourceKind.REDIS, dsn=target.url,
            password_env=target.password_env, password_file=password_file,
        ), None  # fmt: skip
    kubeconfig = ""
    if target.kubeconfig:
        try:
            kubeconfig = str(credentials.check_file_reference(target.kubeconfig, what="kubeconfig"))
        except credentials.CredentialError as exc:
            raise RestoreError(str(exc)) from None
    return BackupSource(
        name=source.name, kind=SourceKind.KUBERNETES, kubeconfig=kubeconfig,
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
    # passfile: credentials come from the target's reference only, never ~/.pgpass.
    return psycopg.connect(
        pg_url(target.dsn, database), password=target.password(), connect_timeout=10,
        autocommit=True, passfile=os.devnull,
    )  # fmt: skip


def _roles_to_create(conn, storage: Storage | None, artifact: BackupArtifact | None) -> list[str]:
    """The roles of the backup's globals the target lacks, as people read them."""
    from backups import pg_globals

    stored = pg_globals.globals_of(artifact) if artifact is not None else None
    if stored is None or storage is None:
        return []
    try:
        found = pg_globals.load(storage, stored)
    except pg_globals.GlobalsError as exc:
        raise RestoreError(str(exc)) from None
    return pg_globals.describe(found, pg_globals.missing(found, pg_globals.existing_roles(conn)))


def inspect_pg(
    target: PgTarget, storage: Storage | None = None, artifact: BackupArtifact | None = None
) -> TargetState:
    try:
        with _pg_connect(target, "postgres") as conn:
            row = conn.execute(
                "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s",
                [target.database],
            ).fetchone()
            try:
                shown = conn.execute("SHOW data_directory").fetchone()
                directory = shown[0] if shown is not None else None
            except psycopg.Error:
                directory = None
            roles = _roles_to_create(conn, storage, artifact)
    except psycopg.Error as exc:
        raise RestoreError(f"cannot reach PostgreSQL at {target.where}: {exc}") from None
    free, note = _free_at(urlsplit(target.dsn).hostname or "", directory)
    creates = f"; creates the roles it lacks: {', '.join(roles)}" if roles else ""
    if row is None:
        return TargetState(
            False,
            f"new database {target.database} on {target.where}{creates}",
            free,
            note,
            {"roles_to_create": roles},
        )
    with _pg_connect(target, target.database) as conn:
        counted = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    assert counted is not None  # count(*) always returns one row
    tables = counted[0]
    return TargetState(
        True,
        f"database {target.database} on {target.where}: {tables} tables, "
        f"{row[0] / 1e6:.1f} MB — replaced as a whole (restored into a new database, then "
        f"swapped in: room for a second copy is needed){creates}",
        free,
        note,
        {"tables": tables, "bytes": row[0], "roles_to_create": roles},
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
        f"Redis at {target.name}: {total} keys in {len(keys)} database(s) — replaced as a "
        "whole (staged in spare database indexes, then switched at once)",
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
    chosen = select_resources(load_resources(storage, artifact), target.resources)
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


def check_artifact(storage: Storage, artifact: BackupArtifact) -> None:
    """Refuse, before anything is contacted or changed, an artifact this portal cannot read
    (its encryption key is not configured, the key is wrong, the file is damaged)."""
    from backups import pg_globals
    from backups.storage import StorageError
    from backups.streaming import UNREADABLE, check_readable

    related = [artifact]
    if artifact.format == ArtifactFormat.PG_CUSTOM and (found := pg_globals.globals_of(artifact)):
        related.append(found)
    for item in related:
        try:
            check_readable(storage, item)
        except UNREADABLE + (StorageError,) as exc:
            raise RestoreError(
                f"cannot read backup artifact #{item.pk} ({item.component}): {exc}; "
                "nothing was changed"
            ) from None


def inspect(target, storage: Storage, artifact: BackupArtifact) -> TargetState:
    check_artifact(storage, artifact)
    if isinstance(target, PgTarget):
        return inspect_pg(target, storage, artifact)
    if isinstance(target, RedisTarget):
        return inspect_redis(target)
    if artifact.format == ArtifactFormat.TFSTATE:
        from backups import terraform

        return terraform.inspect(target, storage, artifact)
    return inspect_kube(target, storage, artifact)


def mode_for(state: TargetState) -> str:
    return RestoreMode.OVERWRITE if state.exists else RestoreMode.SCRATCH


# --- restore + validation ------------------------------------------------------------


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
    chosen = select_resources(load_resources(storage, artifact), target.resources)
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
        from backups.postgres_restore import restore_pg

        return restore_pg(target, storage, artifact, mode)
    if isinstance(target, RedisTarget):
        from backups.redis_restore import restore_redis

        return restore_redis(target, storage, artifact, mode)
    if artifact.format == ArtifactFormat.TFSTATE:
        from backups.terraform import restore_state

        return restore_state(target, storage, artifact, mode)
    return restore_kube(target, storage, artifact, mode)
